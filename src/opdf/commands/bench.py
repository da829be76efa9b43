"""``opdf bench SUITE.yaml``: run the missing cells of a suite (a grid of distill runs)."""

from __future__ import annotations

import argparse
import fnmatch
from pathlib import Path

from opdf.bench.restore import restore_cells
from opdf.bench.suite import export_dir, load_suite
from opdf.errors import OpdfError

HELP = """\
Run a suite: a grid of `opdf distill` runs over one base config (variants x any config keys x
seeds), one process per cell, N at a time. Only missing cells run: a cell is done when
<out>/<cell>/summary.json exists, an interrupted cell resumes from its last checkpoint, so the
suite can be stopped (Ctrl-C, kill) and rerun at any time. A failed cell is reported and the
others go on; the exit code is 1 if any failed.

Cell folders: <out>/<variant>__<key>=<value>__..., e.g. runs/suites/rt-polarity-kd/
opdf__lr=5e-5__seed=3, each with config.yaml, metrics.jsonl, summary.json, and a <cell>.log
beside it. The suite file format is described in `opdf.bench.suite` and the README (Suites)."""

EPILOG = """\
examples:
  opdf bench benchmarks/suites/rt-polarity-kd.yaml --dry-run     # which cells are done
  opdf bench benchmarks/suites/rt-polarity-kd.yaml --jobs 2
  opdf bench benchmarks/suites/rt-polarity-kd.yaml --only 'opdf__*seed=1'
  opdf bench benchmarks/suites/gpu-mpnet.yaml --tiny             # seconds on a CPU
  # a suite that outlives its machine: export as cells land (commit it), restore elsewhere
  opdf bench benchmarks/suites/imdb-short-init.yaml --export benchmarks/results
  opdf bench benchmarks/suites/imdb-short-init.yaml --restore benchmarks/results
  opdf report benchmarks/suites/rt-polarity-kd.yaml              # tables of the results"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "bench",
        help="run the missing cells of a suite (a grid of distill runs over seeds, lrs, ...)",
        description=HELP,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("suite", help="suite YAML file (see benchmarks/suites/)")
    p.add_argument("--jobs", type=int, default=1,
                   help="cells at once (default 1); each gets cores // jobs threads unless the "
                        "suite sets threads")  # fmt: skip
    p.add_argument("--dry-run", action="store_true",
                   help="list the cells, their status (done, resume, new, blocked, stale, "
                        "reused, running) and one command line; run nothing")  # fmt: skip
    p.add_argument("--out", help="results folder (default runs/suites/<name>, or <name>-tiny)")
    p.add_argument(
        "--tiny",
        action="store_true",
        help="apply the suite's 'tiny' section: a seconds-long CPU check of the suite",
    )
    p.add_argument("--only", nargs="+", metavar="PATTERN",
                   help="only cells whose id matches one of these shell patterns")  # fmt: skip
    p.add_argument(
        "--restore",
        metavar="EXPORT",
        help="first copy the finished cells of an `opdf report --export` folder (e.g. "
        "benchmarks/results, or benchmarks/results/<name>) into the results folder, so that a "
        "suite resumes on a fresh machine from its committed export; cells already here are kept",
    )
    p.add_argument(
        "--export",
        metavar="DIR",
        help="after each finished cell, export the suite's finished cells and tables as "
        "`opdf report --export DIR` does (DIR/<name>), so that a long suite's progress can be "
        "committed as it lands and resumed elsewhere with --restore",
    )
    p.add_argument(
        "--rerun-stale",
        action="store_true",
        help="rerun (overwrite) finished cells whose config changed since they ran",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="run cells even if something else touched them in the last 5 minutes",
    )
    p.set_defaults(run=run)


def _say(text: str) -> None:
    print(text, flush=True)


def run(args) -> int:
    # The verb's work loads when it runs: `opdf --help` builds every verb's parser (no torch).
    from opdf.bench import launch
    from opdf.bench import run as bench

    if args.jobs < 1:
        raise OpdfError(f"--jobs must be >= 1, got {args.jobs}")
    if args.tiny and (args.restore or args.export):
        raise OpdfError(
            "--tiny runs a seconds-long check whose cells have the suite's ids: it neither "
            "restores nor exports (an export of it would overwrite the suite's real results)"
        )
    suite = load_suite(args.suite)
    cells = suite.cells(tiny=args.tiny)
    if args.only:
        cells = [c for c in cells if any(fnmatch.fnmatchcase(c.id, pat) for pat in args.only)]
        if not cells:
            raise OpdfError(f"--only {' '.join(args.only)}: no cell of {suite.name} matches")
    out = Path(args.out) if args.out else suite.default_out(args.tiny)
    exporter = _exporter(suite, out, args.export) if args.export else None
    if args.restore:
        source = export_dir(args.restore, suite)
        if args.dry_run:
            restored = restore_cells(cells, source, out, dry_run=True)
        else:
            with bench.suite_lock(out):  # never under a bench running this suite
                restored = restore_cells(cells, source, out)
        _say(restored.line(source, dry_run=args.dry_run))
    threads = None if suite.sets_threads(args.tiny) else max(1, bench.cores() // args.jobs)
    planned = bench.plan(suite, cells, out, threads=threads,
                         previous_running=bench.read_state(out).get("running", []))  # fmt: skip
    thread_note = (f"threads {threads} per cell (cores // jobs)" if threads is not None
                   else "threads as the suite sets them")  # fmt: skip
    header = f"suite {suite.name}: {len(planned)} cells in {out}; jobs {args.jobs}, {thread_note}"
    mix = launch.thread_mix_warning(planned)
    if args.dry_run:
        for line in [header, *launch.plan_lines(planned), *filter(None, [mix])]:
            _say(line)
        return 0
    if mix:
        _say(mix)
    launch.refuse_active(planned, args.force)
    launch.settle_stale(planned, args.rerun_stale, _say)
    try:
        outcome = launch.run_planned(suite, args.suite, planned, out, jobs=args.jobs,
                                     tiny=args.tiny, header=header, say=_say,
                                     on_done=exporter)  # fmt: skip
    except KeyboardInterrupt:
        _say(f"interrupted; rerun `opdf bench {args.suite}` to resume")
        return 130
    if exporter is not None and not outcome.results:
        exporter(None)  # nothing ran (every cell done or restored): the export still catches up
    _say(outcome.summary(suite.name))
    return 1 if outcome.failed else 0


def _exporter(suite, out: Path, base: str):
    """``--export DIR``: a function that copies the suite's finished cells into DIR/<name> and
    writes the tables there from every cell the export holds (it may hold cells this folder
    lacks: restored with --only, or finished elsewhere). Run after each finished cell, where a
    failure is said and the suite goes on (its cells are safe in ``out``)."""
    from opdf.report.suite import build_report, export

    dest = export_dir(base, suite)
    if dest.resolve() == out.resolve():
        raise OpdfError(f"--export {base}: that is the results folder itself ({out})")

    def run(_cell=None) -> None:
        export(build_report(suite, out), dest)  # the cells
        report = build_report(suite, dest)  # the tables, over everything exported
        export(report, dest)
        _say(f"exported {len(report.results)} finished cells to {dest}")

    return run
