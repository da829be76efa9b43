"""A suite's report as text: ``report.md`` (chosen on dev, transfer, paired differences, every
setting) and the CSV files of an export (cells, groups, chosen, paired, transfer)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from opdf.bench.suite import Suite, format_value
from opdf.report.render import csv_records, markdown_table
from opdf.report.results import CellResult, Group, teacher_drift, untuned_axes
from opdf.report.stats import Comparison
from opdf.report.transfer import (
    TOLERANCE_POINTS,
    TransferRow,
    transfer_record,
    transfer_summary,
    transfer_table,
)
from opdf.run.tblog import TB_DIR


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


def _setting_name(suite: Suite, g: Group) -> str:
    """The variant, and its untuned axes when it has any: ``base (data.name=imdb)``."""
    untuned = untuned_axes(suite, g)
    return f"{g.label} ({_axes_text(untuned)})" if untuned else g.label


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
        "grid_end": "; ".join(g.grid_end) or None,
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
        if g.grid_end:
            tuned += " (at an end of the grid run)"
        rows.append([g.label, _axes_text(untuned_axes(suite, g)), tuned, str(len(g.results)),
                     _pm(g.mean("dev"), g.std("dev")), _pm(g.mean("test"), g.std("test")),
                     *_cost_cells(g)])  # fmt: skip
    return markdown_table(heads, rows)


def groups_table(suite: Suite, groups: Sequence[Group]) -> str:
    metric = groups[0].results[0].metric if groups else "metric"
    heads = ["variant", "setting", "n", "seeds", f"dev {metric}", f"test {metric}", *COST_HEADS]
    rows = []
    for g in groups:
        seeds = ",".join(map(str, g.seeds(suite.replicates)))
        dev = _pm(g.mean("dev"), g.std("dev")) + (" *" if g.chosen else "")
        rows.append([g.label, _axes_text(g.axes), str(len(g.results)), seeds, dev,
                     _pm(g.mean("test"), g.std("test")), *_cost_cells(g)])  # fmt: skip
    return markdown_table(heads, rows)


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
    return markdown_table(heads, rows)


@dataclass
class SuiteReport:
    """Everything a suite report shows, computed once (:func:`opdf.report.suite.build_report`)."""

    suite: Suite
    out: Path
    results: list[CellResult]
    groups: list[Group]
    chosen: list[Group]
    comparisons: list[Comparison]
    transfer: list[TransferRow] = field(default_factory=list)
    tiny: bool = False  # the folder holds the suite's --tiny grid

    def tensorboard_dirs(self) -> list[Path]:
        """The finished cells' TensorBoard folders (run with ``log_to: [..., tensorboard]``)."""
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
        """``report.md``: what was run, then the sections that apply to this suite."""
        s = self.suite
        parts = self._preamble()
        if s.tune:
            parts += ["", "## Chosen on dev", "", chosen_table(s, self.chosen)]
            ends = [f"{_setting_name(s, g)}: {'; '.join(g.grid_end)}"
                    for g in self.chosen if g.grid_end]  # fmt: skip
            if ends:
                parts += ["", "At an end of the grid run so far, so the best may lie beyond it: "
                          "run one step further there before reading the choice. "
                          + ". ".join(ends) + "."]  # fmt: skip
        if self.transfer:
            parts += self._transfer_section()
        if self.comparisons:
            parts += self._paired_section()
        parts += ["", "## Every setting" + (" (* = chosen on dev)" if s.tune else ""), "",
                  groups_table(s, self.groups), ""]  # fmt: skip
        return "\n".join(parts)

    def _preamble(self) -> list[str]:
        """Title, how many cells finished and where, what is tuned, reused cells, notes."""
        s = self.suite
        total = len(s.cells(tiny=self.tiny))
        notes = sorted({r.summary["subsample"] for r in self.results if r.summary.get("subsample")})
        notes += teacher_drift(self.results)
        parts = [
            f"# Suite {s.name}",
            "",
            f"{len(self.results)} of {total} cells finished (folder `{self.out}`). Scores: the "
            f"task's main metric in percent, mean ± std over `{s.replicates}`. "
            + (f"Tuned on dev (never on test): {', '.join(s.tune)}. " if s.tune else "")
            + (f"Baseline: `{s.baseline}`." if s.baseline else ""),
        ]
        borrowed = [r for r in self.results
                    if r.folder is not None and r.folder != r.cell.folder(self.out)]  # fmt: skip
        if borrowed:
            reused = sorted({str(r.folder.parent) for r in borrowed})
            parts += ["", f"{len(borrowed)} of them read from the identical cells of `reuse` "
                      f"suites ({', '.join(f'`{f}`' for f in reused)})."]  # fmt: skip
        if notes:
            parts += ["", *[f"Note: {n}" for n in notes]]
        return parts

    def _transfer_section(self) -> list[str]:
        s = self.suite
        return ["", f"## Does {s.baseline}'s learning rate transfer? (chosen on dev)", "",
                f"Per variant: the {', '.join(s.tune)} chosen on dev for it and its test "
                f"there; its test at {s.baseline}'s dev-chosen value; the gap = the first "
                f"minus the second over the seeds both have (n), in points (within "
                f"{TOLERANCE_POINTS}: {s.baseline}'s choice costs at most "
                f"{TOLERANCE_POINTS} points); vs tuned base = the variant at its choice "
                f"minus {s.baseline} at its own, same seeds. The oracle column (best test "
                "mean) is shown for reference and chooses nothing.", "",
                *transfer_summary(self.transfer), "",
                transfer_table(s, self.transfer)]  # fmt: skip

    def _paired_section(self) -> list[str]:
        s = self.suite
        family = next((c.stats["family"] for c in self.comparisons if c.stats.get("family")), 0)
        parts = ["", f"## Paired differences vs {s.baseline} (test, same seeds)", "",
                 comparisons_table(self.comparisons)]  # fmt: skip
        if family:
            setting = "dev-chosen" if s.tune else "same-setting"
            parts += [
                "",
                f"p (Holm): adjusted over the {family} {setting} comparisons "
                "above (Holm's step-down), so that one of them below 0.05 holds with "
                "a family-wise error of 5%; the per-value rows are not adjusted.",
            ]
        return parts

    def csv_files(self) -> dict[str, str]:
        """The export's CSV files by name: one record per cell, group, chosen group,
        comparison (and transfer row)."""
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
            "cells.csv": csv_records(cells),
            "groups.csv": csv_records([group_record(self.suite, g) for g in self.groups]),
            "chosen.csv": csv_records([group_record(self.suite, g) for g in self.chosen]),
            "paired.csv": csv_records([comparison_record(c) for c in self.comparisons]),
        }
        if self.transfer:
            records = [transfer_record(self.suite, r) for r in self.transfer]
            files["transfer.csv"] = csv_records(records)
        return files
