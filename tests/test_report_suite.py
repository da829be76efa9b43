"""`opdf report` over a suite: dev-only choice of the tuned axis, the paired test against a hand
computation, export of tables, plots and the cells' small files."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest
import yaml

from opdf.bench.suite import load_suite
from opdf.cli import main
from opdf.report.suite import build_report, choose_on_dev, paired_stats

# (variant, lr) -> per seed (dev, test). Dev prefers lr 1e-4 for both variants; test prefers
# 2e-4: a choice that peeked at test would pick 2e-4.
SCORES = {
    ("base", "1e-4"): [(0.80, 0.70), (0.82, 0.71), (0.81, 0.69)],
    ("base", "2e-4"): [(0.70, 0.90), (0.71, 0.91), (0.72, 0.92)],
    ("mpo", "1e-4"): [(0.85, 0.74), (0.86, 0.72), (0.84, 0.75)],
    ("mpo", "2e-4"): [(0.60, 0.95), (0.61, 0.96), (0.62, 0.97)],
    ("svd", "1e-4"): [(0.83, 0.73), (0.84, 0.70), (0.83, 0.74)],
    ("svd", "2e-4"): [(0.65, 0.93), (0.66, 0.94), (0.64, 0.95)],
}
SCALE = {"base": ("none", 0, None), "svd": ("svd", 0, None), "mpo": ("mpo", 3, None)}


def make_suite(folder: Path, scores=SCORES) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "suite.yaml").write_text(yaml.safe_dump({
        "name": "fixture", "config": "unused.yaml",
        "variants": {"base": {"overparam": "none"}, "svd": {"overparam": "svd"},
                     "mpo": {"overparam": "mpo"}},
        "grid": {"lr": ["1e-4", "2e-4"], "seed": [1, 2, 3]},
    }))  # fmt: skip
    for (variant, lr), per_seed in scores.items():
        scheme, modes, align = SCALE[variant]
        for seed, (dev, test) in enumerate(per_seed, 1):
            cell = folder / f"{variant}__lr={lr}__seed={seed}"
            cell.mkdir(exist_ok=True)
            (cell / "summary.json").write_text(json.dumps({
                "method": "kd", "overparam": scheme, "unit_modes": modes, "align": align,
                "seed": seed, "main_metric": "accuracy", "dev": {"accuracy": dev},
                "test": {"accuracy": test},
                "train_params": 17_390_000 + 1_000_000 * (modes + (scheme != "none")),
                "inference_params": 17_390_000, "seconds_per_step": 1.3 if modes else 1.0,
                "peak_rss_mb": 2100.0 if modes else 1500.0, "steps": 126,
            }))  # fmt: skip
            (cell / "config.yaml").write_text(f"lr: {lr}\nseed: {seed}\n")
            (cell / "metrics.jsonl").write_text('{"step": 1}\n')
            (cell / "checkpoints").mkdir(exist_ok=True)
            (cell / "checkpoints" / "last.pt").write_bytes(b"weights")
            (folder / f"{cell.name}.log").write_text("log\n")
    return folder


def test_choose_on_dev_sees_only_dev():
    assert choose_on_dev([("a", 0.5), ("b", 0.7), ("c", 0.7), ("d", None)]) == "b"
    assert choose_on_dev([("a", None)]) is None


def test_the_learning_rate_is_chosen_on_dev_never_on_test(tmp_path):
    folder = make_suite(tmp_path / "s")
    report = build_report(load_suite(folder / "suite.yaml"), folder)
    chosen = {g.label: dict(g.axes)["lr"] for g in report.chosen}
    assert chosen == {"base": "1e-4", "svd": "1e-4", "mpo": "1e-4"}  # test would have said 2e-4
    # making test even more in favour of 2e-4 changes nothing
    flipped = {k: [(d, 1.0 if k[1] == "2e-4" else 0.0) for d, _ in v] for k, v in SCORES.items()}
    again = build_report(load_suite(folder / "suite.yaml"), make_suite(tmp_path / "f", flipped))
    assert {g.label: dict(g.axes)["lr"] for g in again.chosen} == chosen


def _hand_paired(a, b):
    d = [x - y for x, y in zip(a, b, strict=True)]
    n = len(d)
    mean = sum(d) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    t = mean / (sd / math.sqrt(n))
    return mean, sd, t


def test_paired_test_matches_a_hand_computation():
    a, b = [0.74, 0.72, 0.75, 0.70, 0.78], [0.70, 0.71, 0.69, 0.71, 0.72]
    s = paired_stats(a, b)
    mean, sd, t = _hand_paired(a, b)
    assert s["n"] == 5
    assert s["mean_diff"] == pytest.approx(mean) and s["std_diff"] == pytest.approx(sd)
    assert s["t"] == pytest.approx(t)
    # two-sided p of Student's t with n-1 = 4 degrees of freedom, by numerical integration
    # of its density (no scipy): p = 2 * P(T > |t|)
    dof = 4
    c = math.gamma((dof + 1) / 2) / (math.sqrt(dof * math.pi) * math.gamma(dof / 2))
    steps, hi = 200_000, 200.0
    h = (hi - abs(t)) / steps
    xs = [abs(t) + (i + 0.5) * h for i in range(steps)]
    tail = sum(c * (1 + x * x / dof) ** (-(dof + 1) / 2) for x in xs) * h
    assert s["p"] == pytest.approx(2 * tail, rel=1e-4)
    assert s["ci_low"] < mean < s["ci_high"]
    assert min(x - y for x, y in zip(a, b, strict=True)) <= s["ci_low"]
    assert paired_stats([0.5, 0.6], [0.4, 0.5])["p"] is None  # constant difference: no t


def test_report_pairs_each_variant_with_the_baseline_on_the_same_seeds(tmp_path, capsys):
    folder = make_suite(tmp_path / "s")
    report = build_report(load_suite(folder / "suite.yaml"), folder)
    by_setting = {c.setting: c for c in report.comparisons if c.label == "mpo"}
    assert set(by_setting) == {"chosen on dev", "lr=1e-4", "lr=2e-4"}
    assert len(report.comparisons) == 6  # svd and mpo, each at 3 settings
    chosen = by_setting["chosen on dev"]
    a = [t for _, t in SCORES[("mpo", "1e-4")]]
    b = [t for _, t in SCORES[("base", "1e-4")]]
    mean, sd, t = _hand_paired(a, b)
    assert chosen.seeds == [1, 2, 3] and chosen.baseline == "base" and chosen.label == "mpo"
    assert chosen.stats["mean_diff"] == pytest.approx(mean)
    assert chosen.stats["t"] == pytest.approx(t)
    assert main(["report", str(folder)]) == 0
    text = capsys.readouterr().out
    assert "| mpo     | -       | lr=1e-4 (best of 2)" in text  # chosen table
    assert f"{100 * mean:+.2f} ± {100 * sd:.2f}" in text
    assert "21.39M" in text and "2100" in text  # train params, peak memory
    assert main(["report", str(folder), "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 6 and {r["chosen_on_dev"] for r in rows} == {"True", "False"}


def test_export_copies_small_files_tables_and_plots(tmp_path, capsys):
    folder = make_suite(tmp_path / "runs" / "fixture")
    results = tmp_path / "results"
    assert main(["report", str(folder), "--export", str(results)]) == 0
    dest = results / "fixture"
    assert "exported 18 cells" in capsys.readouterr().out
    cell = dest / "mpo__lr=1e-4__seed=2"
    assert sorted(p.name for p in cell.iterdir()) == ["config.yaml", "metrics.jsonl",
                                                      "summary.json"]  # fmt: skip
    assert (dest / "mpo__lr=1e-4__seed=2.log").is_file()
    assert not list(dest.rglob("*.pt"))
    for name in ("report.md", "cells.csv", "groups.csv", "chosen.csv", "paired.csv",
                 "suite.yaml"):  # fmt: skip
        assert (dest / name).is_file(), name
    for png in ("accuracy-vs-lr.png", "accuracy-vs-scale.png", "variants.png"):
        assert (dest / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    # the exported folder is itself a suite folder
    assert main(["report", str(dest)]) == 0
    assert "## Chosen on dev" in capsys.readouterr().out
    # exporting onto itself is harmless
    assert main(["report", str(dest), "--export", str(dest)]) == 0


def test_report_of_an_empty_suite_and_of_plain_runs(tmp_path, capsys):
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / "suite.yaml").write_text("name: s\nconfig: c.yaml\ngrid: {seed: [1]}\n")
    assert main(["report", str(folder)]) == 2
    assert "no finished cell" in capsys.readouterr().err
    assert main(["report", str(tmp_path), "--export", str(tmp_path / "x")]) == 2
