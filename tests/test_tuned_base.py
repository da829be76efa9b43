"""benchmarks/tuned_base.py and replicate_chosen.py: the README's headline table is chosen and
paired by these rules, so they are pinned here on small written exports: a full grid, and a
suite that tunes on seed 1 and replicates only the chosen settings at seeds 2-3."""

from __future__ import annotations

import csv
import fnmatch
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def scripts(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # they import init_effect as a sibling
    for name in ("init_effect", "tuned_base", "replicate_chosen"):
        sys.modules.pop(name, None)
    import replicate_chosen
    import tuned_base

    return tuned_base, replicate_chosen


# (variant, init, lr) -> dev per seed 1, 2; test = dev - 0.02 except where noted
DEV = {
    ("base", "bottom", "1e-4"): (0.78, 0.79),
    ("base", "bottom", "2e-4"): (0.80, 0.78),
    ("base", "alternate", "1e-4"): (0.81, 0.80),
    ("base", "alternate", "2e-4"): (0.83, 0.77),  # best on seed 1 alone, not over 1-2
    ("opdf", "alternate", "5e-5"): (0.82, 0.82),
    ("opdf", "alternate", "1e-4"): (0.80, 0.80),
}


def write_cells(folder: Path, keep_at_2: set | None = None) -> Path:
    """An export's cells.csv; ``keep_at_2``: the settings seed 2 ran (None: all)."""
    folder.mkdir()
    with open(folder / "cells.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["variant", "student.init", "lr", "seed", "dev", "test"])
        w.writeheader()
        for (variant, init, lr), devs in DEV.items():
            for seed, dev in zip((1, 2), devs, strict=True):
                if seed == 2 and keep_at_2 is not None and (variant, init, lr) not in keep_at_2:
                    continue
                w.writerow({"variant": variant, "student.init": init, "lr": lr, "seed": seed,
                            "dev": dev, "test": round(dev - 0.02, 4)})  # fmt: skip
    return folder


def test_a_full_grid_is_chosen_on_the_mean_dev_of_every_seed(scripts, tmp_path):
    tuned_base, _ = scripts
    left: list[str] = []
    start, opdf = tuned_base.rows_of("S", write_cells(tmp_path / "full"), None, "base", left)
    assert not left
    assert start.start and start.key == ("alternate", "1e-4")
    assert start.base_key == ("bottom", "2e-4")
    assert opdf.key == ("alternate", "5e-5") and opdf.base_key == ("alternate", "1e-4")
    assert opdf.seeds == [1, 2] and opdf.test == [0.80, 0.80] and opdf.base_test == [0.79, 0.78]


def test_tune_on_seed_1_then_replicate_the_choice(scripts, tmp_path):
    """Seed 1 chooses alone (base: alternate 2e-4), replicate_chosen's patterns leave seed 2 only
    the chosen settings and the best bottom start, and the rows pair them over both seeds."""
    tuned_base, replicate = scripts
    seed1 = tmp_path / "seed1"
    seed1.mkdir()
    full = write_cells(tmp_path / "full")
    with open(full / "cells.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    with open(seed1 / "cells.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(r for r in rows if r["seed"] == "1")
    from init_effect import load

    cells = load(seed1)
    kept = replicate.kept_settings(cells, "base")
    assert kept == {"base": {("alternate", "2e-4"), ("bottom", "2e-4")},
                    "opdf": {("alternate", "5e-5")}}  # fmt: skip
    patterns = replicate.patterns(cells, kept, [2, 3])
    ids = [f"{v}__student.init={i}__lr={lr}__seed={s}" for v, i, lr in DEV for s in (2, 3)]
    left_in = {i for i in ids if not any(fnmatch.fnmatchcase(i, p) for p in patterns)}
    assert left_in == {f"{v}__student.init={i}__lr={lr}__seed={s}"
                       for v, keep in kept.items() for i, lr in keep for s in (2, 3)}  # fmt: skip

    left: list[str] = []
    staged = write_cells(tmp_path / "staged", {(v, i, lr) for v, k in kept.items() for i, lr in k})
    start, opdf = tuned_base.rows_of("S", staged, None, "base", left)
    assert not left
    assert start.key == ("alternate", "2e-4") and start.seeds == [1, 2]
    assert opdf.key == ("alternate", "5e-5") and opdf.base_key == ("alternate", "2e-4")
    assert opdf.seeds == [1, 2] and opdf.base_test == [0.81, 0.75]


def test_a_variant_with_one_shared_seed_is_named_not_tested(scripts, tmp_path):
    tuned_base, _ = scripts
    left: list[str] = []
    only_base = write_cells(tmp_path / "x", {k for k in DEV if k[0] == "base"})
    rows = tuned_base.rows_of("S", only_base, None, "base", left)
    assert [r.variant for r in rows] == ["base"]  # the start's row only
    assert left == ["S opdf (1 seed(s) shared with the plain student)"]
