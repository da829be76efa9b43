"""``opdf report PATH ...``: a table of run summaries."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "report",
        help="print a table of finished runs (their summary.json)",
        description=(
            "Collect summary.json files (run folders, files, or folders searched recursively) "
            "and print one row per run: method, variant (base, +SVD, +MPO(L), +OPDF(L) = MPO with "
            "the alignment loss), seed, dev and test of the task's main metric (percent), train "
            "and inference parameters, seconds per step and wall time."
        ),
        epilog="examples:\n  opdf report runs/\n  opdf report runs/demo --group --format csv",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("paths", nargs="+", help="run folders, summary.json files, or parent folders")
    p.add_argument("--format", choices=("markdown", "csv"), default="markdown")
    p.add_argument("--group", action="store_true",
                   help="one row per (method, variant): mean over seeds, test ± std")  # fmt: skip
    p.add_argument("--sort", default=None, help="sort by a column: run, method, variant, test, ...")
    p.set_defaults(run=run)


def run(args) -> int:
    from opdf.errors import OpdfError
    from opdf.report import format_table, group_rows, load_rows

    rows = load_rows(args.paths)
    if args.group:
        rows = group_rows(rows)
    if args.sort:
        if args.sort not in rows[0]:
            raise OpdfError(f"--sort {args.sort!r}: valid columns: {', '.join(rows[0])}")
        rows.sort(key=lambda r: (r[args.sort] is None, r[args.sort]))
    print(format_table(rows, args.format))
    return 0
