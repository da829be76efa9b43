"""Reports over a suite folder: mean ± std over seeds, settings chosen on dev, paired tests.

The steps, each in its own module: :mod:`opdf.report.results` reads the finished cells and groups
them over seeds, :mod:`opdf.report.stats` chooses on dev and compares with the baseline (the
rules that keep it honest are written there), :mod:`opdf.report.transfer` asks whether the
baseline's learning rate transfers, :mod:`opdf.report.document` renders the Markdown and CSV, and
:mod:`opdf.report.plots` draws. This module builds a report from a suite and exports it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from opdf.bench.suite import CELL_FILES, TINY_HEADER, Suite, export_dir, load_suite
from opdf.errors import OpdfError
from opdf.report.document import SuiteReport
from opdf.report.plots import write_plots
from opdf.report.results import CellResult, Group, group_results, load_results
from opdf.report.stats import (
    BOOTSTRAP_SAMPLES,
    Comparison,
    choose_on_dev,
    chosen_groups,
    compare,
    holm,
    paired_stats,
)
from opdf.report.transfer import transfer_rows

__all__ = [
    "BOOTSTRAP_SAMPLES",
    "SMALL_FILES",
    "CellResult",
    "Comparison",
    "Group",
    "SuiteReport",
    "build_report",
    "choose_on_dev",
    "chosen_groups",
    "compare",
    "export",
    "export_dir",
    "holm",
    "open_suite",
    "paired_stats",
    "ran_tiny",
]

#: what an export copies of each cell (never weights)
SMALL_FILES = CELL_FILES


def build_report(suite: Suite, out: Path) -> SuiteReport:
    """Read the suite's finished cells under ``out`` and compute every table of its report."""
    results = load_results(suite, out)
    if not results:
        raise OpdfError(
            f"no finished cell of suite {suite.name!r} under {out}: none has a summary.json "
            "(run `opdf bench` first, or point --out at the folder its cells were written to)"
        )
    groups = group_results(suite, results)
    chosen = chosen_groups(suite, groups) if suite.tune else []
    comparisons = compare(suite, groups, chosen if suite.tune else groups)
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
