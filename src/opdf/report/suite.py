"""Reports over a suite folder: mean ± std over seeds, settings chosen on dev, paired tests.

What it computes, and the rules that keep it honest:

- A *group* is every cell that differs only in the replicate axis (``seed``): its dev and test
  (the task's main metric) are averaged, with the sample standard deviation (ddof 1).
- A *setting* is a group without its tuned axes (``tune``, default ``lr``). For each setting the
  tuned values are chosen by the mean **dev** score over seeds (ties: the first in suite order);
  :func:`choose_on_dev` sees dev scores only, so test can never influence the choice.
- Each variant is compared with the suite's ``baseline`` variant of the same config and the same
  untuned axes, over the seeds both have, at their dev-chosen settings and at each tuned value
  alike: the mean paired difference of test (points), a two-sided paired t-test
  (``scipy.stats.ttest_rel``) and a 95% percentile bootstrap CI of the mean difference (10,000
  resamples of the seeds, fixed RNG seed 0).
- A report makes several such comparisons, so its headline ones (each variant at its dev-chosen
  setting, or at the same setting when nothing is tuned) also get Holm's step-down adjusted p
  over all of them: a Holm p below 0.05 keeps the chance of any false claim among them at 5%.
  The per-lr comparisons are diagnostics and stay unadjusted.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from opdf.bench.suite import TINY_HEADER, Cell, Suite, format_value, load_suite
from opdf.errors import OpdfError

BOOTSTRAP_SAMPLES = 10_000
SMALL_FILES = ("config.yaml", "summary.json", "metrics.jsonl")


@dataclass
class CellResult:
    cell: Cell
    summary: dict
    folder: Path | None = None  # where its files are (a ``reuse`` suite's cell, or its own)
    lr_scaling: str = "none"  # from summary.json, else the cell's config.yaml (older runs)

    @property
    def metric(self) -> str:
        return self.summary.get("main_metric", "accuracy")

    def score(self, split: str) -> float | None:
        v = (self.summary.get(split) or {}).get(self.metric)
        return float(v) if v is not None else None


@dataclass
class Group:
    """Cells that differ only in the replicate axis."""

    label: str
    config_name: str | None
    variant: str | None
    axes: tuple[tuple[str, Any], ...]  # every grid axis but the replicate one, suite order
    results: list[CellResult] = field(default_factory=list)
    chosen: bool = False
    candidates: int = 0  # chosen groups: how many tuned settings with results it was chosen from
    compared_seeds: tuple = ()  # chosen groups: the seeds the dev choice compared (all shared)

    def seeds(self, replicate: str) -> list[Any]:
        return [r.cell.value(replicate) for r in self.results]

    def scores(self, split: str, seeds: set | None = None, replicate: str = "seed") -> list[float]:
        """The scores on ``split``; only of the cells whose ``replicate`` value is in ``seeds``
        when given (a dev choice compares settings over the seeds they share)."""
        return [s for r in self.results
                if (seeds is None or r.cell.value(replicate) in seeds)
                and (s := r.score(split)) is not None]  # fmt: skip

    def mean(self, split: str, seeds: set | None = None, replicate: str = "seed") -> float | None:
        v = self.scores(split, seeds, replicate)
        return sum(v) / len(v) if v else None

    def std(self, split: str) -> float | None:
        v = self.scores(split)
        if len(v) < 2:
            return None
        m = sum(v) / len(v)
        return math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1))

    def field_mean(self, key: str) -> float | None:
        v = [r.summary[key] for r in self.results if isinstance(r.summary.get(key), int | float)]
        return sum(v) / len(v) if v else None

    def first(self, key: str) -> Any:
        return next((r.summary[key] for r in self.results if r.summary.get(key) is not None), None)

    def lr_scaling(self) -> str:
        return self.results[0].lr_scaling if self.results else "none"

    def scale(self) -> int | None:
        """Unit modes of the scheme: 0 for SVD, L for MPO, None for a plain student."""
        scheme = self.first("overparam")
        if scheme == "svd":
            return 0
        if scheme == "mpo":
            return int(self.first("unit_modes") or 0)
        return None


@dataclass
class Comparison:
    label: str
    baseline: str
    setting: str  # "chosen on dev" or e.g. "lr=5e-5"
    untuned: tuple[tuple[str, Any], ...]
    seeds: list[Any]
    stats: dict


def _reused_folders(suite: Suite, cells: Sequence[Cell], out: Path) -> dict[str, Path]:
    """Cells missing under ``out`` that ``opdf bench`` would reuse from a ``reuse`` suite (a
    finished cell of the same id there whose saved config equals this cell's): id -> folder."""
    wanted = [
        c
        for c in cells
        if not (c.folder(out) / "summary.json").is_file()
        and any((out.parent / n / c.id / "summary.json").is_file() for n in suite.reuse)
    ]
    if not wanted:
        return {}
    from opdf.bench.run import plan
    from opdf.bench.suite import REUSED

    try:
        planned = plan(suite, wanted, out, threads=None)
    except OpdfError:
        return {}  # a config that no longer loads: report only the suite's own cells
    return {p.cell.id: p.reuse_from for p in planned if p.status == REUSED and p.reuse_from}


def _lr_scaling(summary: dict, folder: Path) -> str:
    if summary.get("lr_scaling"):
        return str(summary["lr_scaling"])
    try:
        config = yaml.safe_load((folder / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        config = None
    value = config.get("lr_scaling") if isinstance(config, dict) else None
    return str(value) if value else "none"


def load_results(suite: Suite, out: Path) -> list[CellResult]:
    """Finished cells of ``suite`` under ``out`` (also the cells of its ``--tiny`` grid), and
    the identical finished cells of its ``reuse`` suites that ``opdf bench`` has not linked yet."""
    cells = {c.id: c for c in suite.cells()}
    if suite.tiny:
        for c in suite.cells(tiny=True):
            cells.setdefault(c.id, c)
    ordered = sorted(cells.values(), key=lambda c: c.order)
    reused = _reused_folders(suite, ordered, out) if suite.reuse else {}
    results = []
    for c in ordered:
        folder = reused.get(c.id, c.folder(out))
        f = folder / "summary.json"
        if not f.is_file():
            continue
        try:
            summary = json.loads(f.read_text())
        except json.JSONDecodeError as e:
            raise OpdfError(f"{f}: not valid JSON ({e})") from None
        results.append(CellResult(c, summary, folder, _lr_scaling(summary, folder)))
    return results


def group_results(suite: Suite, results: Sequence[CellResult]) -> list[Group]:
    groups: dict[tuple, Group] = {}
    for r in results:
        axes = tuple((k, v) for k, v in r.cell.values if k != suite.replicates)
        key = (r.cell.label, tuple((k, format_value(v)) for k, v in axes))
        if key not in groups:
            groups[key] = Group(r.cell.label, r.cell.config_name, r.cell.variant, axes)
        groups[key].results.append(r)
    return list(groups.values())


def _untuned(suite: Suite, g: Group) -> tuple[tuple[str, Any], ...]:
    return tuple((k, v) for k, v in g.axes if k not in suite.tune)


def _key(axes) -> tuple:
    return tuple((k, format_value(v)) for k, v in axes)


def choose_on_dev(candidates: Sequence[tuple[Any, float | None]]) -> Any:
    """The candidate with the highest dev score (the first on ties); ``(key, dev mean)`` pairs
    are all this function sees, so a test score cannot take part in the choice."""
    best, best_dev = None, -math.inf
    for key, dev in candidates:
        if dev is not None and dev > best_dev:
            best, best_dev = key, dev
    return best


def chosen_groups(suite: Suite, groups: Sequence[Group]) -> list[Group]:
    """One group per (label, untuned axes): the dev-chosen tuned values (marks ``chosen``).

    In a partly finished suite the candidates may have different seeds; they are compared on the
    seeds they all have (a setting with one lucky seed does not beat one averaged over three),
    or on all of their own seeds when they share none."""
    settings: dict[tuple, list[Group]] = {}
    for g in groups:
        settings.setdefault((g.label, _key(_untuned(suite, g))), []).append(g)
    out = []
    rep = suite.replicates
    for members in settings.values():
        scored = [set(g.seeds(rep)) for g in members if g.mean("dev") is not None]
        common = set.intersection(*scored) if scored else set()
        idx = choose_on_dev([(i, g.mean("dev", common or None, rep))
                             for i, g in enumerate(members)])  # fmt: skip
        if idx is None:
            continue
        members[idx].chosen = True
        members[idx].candidates = sum(g.mean("dev") is not None for g in members)
        members[idx].compared_seeds = tuple(sorted(common, key=str))
        out.append(members[idx])
    # in the suite's order (base, svd, mpo, ...), not in the order of the first finished cell,
    # which in a sparse or partly run grid can put a variant with an extra setting first
    first: dict[tuple, int] = {}
    for c in suite.grid_cells():
        untuned = tuple((k, v) for k, v in c.values if k != rep and k not in suite.tune)
        first.setdefault((c.label, _key(untuned)), len(first))
    return sorted(out, key=lambda g: first.get((g.label, _key(_untuned(suite, g))), len(first)))


def paired_stats(a: Sequence[float], b: Sequence[float], *, samples: int = BOOTSTRAP_SAMPLES,
                 rng_seed: int = 0) -> dict:  # fmt: skip
    """Paired comparison of ``a`` (variant) and ``b`` (baseline), same order of seeds: mean and
    std of the differences, t and two-sided p of ``scipy.stats.ttest_rel``, and the 95%
    percentile bootstrap CI of the mean difference."""
    import numpy as np

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {len(a)} vs {len(b)}")
    d = a - b
    n = len(d)
    out: dict[str, Any] = {"n": n, "mean_diff": float(d.mean()) if n else None,
                           "std_diff": float(d.std(ddof=1)) if n > 1 else None,
                           "t": None, "p": None, "ci_low": None, "ci_high": None}  # fmt: skip
    if n > 1 and float(d.std(ddof=1)) > 0:
        from scipy import stats

        res = stats.ttest_rel(a, b)
        out["t"], out["p"] = float(res.statistic), float(res.pvalue)
    if n > 1:
        rng = np.random.default_rng(rng_seed)
        means = d[rng.integers(0, n, size=(samples, n))].mean(axis=1)
        out["ci_low"], out["ci_high"] = (float(x) for x in np.percentile(means, [2.5, 97.5]))
    return out


HEADLINE_SETTINGS = ("chosen on dev", "same setting")


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (None stays None and is not counted): the i-th
    smallest of m becomes ``max over j <= i of min(1, (m - j + 1) p_(j))``."""
    order = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    m, out, running = len(order), [None] * len(pvalues), 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def _adjust_headline(comparisons: list[Comparison]) -> None:
    """``stats["p_holm"]``: Holm over the headline comparisons, None for the others."""
    head = [c for c in comparisons if c.setting in HEADLINE_SETTINGS]
    for c, adjusted in zip(head, holm([c.stats["p"] for c in head]), strict=True):
        c.stats["p_holm"] = adjusted
        c.stats["family"] = sum(h.stats["p"] is not None for h in head)
    for c in comparisons:
        c.stats.setdefault("p_holm", None)
        c.stats.setdefault("family", None)


def _baseline_label(suite: Suite, g: Group) -> str | None:
    if suite.baseline is None or g.variant is None or g.variant == suite.baseline:
        return None
    return "-".join(str(p) for p in (g.config_name, suite.baseline) if p is not None)


def compare(suite: Suite, groups: Sequence[Group], chosen: Sequence[Group]) -> list[Comparison]:
    """Every variant vs the baseline: at the dev-chosen settings, then at each tuned value."""
    by_key = {(g.label, _key(g.axes)): g for g in groups}
    chosen_by = {(g.label, _key(_untuned(suite, g))): g for g in chosen}
    out = []

    def pair(g: Group, base: Group, setting: str) -> None:
        rep = suite.replicates
        ga = {r.cell.value(rep): r.score("test") for r in g.results}
        gb = {r.cell.value(rep): r.score("test") for r in base.results}
        seeds = [s for s in ga if s in gb and ga[s] is not None and gb[s] is not None]
        if not seeds:
            return
        stats = paired_stats([ga[s] for s in seeds], [gb[s] for s in seeds])
        out.append(Comparison(g.label, base.label, setting, _untuned(suite, g), seeds, stats))

    for g in chosen:
        bl = _baseline_label(suite, g)
        base = chosen_by.get((bl, _key(_untuned(suite, g)))) if bl else None
        if base is not None:
            pair(g, base, "chosen on dev" if suite.tune else "same setting")
    if suite.tune:
        for g in groups:
            bl = _baseline_label(suite, g)
            base = by_key.get((bl, _key(g.axes))) if bl else None
            if base is not None:
                tuned = ", ".join(f"{k}={format_value(v)}" for k, v in g.axes if k in suite.tune)
                pair(g, base, tuned)
    _adjust_headline(out)
    return out


# ------------------------------------------------------------------------------------ tables


def _pct(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{100 * v:.{digits}f}"


def _pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    return _pct(mean) + (f" ± {_pct(std)}" if std is not None else "")


def _millions(v) -> str:
    return "-" if v is None else f"{v / 1e6:.2f}M"


def _num(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _axes_text(axes) -> str:
    return ", ".join(f"{k}={format_value(v)}" for k, v in axes) or "-"


def group_record(suite: Suite, g: Group) -> dict:
    """One row of the groups table as plain values (CSV) ."""
    rec = {"label": g.label, "config": g.config_name, "variant": g.variant}
    rec.update({k: format_value(v) for k, v in g.axes})
    rec.update({
        "n": len(g.results), "seeds": " ".join(str(s) for s in g.seeds(suite.replicates)),
        "metric": g.results[0].metric if g.results else None,
        "dev_mean": g.mean("dev"), "dev_std": g.std("dev"),
        "test_mean": g.mean("test"), "test_std": g.std("test"),
        "chosen_on_dev": g.chosen,
        "chosen_from": g.candidates or None,
        "compared_seeds": " ".join(str(v) for v in g.compared_seeds) or None,
        "train_params": g.first("train_params"), "inference_params": g.first("inference_params"),
        "seconds_per_step": g.field_mean("seconds_per_step"),
        "peak_rss_mb": g.field_mean("peak_rss_mb"),
        "peak_gpu_mb": g.field_mean("peak_gpu_mb"),
        "steps": g.first("steps"),
    })  # fmt: skip
    return rec


def comparison_record(c: Comparison) -> dict:
    s = c.stats
    return {"label": c.label, "baseline": c.baseline, "setting": c.setting,
            "untuned": _axes_text(c.untuned), "seeds": " ".join(map(str, c.seeds)), "n": s["n"],
            "mean_diff": s["mean_diff"], "std_diff": s["std_diff"], "t": s["t"], "p": s["p"],
            "p_holm": s.get("p_holm"), "ci_low": s["ci_low"], "ci_high": s["ci_high"]}  # fmt: skip


def _markdown(heads: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(heads)]  # fmt: skip
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]  # fmt: skip
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"
              for r in rows]  # fmt: skip
    return "\n".join(lines)


def _cost_cells(g: Group) -> list[str]:
    rss, gpu = g.field_mean("peak_rss_mb"), g.field_mean("peak_gpu_mb")
    mem = "-" if rss is None else f"{rss:.0f}"
    if gpu is not None:
        mem += f" / GPU {gpu:.0f}"
    return [_millions(g.first("train_params")), _millions(g.first("inference_params")),
            _num(g.field_mean("seconds_per_step"), ".3f"), mem]  # fmt: skip


COST_HEADS = ["train params", "inference params", "s/step", "peak MB"]


def chosen_table(suite: Suite, chosen: Sequence[Group]) -> str:
    metric = chosen[0].results[0].metric if chosen else "metric"
    heads = ["variant", "setting", "chosen on dev", "n", f"dev {metric}",
             f"test {metric}", *COST_HEADS]  # fmt: skip
    rows = []
    for g in chosen:
        tuned = ", ".join(f"{k}={format_value(v)}" for k, v in g.axes if k in suite.tune) or "-"
        tuned += f" (best of {g.candidates})"
        if g.compared_seeds and len(g.compared_seeds) < len(g.results):  # a partly run suite
            tuned += f" on seeds {' '.join(str(v) for v in g.compared_seeds)}"
        rows.append([g.label, _axes_text(_untuned(suite, g)), tuned, str(len(g.results)),
                     _pm(g.mean("dev"), g.std("dev")), _pm(g.mean("test"), g.std("test")),
                     *_cost_cells(g)])  # fmt: skip
    return _markdown(heads, rows)


def groups_table(suite: Suite, groups: Sequence[Group]) -> str:
    metric = groups[0].results[0].metric if groups else "metric"
    heads = ["variant", "setting", "n", "seeds", f"dev {metric}", f"test {metric}", *COST_HEADS]
    rows = []
    for g in groups:
        seeds = ",".join(map(str, g.seeds(suite.replicates)))
        dev = _pm(g.mean("dev"), g.std("dev")) + (" *" if g.chosen else "")
        rows.append([g.label, _axes_text(g.axes), str(len(g.results)), seeds, dev,
                     _pm(g.mean("test"), g.std("test")), *_cost_cells(g)])  # fmt: skip
    return _markdown(heads, rows)


def comparisons_table(comparisons: Sequence[Comparison]) -> str:
    heads = ["variant", "vs", "setting", "n", "test diff (points)", "95% bootstrap CI",
             "t", "p (paired t)", "p (Holm)"]  # fmt: skip
    rows = []
    for c in comparisons:
        s = c.stats
        setting = c.setting + (f"; {_axes_text(c.untuned)}" if c.untuned else "")
        diff = "-" if s["mean_diff"] is None else f"{100 * s['mean_diff']:+.2f}"
        if s["std_diff"] is not None:
            diff += f" ± {100 * s['std_diff']:.2f}"
        ci = ("-" if s["ci_low"] is None
              else f"[{100 * s['ci_low']:+.2f}, {100 * s['ci_high']:+.2f}]")  # fmt: skip
        rows.append([c.label, c.baseline, setting, str(s["n"]), diff, ci,
                     _num(s["t"], ".2f"), _num(s["p"], ".3f"),
                     _num(s.get("p_holm"), ".3f")])  # fmt: skip
    return _markdown(heads, rows)


def to_csv(records: Sequence[dict]) -> str:
    keys: list[str] = []
    for r in records:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(records)
    return buf.getvalue()


@dataclass
class SuiteReport:
    suite: Suite
    out: Path
    results: list[CellResult]
    groups: list[Group]
    chosen: list[Group]
    comparisons: list[Comparison]
    transfer: list = field(default_factory=list)  # opdf.report.transfer.TransferRow
    tiny: bool = False  # the folder holds the suite's --tiny grid

    def tensorboard_dirs(self) -> list[Path]:
        """The finished cells' TensorBoard folders (run with ``log_to: [..., tensorboard]``)."""
        from opdf.run.tblog import TB_DIR

        dirs = [(r.folder or r.cell.folder(self.out)) / TB_DIR for r in self.results]
        return [d for d in dirs if d.is_dir()]

    def tensorboard_hint(self) -> str | None:
        """One line: the command that shows every cell's scalars in TensorBoard (None if no cell
        logged any). Not part of :meth:`markdown`: the folders are this machine's."""
        dirs = self.tensorboard_dirs()
        if not dirs:
            return None
        runs = [d.parent for d in dirs]
        if all(r.parent == self.out for r in runs):  # one folder holds every cell: run = cell
            command = f"tensorboard --logdir {self.out}"
        else:  # cells reused from other suites' folders
            spec = ",".join(f"{d.parent.name}:{d}" for d in dirs)
            command = f"tensorboard --logdir_spec {spec}"
        return (
            f"TensorBoard scalars of {len(dirs)} of {len(self.results)} finished cells "
            f"(their tb/ folders): {command}"
        )

    def markdown(self) -> str:
        s = self.suite
        total = len(s.cells(tiny=self.tiny))
        notes = sorted({r.summary["subsample"] for r in self.results if r.summary.get("subsample")})
        parts = [
            f"# Suite {s.name}",
            "",
            f"{len(self.results)} of {total} cells finished (folder `{self.out}`). Scores: the "
            f"task's main metric in percent, mean ± std over `{s.replicates}`. "
            + (f"Tuned on dev (never on test): {', '.join(s.tune)}. " if s.tune else "")
            + (f"Baseline: `{s.baseline}`." if s.baseline else ""),
        ]
        reused = sorted(
            {
                str(r.folder.parent)
                for r in self.results
                if r.folder is not None and r.folder != r.cell.folder(self.out)
            }
        )
        if reused:
            n = sum(r.folder is not None and r.folder != r.cell.folder(self.out)
                    for r in self.results)  # fmt: skip
            parts += ["", f"{n} of them read from the identical cells of `reuse` suites "
                      f"({', '.join(f'`{f}`' for f in reused)})."]  # fmt: skip
        if notes:
            parts += ["", *[f"Note: {n}" for n in notes]]
        if s.tune:
            parts += ["", "## Chosen on dev", "", chosen_table(s, self.chosen)]
        if self.transfer:
            from opdf.report.transfer import TOLERANCE_POINTS, transfer_summary, transfer_table

            parts += ["", f"## Does {s.baseline}'s learning rate transfer? (chosen on dev)", "",
                      f"Per variant: the {', '.join(s.tune)} chosen on dev for it and its test "
                      f"there; its test at {s.baseline}'s dev-chosen value; the gap = the first "
                      f"minus the second over the seeds both have (n), in points (within "
                      f"{TOLERANCE_POINTS}: {s.baseline}'s choice costs at most "
                      f"{TOLERANCE_POINTS} points); vs tuned base = the variant at its choice "
                      f"minus {s.baseline} at its own, same seeds. The oracle column (best test "
                      "mean) is shown for reference and chooses nothing.", "",
                      *transfer_summary(self.transfer), "",
                      transfer_table(s, self.transfer)]  # fmt: skip
        if self.comparisons:
            family = next((c.stats["family"] for c in self.comparisons if c.stats.get("family")),
                          0)  # fmt: skip
            parts += ["", f"## Paired differences vs {s.baseline} (test, same seeds)", "",
                      comparisons_table(self.comparisons)]  # fmt: skip
            if family:
                setting = "dev-chosen" if s.tune else "same-setting"
                parts += [
                    "",
                    f"p (Holm): adjusted over the {family} {setting} comparisons "
                    "above (Holm's step-down), so that one of them below 0.05 holds with "
                    "a family-wise error of 5%; the per-value rows are not adjusted.",
                ]
        parts += ["", "## Every setting" + (" (* = chosen on dev)" if s.tune else ""), "",
                  groups_table(s, self.groups), ""]  # fmt: skip
        return "\n".join(parts)

    def csv_files(self) -> dict[str, str]:
        cells = []
        for r in self.results:
            rec = {"cell": r.cell.id, "label": r.cell.label, "config": r.cell.config_name,
                   "variant": r.cell.variant}  # fmt: skip
            rec.update({k: format_value(v) for k, v in r.cell.values})
            rec.update({"metric": r.metric, "dev": r.score("dev"), "test": r.score("test")})
            for k in ("train_params", "inference_params", "seconds_per_step", "peak_rss_mb",
                      "peak_gpu_mb", "steps", "best_step", "wall_time"):  # fmt: skip
                rec[k] = r.summary.get(k)
            cells.append(rec)
        files = {
            "cells.csv": to_csv(cells),
            "groups.csv": to_csv([group_record(self.suite, g) for g in self.groups]),
            "chosen.csv": to_csv([group_record(self.suite, g) for g in self.chosen]),
            "paired.csv": to_csv([comparison_record(c) for c in self.comparisons]),
        }
        if self.transfer:
            from opdf.report.transfer import transfer_record

            files["transfer.csv"] = to_csv([transfer_record(self.suite, r) for r in self.transfer])
        return files


def build_report(suite: Suite, out: Path) -> SuiteReport:
    results = load_results(suite, out)
    if not results:
        raise OpdfError(
            f"no finished cell of suite {suite.name!r} under {out} (run `opdf bench` first, or "
            "give --out)"
        )
    groups = group_results(suite, results)
    chosen = chosen_groups(suite, groups) if suite.tune else []
    comparisons = compare(suite, groups, chosen if suite.tune else groups)
    from opdf.report.transfer import transfer_rows

    transfer = transfer_rows(suite, groups, chosen)
    tiny = suite.tiny is not None and ran_tiny(suite, out)
    return SuiteReport(suite, out, results, groups, chosen, comparisons, transfer, tiny)


def ran_tiny(suite: Suite, out: Path) -> bool:
    """Whether ``out`` holds the suite's ``--tiny`` grid: its copy of the suite file says so
    (folders written before it did: the default name ``<name>-tiny``)."""
    try:
        first = (Path(out) / "suite.yaml").read_text().split("\n", 1)[0]
    except OSError:
        first = ""
    return first.startswith(TINY_HEADER) or Path(out).name == f"{suite.name}-tiny"


def open_suite(path: Path, out: str | Path | None = None) -> tuple[Suite, Path]:
    """A suite file (results in ``out`` or its default folder) or a suite folder (one that
    ``opdf bench`` ran: it holds a copy of the suite file, ``suite.yaml``)."""
    if path.is_dir():
        return load_suite(path / "suite.yaml"), Path(out) if out else path
    suite = load_suite(path)
    return suite, Path(out) if out else suite.default_out()


def export(report: SuiteReport, dest: Path) -> Path:
    """Copy every finished cell's small files (config.yaml, summary.json, metrics.jsonl, the
    log) and write the tables (report.md, *.csv) and plots (*.png) into ``dest``, in the suite
    folder's layout so that ``opdf report dest`` reads it again. Never copies weights."""
    from opdf.report.plots import write_plots

    dest.mkdir(parents=True, exist_ok=True)
    src_suite = report.suite.path
    if src_suite.resolve() != (dest / "suite.yaml").resolve():
        shutil.copyfile(src_suite, dest / "suite.yaml")
    for r in report.results:
        folder = r.folder or r.cell.folder(report.out)
        target = dest / r.cell.id
        target.mkdir(exist_ok=True)
        for name in SMALL_FILES:
            if (folder / name).is_file() and (folder / name).resolve() != (target / name).resolve():
                shutil.copyfile(folder / name, target / name)
        log = r.cell.log(report.out)
        if not log.is_file() and r.folder is not None:
            log = r.folder.parent / log.name  # a reused cell's log, beside it
        if log.is_file() and log.resolve() != (dest / log.name).resolve():
            shutil.copyfile(log, dest / log.name)
    (dest / "report.md").write_text(report.markdown())
    for name, text in report.csv_files().items():
        (dest / name).write_text(text)
    write_plots(report, dest)
    return dest


def export_dir(base: str | Path, suite: Suite) -> Path:
    """``--export DIR``: results go to ``DIR/<suite name>`` (or DIR itself when it already ends
    with the suite's name)."""
    base = Path(base)
    return base if base.name == suite.name else base / suite.name
