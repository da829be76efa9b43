"""``opdf report PATH ...``: a table of run summaries, or the report of a suite."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from opdf.bench.suite import is_suite_file
from opdf.errors import OpdfError
from opdf.report import format_table, group_rows, load_rows

DESCRIPTION = """\
Runs: collect summary.json files (run folders, files, or folders searched recursively) and print
one row per run: method, variant (base, +SVD, +MPO(L), +OPDF(L) = MPO with the alignment loss),
seed, dev and test of the task's main metric (percent), train and inference parameters, seconds
per step and wall time.

Suites: given a suite file (its results in runs/suites/<name>/ or --out) or a suite folder (one
that `opdf bench` ran, or an exported one), print mean ± std over seeds per setting, the tuned
axes (learning rate) chosen on DEV per variant (never on test; flagged when the choice is the
lowest or highest rate run, where the best may lie beyond, with the rate to run next), the
paired difference of each variant vs the suite's baseline over the same seeds with a paired
t-test and a 95% bootstrap CI, and parameters, seconds per step and peak memory. With a tuned
axis and a baseline, also whether the baseline's dev-chosen learning rate transfers: per variant
(scale, lr_scaling) its own dev choice, its test at the baseline's choice and the gap in points
(within 0.3 or not). Identical finished cells of the suite's `reuse` suites count as its own.
--export DIR also writes report.md, cells.csv, groups.csv, chosen.csv, paired.csv, transfer.csv
and PNG plots (accuracy vs learning rate, vs scale, variant bars, dev-chosen learning rate vs
scale) into DIR/<suite name>/, with every cell's config.yaml, summary.json, metrics.jsonl and
log (small files only), ready to commit. --baseline VARIANT compares every variant with another
one than the suite's baseline (printed only: an export keeps the suite's). Cells run with
log_to: [jsonl, tensorboard] add a last line: the tensorboard --logdir command that shows their
scalars."""

EPILOG = """\
examples:
  opdf report runs/
  opdf report runs/demo --group --format csv
  opdf report benchmarks/suites/rt-polarity-kd.yaml
  opdf report benchmarks/suites/rt-polarity-kd.yaml --export benchmarks/results
  opdf report benchmarks/results/rt-polarity-kd          # an exported suite
  opdf report benchmarks/suites/rt-polarity-align-target.yaml --baseline opdf-w1e4"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "report",
        help="tables of finished runs (their summary.json), or of a suite",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("paths", nargs="+",
                   help="run folders, summary.json files, parent folders; or one suite file or "
                        "suite folder")  # fmt: skip
    p.add_argument("--format", choices=("markdown", "csv"), default="markdown",
                   help="csv: for a suite, the per-setting table (groups.csv); dev, test and "
                        "test_std as fractions (markdown shows percent)")  # fmt: skip
    p.add_argument("--group", action="store_true",
                   help="one row per (method, variant): mean over seeds, test ± std")  # fmt: skip
    p.add_argument("--sort", default=None, help="sort by a column: run, method, variant, test, ...")
    p.add_argument("--out", help="suite: its results folder (default runs/suites/<name>)")
    p.add_argument("--baseline", metavar="VARIANT",
                   help="suite: compare every variant with this one instead of the suite's "
                        "baseline (not with --export)")  # fmt: skip
    p.add_argument(
        "--export",
        metavar="DIR",
        help="suite: write tables, plots and the cells' small files to DIR/<name>/",
    )
    p.set_defaults(run=run)


def _suite_path(paths):
    if len(paths) != 1:
        return None
    p = Path(paths[0])
    if is_suite_file(p) or (p.is_dir() and (p / "suite.yaml").is_file()):
        return p
    return None


def with_baseline(suite, variant: str, *, export: bool):
    """The suite compared with ``variant``; an export must match the committed suite file, so
    that ``opdf report`` of the exported folder prints the same tables."""
    if export:
        raise OpdfError(
            "--baseline changes the comparison that is printed; an export writes the suite's own "
            f"(baseline {suite.baseline!r}): drop one of --baseline and --export"
        )
    if variant not in suite.variants:
        raise OpdfError(
            f"--baseline {variant!r} is not a variant of suite {suite.name!r}; its variants: "
            f"{', '.join(suite.variants)}"
        )
    return dataclasses.replace(suite, baseline=variant)


def run_suite(args, path) -> int:
    # here, not at the top: a suite report reaches opdf.run (and so torch), which `opdf --help`
    # must not import
    from opdf.report.suite import build_report, export, export_dir, open_suite

    suite, out = open_suite(path, args.out)
    if args.baseline is not None:
        suite = with_baseline(suite, args.baseline, export=bool(args.export))
    report = build_report(suite, out)
    hint = report.tensorboard_hint()
    if args.format == "csv":
        print(report.csv_files()["groups.csv"], end="")
        if hint:
            print(hint, file=sys.stderr)  # stdout stays one CSV table
    else:
        print(report.markdown())
        if hint:
            print(f"\n{hint}")
    if args.export:
        dest = export(report, export_dir(args.export, suite))
        print(f"exported {len(report.results)} cells, tables and plots to {dest}")
    return 0


def run(args) -> int:
    suite_path = _suite_path(args.paths)
    if suite_path is not None:
        return run_suite(args, suite_path)
    if args.export or args.out or args.baseline:
        raise OpdfError(
            "--export, --out and --baseline apply to a suite (a suite file or suite folder)"
        )
    rows = load_rows(args.paths)
    if args.group:
        rows = group_rows(rows)
    if args.sort:
        if args.sort not in rows[0]:
            raise OpdfError(f"--sort {args.sort!r}: valid columns: {', '.join(rows[0])}")
        rows.sort(key=lambda r: (r[args.sort] is None, r[args.sort]))
    print(format_table(rows, args.format))
    return 0
