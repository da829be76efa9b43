"""`opdf report` over a suite: dev-only choice of the tuned axis, the paired test against a hand
computation, export of tables, plots and the cells' small files."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from opdf.bench.suite import Cell, load_suite
from opdf.cli import main
from opdf.report.results import CellResult, Group
from opdf.report.stats import grid_ends
from opdf.report.suite import build_report, choose_on_dev, export, holm, paired_stats

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


def test_a_partly_run_setting_is_compared_on_the_seeds_every_candidate_has(tmp_path):
    # base 2e-4 has seed 1 only. Its dev 0.82 beats 1e-4's three-seed mean (0.80) but not 1e-4's
    # seed 1 (0.84): compared on the shared seed, 1e-4 is chosen
    scores = {k: v for k, v in SCORES.items() if k[0] != "base"}
    scores[("base", "1e-4")] = [(0.84, 0.70), (0.78, 0.71), (0.78, 0.69)]
    scores[("base", "2e-4")] = [(0.82, 0.90)]
    folder = make_suite(tmp_path / "s", scores)
    report = build_report(load_suite(folder / "suite.yaml"), folder)
    assert {g.label: dict(g.axes)["lr"] for g in report.chosen}["base"] == "1e-4"
    base = next(g for g in report.chosen if g.label == "base")
    assert base.compared_seeds == (1,)  # said in the table and the CSV, with 3 seeds shown
    assert "lr=1e-4 (best of 2) on seeds 1" in report.markdown()
    assert "compared_seeds" in report.csv_files()["chosen.csv"].splitlines()[0]
    # and the other way round: 0.83 on the shared seed vs 0.82 loses to the mean 0.84, wins on it
    scores[("base", "1e-4")] = [(0.82, 0.70), (0.85, 0.71), (0.85, 0.69)]
    scores[("base", "2e-4")] = [(0.83, 0.90)]
    folder = make_suite(tmp_path / "t", scores)
    report = build_report(load_suite(folder / "suite.yaml"), folder)
    assert {g.label: dict(g.axes)["lr"] for g in report.chosen}["base"] == "2e-4"


def test_a_choice_at_the_grid_end_is_flagged(tmp_path):
    # the fixture's dev picks 1e-4, the lower of two rates: flagged in the table, the note and
    # the CSV; with 5e-5 added (worse on dev) the same choice is interior and nothing is said
    folder = make_suite(tmp_path / "s")
    report = build_report(load_suite(folder / "suite.yaml"), folder)
    base = next(g for g in report.chosen if g.label == "base")
    flag = (
        "lr=1e-4 is the lowest of the 2 run (next: add lr=5e-5 to the grid, one step of x2 further)"
    )
    assert base.grid_end == (flag,)
    md = report.markdown()
    assert "(at an end of the grid run)" in md and f"base: {flag}" in md
    rows = list(csv.DictReader(io.StringIO(report.csv_files()["chosen.csv"])))
    assert rows[0]["grid_end"] == flag
    scores = dict(SCORES)
    for variant in ("base", "svd", "mpo"):
        scores[(variant, "5e-5")] = [(0.5, 0.99)] * 3  # test is never looked at
    folder = make_suite(tmp_path / "t", scores)
    spec = yaml.safe_load((folder / "suite.yaml").read_text())
    spec["grid"]["lr"] = ["5e-5", "1e-4", "2e-4"]
    (folder / "suite.yaml").write_text(yaml.safe_dump(spec))
    report = build_report(load_suite(folder / "suite.yaml"), folder)
    assert [g.grid_end for g in report.chosen] == [(), (), ()]
    assert "end of the grid run" not in report.markdown()
    rows = list(csv.DictReader(io.StringIO(report.csv_files()["chosen.csv"])))
    assert [r["grid_end"] for r in rows] == ["", "", ""]


def test_the_grid_end_is_judged_within_the_chosen_values_of_the_other_tuned_axes():
    # tune [student.init, lr]: 2.4e-2 is interior among alternate's rates (1e-4 .. 4.8e-2) but
    # would be the top of bottom's; rates written as strings and floats alike; a rate with no
    # dev score yet (9.6e-2) does not count; a categorical axis has no ends
    suite = SimpleNamespace(tune=["student.init", "lr"], grid={})  # no rate beyond

    def group(init, lr, dev):
        g = Group("base", None, "base", (("student.init", init), ("lr", lr)))
        if dev is not None:
            cell = Cell("x", "base", "c.yaml", None, "base", (("seed", 1),), (), 0)
            g.results.append(CellResult(cell, {"dev": {"accuracy": dev}}))
        return g

    members = [group("bottom", "1e-4", 0.7), group("bottom", 2.4e-2, 0.8),
               group("alternate", "1e-4", 0.7), group("alternate", 2.4e-2, 0.9),
               group("alternate", "4.8e-2", 0.85), group("alternate", "9.6e-2", None)]  # fmt: skip
    assert grid_ends(suite, members[3], members) == ()
    assert grid_ends(suite, members[1], members) == (  # 240x apart: no step to repeat
        "lr=0.024 is the highest of the 2 run (next: extend the grid above lr=0.024)",)  # fmt: skip
    assert grid_ends(suite, members[4], members) == (
        "lr=4.8e-2 is the highest of the 3 run (next: add lr=9.6e-2 to the grid, one step of x2 "
        "further)",)  # fmt: skip
    assert grid_ends(suite, members[2], members) == ("lr=1e-4 is the lowest of the 3 run (next: "
                                                     "extend the grid below lr=1e-4)",)  # fmt: skip


def test_the_next_step_of_a_grid_with_zero_or_negative_values_is_no_ratio():
    # tune [align.weight] over 0 .. 1e4: no division by zero, no negative "ratio" step
    suite = SimpleNamespace(tune=["align.weight"], grid={})

    def group(w, dev):
        g = Group("opdf", None, "opdf", (("align.weight", w),))
        cell = Cell("x", "opdf", "c.yaml", None, "opdf", (("seed", 1),), (), 0)
        g.results.append(CellResult(cell, {"dev": {"accuracy": dev}}))
        return g

    members = [group(0, 0.8), group(100, 0.7), group(1e4, 0.75)]
    assert grid_ends(suite, members[0], members) == (
        "align.weight=0 is the lowest of the 3 run (next: extend the grid below align.weight=0)",
    )
    members = [group(-1, 0.7), group(1, 0.8)]
    assert grid_ends(suite, members[1], members) == (
        "align.weight=1 is the highest of the 2 run (next: extend the grid above align.weight=1)",
    )


def test_the_grid_end_names_the_next_rate_the_suite_holds_or_excludes(tmp_path):
    # dev chooses 1e-4, the lowest finished rate. With 5e-5 in the grid but excluded for base,
    # the note names the pattern to narrow; with it included but unrun, says it is still to run
    folder = make_suite(tmp_path / "s")
    spec = yaml.safe_load((folder / "suite.yaml").read_text())
    spec["grid"]["lr"] = ["2.5e-5", "5e-5", "1e-4", "2e-4"]
    spec["exclude"] = ["base__lr=5e-5__*", "*__lr=2.5e-5__*"]
    (folder / "suite.yaml").write_text(yaml.safe_dump(spec))
    report = build_report(load_suite(folder / "suite.yaml"), folder)
    ends = {g.label: g.grid_end for g in report.chosen}
    assert ends["base"] == ("lr=1e-4 is the lowest of the 2 run (next: lr=5e-5, excluded by "
                            "'base__lr=5e-5__*')",)  # fmt: skip
    assert ends["mpo"] == ("lr=1e-4 is the lowest of the 2 run (next: lr=5e-5, in the grid, no "
                           "result yet (not run, running or failed))",)  # fmt: skip
    assert "excluded by 'base__lr=5e-5__*'" in report.markdown()


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


def test_holm_adjustment_matches_a_hand_computation():
    # sorted 0.005, 0.01, 0.03, 0.04 (m = 4): x4 = 0.02, x3 = 0.03, x2 = 0.06, x1 = 0.04 -> 0.06
    assert holm([0.01, 0.04, None, 0.03, 0.005]) == pytest.approx([0.03, 0.06, None, 0.06, 0.02])
    assert holm([0.6, 0.5]) == [1.0, 1.0] and holm([]) == [] and holm([None]) == [None]


def test_headline_comparisons_get_holm_p_the_per_lr_ones_do_not(tmp_path, capsys):
    folder = make_suite(tmp_path / "s")
    report = build_report(load_suite(folder / "suite.yaml"), folder)
    head = [c for c in report.comparisons if c.setting == "chosen on dev"]
    assert len(head) == 2  # svd and mpo
    raw = sorted(c.stats["p"] for c in head)
    want = {raw[0]: 2 * raw[0], raw[1]: max(2 * raw[0], raw[1])}
    for c in head:
        assert c.stats["p_holm"] == pytest.approx(min(1.0, want[c.stats["p"]]))
        assert c.stats["family"] == 2
    assert all(c.stats["p_holm"] is None for c in report.comparisons if c not in head)
    assert main(["report", str(folder)]) == 0
    text = capsys.readouterr().out
    assert "| p (Holm) |" in text and "adjusted over the 2 dev-chosen comparisons" in text


def test_excluded_cells_are_neither_counted_nor_candidates(tmp_path, capsys):
    """A suite's ``exclude`` takes cells out of its report even where they exist on disk: the
    header counts the cells the suite has, and the dev choice sees only those."""
    folder = make_suite(tmp_path / "s")
    data = yaml.safe_load((folder / "suite.yaml").read_text())
    data["exclude"] = ["mpo__lr=1e-4__*"]
    (folder / "suite.yaml").write_text(yaml.safe_dump(data))
    report = build_report(load_suite(folder / "suite.yaml"), folder)
    chosen = {g.label: (dict(g.axes)["lr"], g.candidates) for g in report.chosen}
    assert chosen["mpo"] == ("2e-4", 1) and chosen["svd"] == ("1e-4", 2)
    # rows in the suite's variant order (the fixture's YAML sorts them), though mpo's first
    # finished cell now comes after svd's
    assert list(load_suite(folder / "suite.yaml").variants) == ["base", "mpo", "svd"]
    assert [g.label for g in report.chosen] == ["base", "mpo", "svd"]
    from opdf.report.plots import _lr_lines

    assert list(_lr_lines(report, "lr", report.groups)) == ["base", "mpo", "svd"]  # the legend
    assert main(["report", str(folder)]) == 0
    assert "15 of 15 cells finished" in capsys.readouterr().out


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


def test_baseline_option_compares_with_another_variant(tmp_path, capsys):
    """--baseline svd: every other variant is paired with svd (hand computation); the suite's
    own baseline is unchanged for an export, and a wrong name says which variants exist."""
    folder = make_suite(tmp_path / "s")
    assert main(["report", str(folder), "--baseline", "svd"]) == 0
    text = capsys.readouterr().out
    assert "## Paired differences vs svd" in text
    a = [t for _, t in SCORES[("mpo", "1e-4")]]
    b = [t for _, t in SCORES[("svd", "1e-4")]]
    mean, sd, _ = _hand_paired(a, b)
    assert f"{100 * mean:+.2f} ± {100 * sd:.2f}" in text
    assert main(["report", str(folder), "--baseline", "nope"]) == 2
    err = capsys.readouterr().err
    assert "'nope' is not a variant" in err and "its variants: base, mpo, svd" in err
    assert main(["report", str(folder), "--baseline", "svd", "--export", str(tmp_path / "x")]) == 2
    assert "drop one of --baseline and --export" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert main(["report", str(tmp_path / "s" / "base__lr=1e-4__seed=1"), "--baseline", "svd"]) == 2


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
    for png in (
        "accuracy-vs-lr.png",
        "accuracy-vs-scale.png",
        "variants.png",
        "best-lr-vs-scale.png",
    ):
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


# ------------------------------------------------------------- learning-rate transfer (issue 12)

# (variant, lr) -> per seed (dev, test). The baseline's dev choice is 2e-4 (test would say 4e-4).
TRANSFER = {
    ("base", "1e-4"): [(0.80, 0.70), (0.80, 0.70)],
    ("base", "2e-4"): [(0.84, 0.75), (0.84, 0.75)],
    ("base", "4e-4"): [(0.82, 0.78), (0.82, 0.78)],
    # dev: 1e-4; 4e-4 has the best test but the worst dev and must not be chosen
    ("svd", "1e-4"): [(0.85, 0.760), (0.85, 0.770)],
    ("svd", "2e-4"): [(0.83, 0.740), (0.83, 0.750)],
    ("svd", "4e-4"): [(0.70, 0.800), (0.70, 0.800)],
    # partly done: 2e-4 has seed 1 only, 4e-4 nothing
    ("mpo", "1e-4"): [(0.83, 0.76), (0.83, 0.78)],
    ("mpo", "2e-4"): [(0.80, 0.75)],
    # auto, lr_scaling only in config.yaml: dev says 4e-4, 0.2 points above base's 2e-4
    ("svd-auto", "1e-4"): [(0.80, 0.700), (0.80, 0.700)],
    ("svd-auto", "2e-4"): [(0.84, 0.760), (0.84, 0.764)],
    ("svd-auto", "4e-4"): [(0.85, 0.763), (0.85, 0.765)],
    # auto, lr_scaling in summary.json: dev says 2e-4, the baseline's choice
    ("mpo-auto", "1e-4"): [(0.80, 0.74), (0.80, 0.74)],
    ("mpo-auto", "2e-4"): [(0.86, 0.77), (0.86, 0.79)],
    ("mpo-auto", "4e-4"): [(0.81, 0.90), (0.81, 0.90)],
}
TRANSFER_VARIANTS = {
    "base": {"overparam": "none"},
    "svd": {"overparam": "svd"},
    "mpo": {"overparam": "mpo", "unit_modes": 3},
    "svd-auto": {"overparam": "svd", "lr_scaling": "auto"},
    "mpo-auto": {"overparam": "mpo", "unit_modes": 3, "lr_scaling": "auto"},
}


def make_transfer_suite(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "suite.yaml").write_text(yaml.safe_dump({
        "name": "transfer", "config": "unused.yaml", "variants": TRANSFER_VARIANTS,
        "grid": {"lr": ["1e-4", "2e-4", "4e-4"], "seed": [1, 2]}, "tune": ["lr"],
        "baseline": "base",
    }, sort_keys=False))  # fmt: skip
    for (variant, lr), per_seed in TRANSFER.items():
        v = TRANSFER_VARIANTS[variant]
        for seed, (dev, test) in enumerate(per_seed, 1):
            cell = folder / f"{variant}__lr={lr}__seed={seed}"
            cell.mkdir()
            summary = {"method": "kd", "overparam": v["overparam"],
                       "unit_modes": v.get("unit_modes", 0), "align": None, "seed": seed,
                       "main_metric": "accuracy", "dev": {"accuracy": dev},
                       "test": {"accuracy": test}}  # fmt: skip
            if variant == "mpo-auto":
                summary["lr_scaling"] = "auto"
            (cell / "summary.json").write_text(json.dumps(summary))
            scaling = "auto" if variant.endswith("-auto") else "none"
            (cell / "config.yaml").write_text(f"lr: {lr}\nseed: {seed}\nlr_scaling: {scaling}\n")
    return folder


def _rows(report):
    return {r.group.label: r for r in report.transfer}


def test_transfer_table_against_a_hand_computation(tmp_path):
    folder = make_transfer_suite(tmp_path / "transfer")
    report = build_report(load_suite(folder / "suite.yaml"), folder)
    rows = _rows(report)
    assert list(rows) == ["base", "svd", "mpo", "svd-auto", "mpo-auto"]
    lr = {k: dict(r.group.axes)["lr"] for k, r in rows.items()}
    assert lr == {"base": "2e-4", "svd": "1e-4", "mpo": "1e-4", "svd-auto": "4e-4",
                  "mpo-auto": "2e-4"}  # fmt: skip
    assert {k: r.group.lr_scaling() for k, r in rows.items()} == {
        "base": "none",
        "svd": "none",
        "mpo": "none",
        "svd-auto": "auto",
        "mpo-auto": "auto",
    }
    for r in rows.values():
        assert dict(r.base.axes)["lr"] == "2e-4" and r.base.label == "base"
        assert dict(r.at_base.axes)["lr"] == "2e-4" and r.at_base.label == r.group.label
    # gap = own dev-chosen lr minus base's lr, paired over the seeds both have
    assert rows["svd"].gap == pytest.approx(((0.760 - 0.740) + (0.770 - 0.750)) / 2)
    assert (rows["svd"].gap_n, rows["svd"].verdict) == (2, "no")
    assert rows["mpo"].gap == pytest.approx(0.76 - 0.75) and rows["mpo"].gap_n == 1  # seed 1 only
    assert rows["svd-auto"].gap == pytest.approx(((0.763 - 0.760) + (0.765 - 0.764)) / 2)
    assert rows["svd-auto"].verdict == "yes"  # 0.20 points
    assert rows["mpo-auto"].gap == 0 and rows["mpo-auto"].verdict == "yes (same lr)"
    assert rows["base"].verdict == "yes (same lr)"
    # vs the tuned baseline (base at 2e-4: 0.75 on both seeds)
    assert rows["svd"].vs_base == pytest.approx(((0.760 - 0.75) + (0.770 - 0.75)) / 2)
    assert rows["mpo-auto"].vs_base == pytest.approx(((0.77 - 0.75) + (0.79 - 0.75)) / 2)
    # the oracle is the test-best lr, reported but never chosen
    assert {k: dict(r.oracle.axes)["lr"] for k, r in rows.items()} == {
        "base": "4e-4",
        "svd": "4e-4",
        "mpo": "1e-4",
        "svd-auto": "4e-4",
        "mpo-auto": "4e-4",
    }


def test_transfer_table_and_csv_in_the_report(tmp_path, capsys):
    folder = make_transfer_suite(tmp_path / "transfer")
    assert main(["report", str(folder)]) == 0
    text = capsys.readouterr().out
    assert "## Does base's learning rate transfer? (chosen on dev)" in text
    section = text.split("## Does base's")[1].split("## ")[0]
    line = next(x for x in section.splitlines() if x.startswith("| svd-auto"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells == ["svd-auto", "SVD (0)", "auto", "lr=4e-4 (of 3)", "2", "76.40 ± 0.14",
                     "lr=2e-4", "2", "76.20 ± 0.28", "+0.20 (n=2)", "yes", "+1.40 (n=2)",
                     "lr=4e-4: 76.40 ± 0.14"]  # fmt: skip
    mpo = next(x for x in section.splitlines() if x.startswith("| mpo "))
    assert "lr=1e-4 (of 2)" in mpo and "+1.00 (n=1)" in mpo and "| no " in mpo
    assert "`lr_scaling: auto`: the baseline's learning rate is within 0.3 points of the " \
           "dev-chosen one for 2 of 2" in text  # fmt: skip
    assert "for 0 of 2 over-parameterized variants measured at both (2 with results)" in text
    dest = tmp_path / "out"
    assert main(["report", str(folder), "--export", str(dest)]) == 0
    rows = {r["label"]: r for r in csv.DictReader((dest / "transfer" / "transfer.csv").open())}
    assert rows["svd"]["chosen_value"] == "1e-4" and rows["svd"]["within_tolerance"] == "False"
    assert float(rows["svd"]["gap_points"]) == pytest.approx(2.0)
    assert rows["svd-auto"]["scale"] == "0" and rows["mpo-auto"]["scale"] == "3"
    assert rows["base"]["scale"] == "" and rows["mpo"]["n_at_baseline_choice"] == "1"
    assert rows["svd-auto"]["lr_scaling"] == "auto" and rows["svd"]["lr_scaling"] == "none"


def _png_width(path: Path) -> int:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    return int.from_bytes(data[16:20], "big")


def test_transfer_plots_are_written(tmp_path):
    from opdf.report.plots import plot_best_lr, write_plots

    folder = make_transfer_suite(tmp_path / "transfer")
    report = build_report(load_suite(folder / "suite.yaml"), folder)
    written = {p.name for p in write_plots(report, tmp_path)}
    assert written == {"accuracy-vs-lr.png", "accuracy-vs-scale.png", "variants.png",
                       "best-lr-vs-scale.png"}  # fmt: skip
    # accuracy vs lr: one 6.4-inch panel per lr scaling (none, auto) at 120 dpi
    assert _png_width(tmp_path / "accuracy-vs-lr.png") == 2 * 768
    assert _png_width(tmp_path / "best-lr-vs-scale.png") == 768
    # one scale only (the suite without its svd variants): no best-lr-vs-scale plot
    for p in folder.glob("svd*"):
        for f in p.iterdir():
            f.unlink()
        p.rmdir()
    report = build_report(load_suite(folder / "suite.yaml"), folder)
    assert not plot_best_lr(report, tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_variant_bars_of_several_methods_are_grouped_by_method(tmp_path):
    """Suite (b)'s shape: with one config per method, the bars come per method in suite
    order, the variants side by side in suite order, a gap between methods (run order would
    interleave them: every method's base first)."""
    from opdf.report.plots import bar_layout, plot_variants

    folder = tmp_path / "methods"
    folder.mkdir()
    (folder / "suite.yaml").write_text(yaml.safe_dump({
        "name": "methods", "config": {"theseus": "t.yaml", "lgtm": "l.yaml"},
        "variants": {"base": {"overparam": "none"}, "opdf": {"overparam": "mpo"}},
        "grid": {"seed": [1, 2]},
    }, sort_keys=False))  # fmt: skip
    for i, cell in enumerate(c.id for c in load_suite(folder / "suite.yaml").cells()):
        (folder / cell).mkdir()
        (folder / cell / "summary.json").write_text(json.dumps({
            "main_metric": "accuracy", "dev": {"accuracy": 0.7},
            "test": {"accuracy": 0.7 + i / 100},
            "overparam": "mpo" if "opdf" in cell else "none", "unit_modes": 3 * ("opdf" in cell),
        }))  # fmt: skip
    report = build_report(load_suite(folder / "suite.yaml"), folder)
    assert [g.label for g in report.groups] == ["theseus-base", "lgtm-base", "theseus-opdf",
                                                "lgtm-opdf"]  # fmt: skip
    groups, xs = bar_layout(report, list(report.groups))
    assert [g.label for g in groups] == ["theseus-base", "theseus-opdf", "lgtm-base", "lgtm-opdf"]
    assert xs == [0.0, 1.0, 2.6, 3.6]
    assert plot_variants(report, tmp_path / "variants.png")
    assert _png_width(tmp_path / "variants.png") > 0


def test_report_reads_identical_cells_of_a_reuse_suite(tmp_path, capsys):
    from opdf.bench.run import resolved_config

    config = Path(__file__).resolve().parents[1] / "configs" / "rt-polarity-kd-base.yaml"
    suites = tmp_path / "suites"
    for name, reuse in (("other", []), ("mine", ["other"])):
        (suites / name).mkdir(parents=True)
        (suites / name / "suite.yaml").write_text(yaml.safe_dump({
            "name": name, "config": str(config), "variants": {"base": {"overparam": "none"}},
            "grid": {"lr": [1e-4, 2e-4], "seed": [1]}, "tune": ["lr"], "reuse": reuse,
        }))  # fmt: skip
    other, mine = (load_suite(suites / n / "suite.yaml") for n in ("other", "mine"))
    for cell, lr in zip(other.cells(), (1e-4, 2e-4), strict=True):
        folder = suites / "other" / cell.id
        folder.mkdir()
        cfg = resolved_config(cell, cell.overrides, folder).to_dict()
        if lr == 2e-4:
            cfg["epochs"] = 99  # another setting: not the same cell, not reused
        (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
        (folder / "summary.json").write_text(json.dumps({
            "main_metric": "accuracy", "dev": {"accuracy": 0.8}, "test": {"accuracy": 0.7},
            "overparam": "none"}))  # fmt: skip
        (suites / "other" / f"{cell.id}.log").write_text("log\n")
    report = build_report(mine, suites / "mine")
    first = mine.cells()[0].id  # lr 1e-4
    assert [r.cell.id for r in report.results] == [first]
    assert report.results[0].folder == suites / "other" / first
    assert "1 of them read from the identical cells of `reuse` suites" in report.markdown()
    dest = export(report, tmp_path / "x")
    assert (dest / first / "summary.json").is_file() and (dest / f"{first}.log").is_file()


def _run(folder: Path, seed: int, steps: int, test: float) -> None:
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({
        "method": "kd", "overparam": "none", "seed": seed, "main_metric": "accuracy",
        "dev": {"accuracy": test}, "test": {"accuracy": test}, "steps": steps,
    }))  # fmt: skip
    (folder / "config.yaml").write_text(yaml.safe_dump(
        {"method": "kd", "seed": seed, "max_steps": steps, "output_dir": str(folder),
         "threads": 2, "teacher": {"cache_outputs": seed % 2 == 0}}))  # fmt: skip


def test_group_pools_runs_of_one_config_only_and_says_when_seeds_repeat(tmp_path, capsys):
    """On main --group averaged 24- and 400-step runs ("seed 0,0,0,0")."""
    for i, (seed, steps, test) in enumerate([(0, 24, 0.5), (0, 24, 0.6), (0, 400, 0.9),
                                              (1, 400, 0.8)]):  # fmt: skip
        _run(tmp_path / "runs" / f"r{i}", seed, steps, test)
    assert main(["report", str(tmp_path / "runs"), "--group"]) == 0
    out = capsys.readouterr().out
    rows = [x for x in out.splitlines() if x.startswith("| 2 run(s)")]
    assert len(rows) == 2, out
    by_steps = {("max_steps=24" in x): x for x in rows}
    assert "| 0,0 " in by_steps[True] and "55.00" in by_steps[True]
    assert "| 0,1 " in by_steps[False] and "85.00" in by_steps[False]
    notes = [x for x in out.splitlines() if x.startswith("note:")]
    assert len(notes) == 1 and "max_steps=24" in notes[0] and "seed 0 repeats" in notes[0]


def test_the_report_of_a_tiny_run_counts_the_tiny_grid(tmp_path, capsys):
    folder = make_suite(tmp_path / "fixture-tiny")
    data = yaml.safe_load((folder / "suite.yaml").read_text())
    data["tiny"] = {"grid": {"lr": ["1e-4"], "seed": [1]}}
    from opdf.bench.suite import TINY_HEADER

    (folder / "suite.yaml").write_text(f"{TINY_HEADER}x.yaml\n" + yaml.safe_dump(data))
    for cell in folder.iterdir():
        if cell.is_dir() and cell.name.split("__")[1:] != ["lr=1e-4", "seed=1"]:
            for f in cell.rglob("*"):
                if f.is_file():
                    f.unlink()
    assert main(["report", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "3 of 3 cells finished" in out, out.splitlines()[:3]


def test_a_reader_that_closes_the_pipe_ends_the_report_quietly(tmp_path):
    import os
    import subprocess
    import sys

    folder = make_suite(tmp_path / "s")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "opdf", "report", str(folder)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)  # fmt: skip
    proc.stdout.close()  # `| head -0`: nobody reads
    err = proc.stderr.read().decode()
    assert proc.wait() in (0, 141) and err == "", err


def test_a_teacher_fine_tuned_twice_into_other_weights_is_named_in_the_report(tmp_path):
    """A suite resumed on another machine re-fine-tunes its teacher; if the weights came out
    different, the report says so (cells without a digest, run before it was recorded, and
    cells of another teacher do not count)."""
    folder = make_suite(tmp_path / "s")
    report = build_report(load_suite(folder / "suite.yaml"), folder)
    assert "loaded" not in report.markdown()
    cells = sorted(p for p in folder.iterdir() if (p / "summary.json").is_file())
    for i, cell in enumerate(cells):  # the same teacher, fine-tuned on two machines
        s = json.loads((cell / "summary.json").read_text())
        s["teacher"] = f"/home/{'ab'[i % 2]}/.cache/opdf/teachers/minilm-l6-abc/student"
        s["teacher_digest"] = "1111aaaa2222bbbb"
        (cell / "summary.json").write_text(json.dumps(s))
    report = build_report(load_suite(folder / "suite.yaml"), folder)
    assert "loaded" not in report.markdown()  # one teacher, one set of weights
    for cell, digest in ((cells[0], "ffff0000ffff0000"), (cells[1], None)):
        s = json.loads((cell / "summary.json").read_text())
        s["teacher_digest"] = digest
        (cell / "summary.json").write_text(json.dumps(s))
    text = build_report(load_suite(folder / "suite.yaml"), folder).markdown()
    n = len(cells) - 2
    assert (
        "Note: the cells of teacher `minilm-l6-abc/student` loaded 2 different sets of weights "
        f"(1111aaaa2222bbbb in {n} cells, ffff0000ffff0000 in 1 cell)" in text
    )
