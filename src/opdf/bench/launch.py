"""What ``opdf bench`` does around running a suite's cells: the plan as a table (``--dry-run``),
the checks before anything runs (cells something else touched, cells whose config changed),
and the run itself under the suite lock with the suite file copied beside its results.

The command only parses its arguments and prints; these rules live here so that they can be
read, and tested, without the command line.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from opdf.bench.run import (
    RUNNING,
    STALE,
    Planned,
    cell_command,
    link_reused,
    prepare_teachers,
    run_cells,
    suite_lock,
    threads_of,
)
from opdf.bench.suite import (
    BLOCKED,
    COPY_HEADER,
    DONE,
    NEW,
    RESUME,
    REUSED,
    TINY_HEADER,
    Suite,
)
from opdf.errors import OpdfError
from opdf.storage import atomic_write_text

Say = Callable[[str], None]

#: the statuses in the order the tally names them
KINDS = (DONE, REUSED, RESUME, NEW, BLOCKED, STALE, RUNNING)


def tally(planned: Sequence[Planned]) -> str:
    """One line: how many cells are in each status."""
    n = {s: sum(p.status == s for p in planned) for s in KINDS}
    return (f"done {n[DONE]}, reused {n[REUSED]}, to resume {n[RESUME]}, to run {n[NEW]}, "
            f"blocked {n[BLOCKED]}, stale {n[STALE]}, running elsewhere {n[RUNNING]}")  # fmt: skip


def _note(p: Planned) -> str:
    """Why a cell has its status (the dry run's last column)."""
    note = ""
    if p.status == BLOCKED:
        note = f"config {p.cell.config} does not exist (yet)"
    elif p.status == STALE:
        note = f"config changed since it ran: {', '.join(p.stale_keys[:4])}"
    elif p.status == REUSED:
        note = f"from {p.reuse_from}"
    elif p.status == RUNNING:
        h = p.holder or {}
        note = f"a live run holds it (pid {h.get('pid', '?')}, since {h.get('started', '?')})"
    if p.active_ago is not None:
        note = (note + "; " if note else "") + f"active {p.active_ago:.0f} s ago"
    return note


def plan_lines(planned: Sequence[Planned]) -> list[str]:
    """``--dry-run``: one line per cell (status, scores, note), the tally, and the command line
    of the next pending cell."""
    width = max(len(p.cell.id) for p in planned)
    lines = [f"{'#':>4}  {'cell':<{width}}  {'status':<8} {'dev':>6} {'test':>6}  note"]
    for i, p in enumerate(planned, 1):
        dev = f"{100 * p.dev:.2f}" if p.dev is not None else "-"
        test = f"{100 * p.test:.2f}" if p.test is not None else "-"
        lines.append(f"{i:>4}  {p.cell.id:<{width}}  {p.status:<8} {dev:>6} {test:>6}  {_note(p)}")
    lines.append(tally(planned))
    pending = [p for p in planned if p.pending]
    if pending:
        words = ["python", *cell_command(pending[0])[1:]]
        lines.append("next: " + " ".join(map(shell_word, words)))
    return lines


def shell_word(word: str) -> str:
    """``word`` quoted for a POSIX shell as a person would: ``"lr='2.5e-5'"``, not
    ``'lr='"'"'2.5e-5'"'"''`` (shlex's form, also correct, for words double quotes cannot hold)."""
    quoted = shlex.quote(word)
    if quoted != word and "'" in word and not any(c in word for c in '"$`\\!'):
        return f'"{word}"'
    return quoted


def refuse_active(planned: Sequence[Planned], force: bool) -> None:
    """Stop before running cells that something other than ``opdf bench`` touched in the last
    minutes (another process may be running them), unless ``force``."""
    active = [p for p in planned if p.pending and p.active_ago is not None]
    if active and not force:
        raise OpdfError(
            f"{len(active)} cell(s) were modified in the last 5 minutes by something other than "
            f"opdf bench (e.g. {active[0].cell.id}, {active[0].active_ago:.0f} s ago): another "
            "process may be running them. Wait, or pass --force"
        )


def settle_stale(planned: Sequence[Planned], rerun: bool, say: Say) -> None:
    """Finished cells whose config changed since they ran: kept and counted as done (a
    warning), or with ``rerun`` run again here (a reused cell's links are removed, so that the
    other suite's cell is never overwritten)."""
    stale = [p for p in planned if p.status == STALE]
    if not stale:
        return
    if not rerun:
        say(f"warning: {len(stale)} finished cell(s) ran with another config "
            f"({stale[0].cell.id}: {', '.join(stale[0].stale_keys[:4])}); they are kept "
            "and counted as done. --rerun-stale reruns them")  # fmt: skip
        return
    for p in stale:
        for link in (p.folder, p.log):
            if link.is_symlink():
                link.unlink()
        p.status = NEW


def thread_mix_warning(planned: Sequence[Planned]) -> str | None:
    """A warning when the cells still to start would run with another thread count than the
    finished ones: kernels split their sums by thread, so the same cell differs in the last bits
    across counts, and a suite run partly at ``--jobs 1`` and partly at ``--jobs 2`` (each cell
    gets ``cores // jobs`` unless the suite sets ``threads``) mixes them silently. A resumed
    cell keeps its own count and is not counted here."""
    ran = sorted({p.ran_threads for p in planned
                  if p.status in (DONE, REUSED, STALE) and p.ran_threads is not None})  # fmt: skip
    new = sorted({t for p in planned if p.status == NEW
                  for t in [threads_of(p.overrides)] if t is not None})  # fmt: skip
    if not ran or not new or len(set(ran) | set(new)) == 1:
        return None
    return (
        f"warning: finished cells ran with {' or '.join(map(str, ran))} thread(s), the cells "
        f"to start will run with {' or '.join(map(str, new))}; results then differ in the "
        "last bits by thread count. "
        f"Run with the --jobs that gives {ran[0]} (cores // jobs), or set `threads: "
        f"{ran[0]}` in the suite"
    )


def copy_suite_file(suite_file: str | Path, out: Path, *, tiny: bool) -> None:
    """``out/suite.yaml``: the suite file that produced the results, with a first line naming it
    (``opdf report`` of the folder reads it; a tiny grid's copy says so)."""
    header = TINY_HEADER if tiny else COPY_HEADER
    copy = out / "suite.yaml"
    if copy.is_symlink() or (copy.exists() and not _is_our_copy(copy)):
        raise OpdfError(
            f"{copy} is not a copy opdf bench wrote (its first line is not {COPY_HEADER!r}...): "
            "opdf never replaces a file it did not write; move it, or run the suite into "
            "another folder"
        )
    atomic_write_text(copy, f"{header}{suite_file}\n" + Path(suite_file).read_text())


def _is_our_copy(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            first = f.readline()
    except OSError:
        return False
    return first.startswith((COPY_HEADER, TINY_HEADER))


@dataclass
class Outcome:
    """What a run of the suite's pending cells came to."""

    results: dict[str, int]  # cell id -> exit code, of the cells run now
    finished_before: int
    runnable: int  # every cell but the blocked ones
    blocked: int
    elsewhere: int  # cells another live process is running

    @property
    def failed(self) -> list[str]:
        return sorted(k for k, v in self.results.items() if v != 0)

    def summary(self, name: str) -> str:
        failed = self.failed
        done = self.finished_before + len(self.results) - len(failed)
        return (f"suite {name}: {done}/{self.runnable} cells done"
                + (f"; {len(failed)} FAILED: {', '.join(failed)}" if failed else "")
                + (f"; {self.blocked} blocked" if self.blocked else "")
                + (f"; {self.elsewhere} running elsewhere" if self.elsewhere else ""))  # fmt: skip


def run_planned(
    suite: Suite,
    suite_file: str | Path,
    planned: Sequence[Planned],
    out: Path,
    *,
    jobs: int,
    tiny: bool,
    header: str,
    say: Say,
    on_done: Callable[[Planned], None] | None = None,
) -> Outcome:
    """Run the pending cells under the suite lock, after copying the suite file and linking
    reused cells (and, with several jobs, fine-tuning each uncached teacher once first);
    ``on_done`` after each finished cell. KeyboardInterrupt propagates (the running cells were
    stopped; a rerun resumes them)."""
    blocked = [p for p in planned if p.status == BLOCKED]
    if blocked:
        missing = sorted({p.cell.config for p in blocked})
        say(f"note: {len(blocked)} cell(s) blocked, config file(s) missing: {', '.join(missing)}")
    say(header)
    say(tally(planned))
    pending = [p for p in planned if p.pending]
    finished = sum(p.status in (DONE, REUSED, STALE) for p in planned)
    elsewhere = [p for p in planned if p.status == RUNNING]
    if elsewhere:
        say(f"note: {len(elsewhere)} cell(s) are being run by another process and are left "
            f"alone (e.g. {elsewhere[0].cell.id}); rerun later to count them")  # fmt: skip
    runnable = len(planned) - len(blocked)
    with suite_lock(out):
        copy_suite_file(suite_file, out, tiny=tiny)
        link_reused(planned, out)
        if pending and jobs > 1:
            prepare_teachers(pending, out, say)
        results = run_cells(pending, out, jobs=jobs, total=runnable, done_before=finished,
                            say=say, keep_checkpoints=suite.keep_checkpoints,
                            keep_students=suite.keep_students, on_done=on_done)  # fmt: skip
    return Outcome(results, finished, runnable, len(blocked), len(elsewhere))
