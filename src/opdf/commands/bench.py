"""``opdf bench SUITE.yaml``: run the missing cells of a suite (a grid of distill runs)."""

from __future__ import annotations

import argparse

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
    import fnmatch
    import shlex
    from pathlib import Path

    from opdf.bench import run as bench
    from opdf.bench.suite import BLOCKED, DONE, NEW, RESUME, REUSED, TINY_HEADER, load_suite
    from opdf.errors import OpdfError

    if args.jobs < 1:
        raise OpdfError(f"--jobs must be >= 1, got {args.jobs}")
    suite = load_suite(args.suite)
    cells = suite.cells(tiny=args.tiny)
    if args.only:
        cells = [c for c in cells if any(fnmatch.fnmatchcase(c.id, pat) for pat in args.only)]
        if not cells:
            raise OpdfError(f"--only {' '.join(args.only)}: no cell of {suite.name} matches")
    out = Path(args.out) if args.out else suite.default_out(args.tiny)
    threads = None if suite.sets_threads(args.tiny) else max(1, bench.cores() // args.jobs)
    state = bench.read_state(out)
    planned = bench.plan(suite, cells, out, threads=threads,
                   previous_running=state.get("running", []))  # fmt: skip
    kinds = (DONE, REUSED, RESUME, NEW, BLOCKED, bench.STALE, bench.RUNNING)
    counts = {s: sum(p.status == s for p in planned) for s in kinds}
    thread_note = (f"threads {threads} per cell (cores // jobs)" if threads is not None
                   else "threads as the suite sets them")  # fmt: skip
    header = f"suite {suite.name}: {len(planned)} cells in {out}; jobs {args.jobs}, {thread_note}"
    tally = (f"done {counts[DONE]}, reused {counts[REUSED]}, to resume {counts[RESUME]}, "
             f"to run {counts[NEW]}, blocked {counts[BLOCKED]}, "
             f"stale {counts[bench.STALE]}, running elsewhere {counts[bench.RUNNING]}")  # fmt: skip
    if args.dry_run:
        _say(header)
        width = max(len(p.cell.id) for p in planned)
        _say(f"{'#':>4}  {'cell':<{width}}  {'status':<8} {'dev':>6} {'test':>6}  note")
        for i, p in enumerate(planned, 1):
            dev = f"{100 * p.dev:.2f}" if p.dev is not None else "-"
            test = f"{100 * p.test:.2f}" if p.test is not None else "-"
            note = ""
            if p.status == BLOCKED:
                note = f"config {p.cell.config} does not exist (yet)"
            elif p.status == bench.STALE:
                note = f"config changed since it ran: {', '.join(p.stale_keys[:4])}"
            elif p.status == REUSED:
                note = f"from {p.reuse_from}"
            elif p.status == bench.RUNNING:
                h = p.holder or {}
                note = (
                    f"a live run holds it (pid {h.get('pid', '?')}, since {h.get('started', '?')})"
                )
            if p.active_ago is not None:
                note = (note + "; " if note else "") + f"active {p.active_ago:.0f} s ago"
            _say(f"{i:>4}  {p.cell.id:<{width}}  {p.status:<8} {dev:>6} {test:>6}  {note}")
        _say(tally)
        pending = [p for p in planned if p.pending]
        if pending:
            cmd = bench.cell_command(pending[0])
            _say("next: " + shlex.join(["python", *cmd[1:]]))
        return 0

    active = [p for p in planned if p.pending and p.active_ago is not None]
    if active and not args.force:
        raise OpdfError(
            f"{len(active)} cell(s) were modified in the last 5 minutes by something other than "
            f"opdf bench (e.g. {active[0].cell.id}, {active[0].active_ago:.0f} s ago): another "
            "process may be running them. Wait, or pass --force"
        )
    stale = [p for p in planned if p.status == bench.STALE]
    if stale:
        if args.rerun_stale:
            for p in stale:
                for link in (p.folder, p.log):  # a reused cell: rerun here, not in the other suite
                    if link.is_symlink():
                        link.unlink()
                p.status = NEW
        else:
            _say(f"warning: {len(stale)} finished cell(s) ran with another config "
                 f"({stale[0].cell.id}: {', '.join(stale[0].stale_keys[:4])}); they are kept "
                 "and counted as done. --rerun-stale reruns them")  # fmt: skip
    blocked = [p for p in planned if p.status == BLOCKED]
    if blocked:
        missing = sorted({p.cell.config for p in blocked})
        _say(f"note: {len(blocked)} cell(s) blocked, config file(s) missing: {', '.join(missing)}")
    _say(header)
    _say(tally)
    pending = [p for p in planned if p.pending]
    finished = sum(p.status in (DONE, REUSED, bench.STALE) for p in planned)
    elsewhere = [p for p in planned if p.status == bench.RUNNING]
    if elsewhere:
        _say(f"note: {len(elsewhere)} cell(s) are being run by another process and are left "
             f"alone (e.g. {elsewhere[0].cell.id}); rerun later to count them")  # fmt: skip
    runnable = len(planned) - len(blocked)
    with bench.suite_lock(out):
        copy = out / "suite.yaml"
        header = TINY_HEADER if args.tiny else "# copied by opdf bench from "
        copy.write_text(f"{header}{args.suite}\n" + Path(args.suite).read_text())
        bench.link_reused(planned, out)
        if pending and args.jobs > 1:
            bench.prepare_teachers(pending, out, _say)
        try:
            results = bench.run_cells(pending, out, jobs=args.jobs, total=runnable,
                                      done_before=finished, say=_say,
                                      keep_checkpoints=suite.keep_checkpoints)  # fmt: skip
        except KeyboardInterrupt:
            _say(f"interrupted; rerun `opdf bench {args.suite}` to resume")
            return 130
    failed = sorted(k for k, v in results.items() if v != 0)
    _say(f"suite {suite.name}: {finished + len(results) - len(failed)}/{runnable} cells done"
         + (f"; {len(failed)} FAILED: {', '.join(failed)}" if failed else "")
         + (f"; {len(blocked)} blocked" if blocked else "")
         + (f"; {len(elsewhere)} running elsewhere" if elsewhere else ""))  # fmt: skip
    return 1 if failed else 0
