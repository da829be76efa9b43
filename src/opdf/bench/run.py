"""Running a suite: which cells are left, teachers first, then N cell processes at a time.

Every cell is its own ``opdf distill`` process (one failure cannot take the others down, and a
killed suite leaves each cell as resumable as a killed ``opdf distill``). Stopping: Ctrl-C or
SIGTERM stop the running cells (SIGINT, then SIGTERM after a grace period) and return 130; the
next ``opdf bench`` resumes them from their last checkpoint. Cells are children that die with
the suite process on Linux (``PR_SET_PDEATHSIG``), so a ``kill -9`` leaves no orphan training.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

import opdf
from opdf.bench.suite import (
    BLOCKED,
    DONE,
    NEW,
    RESUME,
    REUSED,
    Cell,
    Suite,
    cell_status,
    last_activity,
)
from opdf.choices import NEUTRAL_KEYS
from opdf.errors import ConfigError, OpdfError
from opdf.run import owner
from opdf.run.config import RunConfig, as_ran, load_config
from opdf.run.lock import holder
from opdf.run.teacher import FINETUNE_MARK, teacher_cache_dir
from opdf.storage import atomic_write_json

STALE = "stale"
RUNNING = "running"  # another live process holds the cell folder's run lock (opdf.run.lock)
STATE_FILE = ".bench-state.json"
LOCK_FILE = ".bench.lock"
ACTIVE_SECONDS = 300  # a cell touched this recently by something else may still be running
# (runs log every log_every steps: a minute or more apart on a busy machine)
# differences that do not change what a cell measures (a top-level key covers its subkeys)
IGNORED_KEYS = ("output_dir", "threads", *NEUTRAL_KEYS)


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@dataclass
class Planned:
    """A cell with its status and the overrides it runs with (``threads`` settled)."""

    cell: Cell
    status: str
    overrides: list[str]
    folder: Path
    log: Path
    reuse_from: Path | None = None
    stale_keys: list[str] = field(default_factory=list)
    active_ago: float | None = None
    holder: dict | None = None
    test: float | None = None
    dev: float | None = None
    ran_threads: int | None = None  # a finished cell's thread count, from its summary

    @property
    def pending(self) -> bool:
        return self.status in (NEW, RESUME)


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        out.update(_flatten(v, key) if isinstance(v, dict) and v else {key: v})
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, str) and isinstance(b, str) and a != b:
        pa, pb = Path(a), Path(b)  # paths written relative to another working directory
        return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


def config_diff(saved: dict, expected: dict) -> list[str]:
    """Dotted keys whose values differ between a cell's saved ``config.yaml`` and the config it
    would run with now, each read as the run it describes (:func:`opdf.run.config.as_ran`);
    keys only one side has (added by a later opdf) are not differences, except the student's
    ``source`` and ``head``: a config from before them ran the legacy start, so a method whose
    default start changed (DBKD) has stale cells."""
    a, b = ran_keys(saved), ran_keys(expected)
    return sorted(k for k in set(a) & set(b) if not _same(a[k], b[k]))


def same_run(saved: dict, expected: dict) -> bool:
    """Whether a finished cell's saved config ran what ``expected`` would run: every key equal,
    a key one side lacks counted at its default (a later opdf's new key at its default changes
    nothing; at another value it does), ignoring :data:`IGNORED_KEYS`."""
    return _same_keys(ran_keys(saved), ran_keys(expected))


def ran_keys(config: dict) -> dict[str, Any]:
    """A config dict as the run it describes, flat (dotted keys), without :data:`IGNORED_KEYS`."""
    flat = _flatten(as_ran(config))
    return {k: v for k, v in flat.items()
            if k not in IGNORED_KEYS and k.split(".")[0] not in IGNORED_KEYS}  # fmt: skip


def _same_keys(a: dict[str, Any], b: dict[str, Any]) -> bool:
    d = _flatten(RunConfig().to_dict())
    return all(_same(a.get(k, d.get(k)), b.get(k, d.get(k))) for k in set(a) | set(b))


def _finished_cells(out: Path, names: Sequence[str]) -> list[tuple[Path, dict]]:
    """``(folder, saved config)`` of every finished cell of the sibling suites ``names``."""
    found = []
    for name in names:
        root = out.parent / name
        if not root.is_dir():
            continue
        for folder in sorted(root.iterdir()):
            cfg = _saved_config(folder) if (folder / "summary.json").is_file() else None
            if cfg is not None:
                found.append((folder, cfg))
    return found


def _saved_config(folder: Path) -> dict | None:
    f = folder / "config.yaml"
    if not f.is_file():
        return None
    try:
        data = yaml.safe_load(f.read_text())
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) else None


def _summary(folder: Path) -> dict | None:
    try:
        data = json.loads((folder / "summary.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def resolved_config(cell: Cell, overrides: Sequence[str], folder: Path):
    """The :class:`RunConfig` the cell runs with (validates it; ConfigError names the cell)."""
    try:
        return load_config(cell.config, [*overrides, f"output_dir={folder}"])
    except ConfigError as e:
        raise ConfigError(f"cell {cell.id}: {e}") from None


def plan(
    suite: Suite,
    cells: Sequence[Cell],
    out: Path,
    *,
    threads: int | None,
    validate: bool = True,
    previous_running: Sequence[str] = (),
) -> list[Planned]:
    """Status of every cell. ``validate`` loads each runnable cell's config (catching bad
    overrides before any work) and compares finished cells with what they would run now
    (``stale``: the suite or its base config changed since)."""
    planned = []
    others: list[tuple[Path, dict]] | None = None  # the reuse suites' cells as ran_keys
    for cell in cells:
        p = _planned(suite, cell, out, threads)
        if validate and p.status != BLOCKED:
            expected = resolved_config(cell, p.overrides, p.folder).to_dict()
            _compare_saved(p, expected)
            if p.status == NEW and suite.reuse:
                # another id, the same run (e.g. student.init=bottom vs student.layers=[0,1,2])
                if others is None:  # read on first need, each normalized once
                    others = [(f, ran_keys(c)) for f, c in _finished_cells(out, suite.reuse)]
                mine = ran_keys(expected)
                match = next((f for f, c in others if _same_keys(c, mine)), None)
                if match is not None:
                    p.status, p.reuse_from = REUSED, match
        _check_liveness(p, out, previous_running)
        if p.status in (DONE, REUSED):
            s = _summary(p.reuse_from or p.folder) or {}
            main = s.get("main_metric", "accuracy")
            p.test = (s.get("test") or {}).get(main)
            p.dev = (s.get("dev") or {}).get(main)
            t = s.get("threads")
            p.ran_threads = t if isinstance(t, int) and not isinstance(t, bool) else None
        planned.append(p)
    return planned


def _planned(suite: Suite, cell: Cell, out: Path, threads: int | None) -> Planned:
    """The cell's status on disk, its overrides with ``threads`` settled, and a finished cell of
    the same id in a ``reuse`` suite for a new one."""
    folder, log = cell.folder(out), cell.log(out)
    status = cell_status(cell, out)
    overrides = list(cell.overrides)
    saved = _saved_config(folder)
    if threads is not None:
        # a resumed run must keep the thread count it started with (part of its config)
        t = saved.get("threads") if status == RESUME and saved else None
        overrides.append(f"threads={t if isinstance(t, int) else threads}")
    p = Planned(cell, status, overrides, folder, log)
    if status == NEW:
        for name in suite.reuse:
            other = out.parent / name / cell.id
            if (other / "summary.json").is_file():
                p.status, p.reuse_from = REUSED, other
                break
    return p


def _compare_saved(p: Planned, expected: dict) -> None:
    """A finished (or reused) cell whose saved config differs from what it would run now is
    stale (a reused one: another setting, run here instead)."""
    source = p.reuse_from if p.status == REUSED else p.folder
    old = _saved_config(source) if p.status in (DONE, RESUME, REUSED) else None
    if old is None:
        return
    diff = config_diff(old, expected)
    if diff and p.status == REUSED:
        p.status, p.reuse_from = NEW, None
    elif diff:
        p.status, p.stale_keys = STALE, diff


def _check_liveness(p: Planned, out: Path, previous_running: Sequence[str]) -> None:
    """A pending cell that a live run holds is left alone (``running``); one that something else
    touched recently gets ``active_ago`` (``opdf bench`` asks for --force)."""
    if p.status in (NEW, RESUME):
        p.holder = holder(p.folder) if p.folder.is_dir() else None
        if p.holder is not None:
            p.status = RUNNING  # left alone: a live run owns the folder
    if p.status in (NEW, RESUME) and p.cell.id not in previous_running:
        t = last_activity(p.cell, out)
        ago = time.time() - t if t is not None else None
        if ago is not None and ago < ACTIVE_SECONDS:
            p.active_ago = max(0.0, ago)


def cell_command(p: Planned) -> list[str]:
    """The ``opdf distill`` command line of a cell."""
    flag = "--resume" if p.status == RESUME else "--overwrite"
    return [sys.executable, "-m", "opdf", "distill", p.cell.config, *p.overrides,
            f"output_dir={p.folder}", flag, "--no-progress"]  # fmt: skip


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def child_env(threads: int | None) -> dict[str, str]:
    """The cell's environment: this opdf first on the path, BLAS threads as the cell's."""
    env = dict(os.environ)
    src = str(Path(opdf.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(threads)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def threads_of(overrides: Sequence[str]) -> int | None:
    """The ``threads=N`` a cell's overrides set (the last one wins); None where none does."""
    for o in reversed(overrides):
        if o.startswith("threads="):
            try:
                return int(o.partition("=")[2])
            except ValueError:
                return None
    return None


#: what a cell's last log line says when the disk (or the user's quota) is full
DISK_FULL = re.compile(r"No space left on device|Disk quota exceeded", re.IGNORECASE)


def _last_line(log: Path) -> str:
    try:
        lines = [x for x in log.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


class _Stop(Exception):
    pass


@contextlib.contextmanager
def _sigterm_as_stop():
    def handler(signum, frame):
        raise _Stop

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextlib.contextmanager
def suite_lock(out: Path):
    """One ``opdf bench`` per suite folder at a time."""
    import fcntl

    out.mkdir(parents=True, exist_ok=True)
    fh = open(out / LOCK_FILE, "a+")  # noqa: SIM115 - held for the whole run
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise OpdfError(
            f"another opdf bench is running the suite in {out}; wait for it or stop it"
        ) from None
    try:
        yield
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


def read_state(out: Path) -> dict:
    try:
        data = json.loads((out / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_state(out: Path, running: Sequence[str]) -> None:
    atomic_write_json(out / STATE_FILE, {"pid": os.getpid(), "running": sorted(running)})


def prepare_teachers(planned: Sequence[Planned], out: Path, say: Callable[[str], None]) -> None:
    """Fine-tune each distinct uncached teacher once, before cells run in parallel (otherwise
    every cell of a fresh suite would fine-tune the same teacher at the same time)."""
    todo: dict[Path, Planned] = {}
    for p in planned:
        cfg = resolved_config(p.cell, p.overrides, p.folder)
        if cfg.teacher.finetune is None:
            continue
        d = teacher_cache_dir(cfg)
        if not (d / FINETUNE_MARK).is_file():
            todo.setdefault(d, p)
    for i, (d, p) in enumerate(todo.items(), 1):
        log = out / f"finetune-{d.name}.log"
        say(f"fine-tuning teacher {i}/{len(todo)} ({d.name}) for {p.cell.id}; log: {log}")
        cmd = [sys.executable, "-m", "opdf", "finetune", p.cell.config, *p.overrides,
               "--no-progress"]  # fmt: skip
        with open(log, "w") as fh:
            code = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT,
                                   env=child_env(threads_of(p.overrides)))  # fmt: skip
        if code != 0:
            raise OpdfError(f"fine-tuning the teacher failed (exit {code}): {_last_line(log)}; "
                            f"log: {log}")  # fmt: skip


def link_reused(planned: Sequence[Planned], out: Path) -> None:
    """Finished identical cells of a ``reuse`` suite appear here as relative symlinks."""
    for p in planned:
        if p.status != REUSED or p.folder.exists() or p.folder.is_symlink():
            continue
        os.symlink(os.path.relpath(p.reuse_from, out), p.folder)
        other_log = p.reuse_from.parent / f"{p.reuse_from.name}.log"
        if other_log.exists() and not p.log.exists():
            os.symlink(os.path.relpath(other_log, out), p.log)


def run_cells(
    planned: Sequence[Planned],
    out: Path,
    *,
    jobs: int,
    total: int,
    done_before: int,
    say: Callable[[str], None] = print,
    command: Callable[[Planned], list[str]] = cell_command,
    grace_seconds: float = 30.0,
    keep_checkpoints: bool = False,
    keep_students: bool = True,
    on_done: Callable[[Planned], None] | None = None,
) -> dict[str, int]:
    """Run the pending cells, ``jobs`` at a time; returns ``{cell id: exit code}``. A failed
    cell is reported and the others go on, except on a full disk: then no new cell starts (each
    would fail the same way within a minute). A finished cell's ``checkpoints/`` is removed
    unless ``keep_checkpoints``, its merged ``student/`` when not ``keep_students``; then
    ``on_done(cell)`` (``opdf bench --export``). Ctrl-C / SIGTERM: stop, then
    KeyboardInterrupt."""
    queue = [p for p in planned if p.pending]
    pool = _Pool(out, total, done_before, say, command, queue, jobs)
    try:
        with _sigterm_as_stop():
            while queue or pool.running:
                while queue and len(pool.running) < jobs:
                    pool.start(queue.pop(0))
                time.sleep(0.2)
                for proc in [q for q in pool.running if q.poll() is not None]:
                    p, ok, last = pool.finish(proc, keep_checkpoints, keep_students)
                    if ok and on_done is not None:
                        _after(p, on_done, say)
                    if not ok and queue and DISK_FULL.search(last):
                        say(
                            f"the disk is full: {len(queue)} cell(s) not started. Free "
                            "space (finished cells keep no checkpoints unless "
                            "keep_checkpoints: true), then rerun: the failed cells resume"
                        )
                        queue.clear()
                    pool.write_state()
    except (KeyboardInterrupt, _Stop):
        pool.stop(grace_seconds)
        raise KeyboardInterrupt from None
    return pool.results


def _after(p: Planned, on_done: Callable[[Planned], None], say: Callable[[str], None]) -> None:
    """``on_done(p)``; whatever it raises is said and the suite goes on (its cells are safe
    on disk), except a stop (SIGTERM) that arrived during it."""
    try:
        on_done(p)
    except _Stop:
        raise
    except Exception as e:  # noqa: BLE001 - a callback's failure must not kill running cells
        say(f"after {p.cell.id}: {type(e).__name__}: {e}; the suite goes on")


class _Pool:
    """The cells running now (process, start time, open log), the exit codes so far, and the
    progress count ``[done/total]`` that every line says."""

    def __init__(self, out: Path, total: int, done: int, say: Callable[[str], None],
                 command: Callable[[Planned], list[str]], queue: list[Planned] | None = None,
                 jobs: int = 1) -> None:  # fmt: skip
        self.out, self.total, self.done, self.say, self.command = out, total, done, say, command
        self.running: dict[subprocess.Popen, tuple[Planned, float, Any]] = {}
        self.results: dict[str, int] = {}
        self.queue = queue if queue is not None else []  # not started yet: run_cells' own list
        self.jobs = jobs
        # label -> seconds of the cells run whole here; resumed cells' (shorter) in the second
        self.took: dict[str, list[float]] = {}
        self.took_resumed: dict[str, list[float]] = {}
        self.disk_checked = False  # after the first finished cell that keeps its student

    def write_state(self) -> None:
        _write_state(self.out, [q.cell.id for q, *_ in self.running.values()])

    def start(self, p: Planned) -> None:
        p.folder.parent.mkdir(parents=True, exist_ok=True)
        fh = open(p.log, "a" if p.status == RESUME else "w")  # noqa: SIM115 - closed on exit
        cmd = self.command(p)
        fh.write(f"# opdf bench: {' '.join(cmd)}\n")
        fh.flush()
        proc = subprocess.Popen(
            cmd, stdout=fh, stderr=subprocess.STDOUT, env=child_env(threads_of(p.overrides)),
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )  # fmt: skip
        self.running[proc] = (p, time.time(), fh)
        self.write_state()
        what = "resume" if p.status == RESUME else "start"
        self.say(f"[{self.done}/{self.total}] {what} {p.cell.id} (log: {p.log})")

    def finish(self, proc: subprocess.Popen, keep_checkpoints: bool,
               keep_students: bool = True) -> tuple[Planned, bool, str]:  # fmt: skip
        """Record an exited cell and say how it went: (cell, succeeded, last log line)."""
        p, t0, fh = self.running.pop(proc)
        fh.close()
        code = proc.returncode
        self.results[p.cell.id] = code
        secs = time.time() - t0
        if code == 0 and (p.folder / "summary.json").is_file():
            self.done += 1
            s = _summary(p.folder) or {}
            main = s.get("main_metric", "accuracy")
            dev = (s.get("dev") or {}).get(main)
            test = (s.get("test") or {}).get(main)
            score = (f" dev {100 * dev:.2f} test {100 * test:.2f}"
                     if dev is not None and test is not None else "")  # fmt: skip
            if p.status != RESUME:
                self.took.setdefault(p.cell.label, []).append(secs)
            else:
                self.took_resumed.setdefault(p.cell.label, []).append(whole_run_seconds(secs, s))
            now = time.time()
            left = time_left(self.took or self.took_resumed, [q.cell.label for q in self.queue],
                             [(q.cell.label, now - t) for q, t, _ in self.running.values()],
                             self.jobs)  # fmt: skip
            eta = f"; {format_duration(left)} left" if left else ""
            self.say(f"[{self.done}/{self.total}] done {p.cell.id}{score} ({secs:.0f} s{eta})")
            if not keep_checkpoints:
                _drop_owned(p.folder, "checkpoints")
            if not keep_students:
                _drop_owned(p.folder, "student")
            elif not self.disk_checked:
                self.check_disk(p.folder / "student")
            return p, True, ""
        self.results[p.cell.id] = code or 1
        last = _last_line(p.log)
        self.say(f"[{self.done}/{self.total}] FAILED {p.cell.id} (exit {code}, {secs:.0f} s): "
                 f"{last}; log: {p.log}")  # fmt: skip
        return p, False, last

    def check_disk(self, student: Path) -> None:
        """Once, after the first finished cell that keeps its student: will the rest fit?"""
        self.disk_checked = True
        if not student.is_dir():
            return
        left = len(self.queue) + len(self.running)
        line = disk_warning(_folder_bytes(student), left, shutil.disk_usage(self.out).free)
        if line:
            self.say(line)

    def stop(self, grace_seconds: float) -> None:
        """Ctrl-C to every running cell, then terminate / kill what outlives the grace; the
        state file keeps their ids (they were ours: a rerun may resume them at once)."""
        ids = [p.cell.id for p, *_ in self.running.values()]
        self.say(f"stopping {len(ids)} running cell(s): {', '.join(ids) or '-'}")
        for proc in self.running:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
        deadline = time.time() + grace_seconds
        for proc in self.running:
            try:
                proc.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for _p, _t, fh in self.running.values():
            fh.close()
        _write_state(self.out, ids)


def time_left(
    took: dict[str, list[float]],
    queued: Sequence[str],
    running: Sequence[tuple[str, float]],
    jobs: int,
) -> float | None:
    """Seconds until the run ends, estimated from the cells finished in it: each cell is
    expected to take the mean of its label's finished cells (variants differ: OPDF's steps cost
    more), else of all; a running cell what is left of that; the work shared over the jobs, but
    never less than the longest single cell still to finish. ``None`` before the first finish.
    A long CPU suite (hours) needs it to plan the next session (the caller passes the cells run
    whole, when there are any: resumed ones run shorter)."""
    every = [s for secs in took.values() for s in secs]
    if not every:
        return None
    overall = sum(every) / len(every)

    def expect(label: str) -> float:
        secs = took.get(label)
        return sum(secs) / len(secs) if secs else overall

    each = [expect(label) for label in queued]
    each += [max(0.0, expect(label) - elapsed) for label, elapsed in running]
    work = sum(each)
    if work <= 0:
        return None
    return max(work / max(1, min(jobs, len(each))), max(each))


def whole_run_seconds(secs: float, summary: dict) -> float:
    """A resumed cell's seconds scaled to its whole run by the steps it ran now (its summary's
    ``resumed_from_step`` of ``steps``): the time of the part alone would put the first ETA of
    a resumed suite hours short. The scale is capped at 4x (a resume near the end is mostly the
    start and the final evaluations, which do not scale)."""
    steps, start = summary.get("steps"), summary.get("resumed_from_step")
    if not isinstance(steps, int) or not isinstance(start, int) or not 0 <= start < steps:
        return secs
    return secs * min(4.0, steps / (steps - start))


def format_duration(seconds: float) -> str:
    """``~40 s``, ``~12 min``, ``~3.4 h``: the precision an estimate has."""
    if seconds < 90:
        return f"~{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"~{seconds / 60:.0f} min"
    return f"~{seconds / 3600:.1f} h"


def disk_warning(kept_bytes: int, cells_left: int, free_bytes: int) -> str | None:
    """A line when the merged students the cells left will keep need about the free disk or
    more: the suite would stop half way on a full disk (each cell's checkpoints need room too)."""
    need = kept_bytes * cells_left
    if cells_left <= 0 or kept_bytes <= 0 or need < 0.8 * free_bytes:
        return None
    return (f"warning: each finished cell keeps its merged student/ ({format_bytes(kept_bytes)}): "
            f"the {cells_left} cell(s) left need ~{format_bytes(need)}, and "
            f"{format_bytes(free_bytes)} is free. Set keep_students: false in the suite (no "
            "report needs the students), or free space before the disk fills")  # fmt: skip


def format_bytes(n: float) -> str:
    """``70 MB``, ``7.5 GB``: sizes as a disk warning needs them."""
    if n < 1e9:
        return f"{n / 1e6:.0f} MB"
    return f"{n / 1e9:.1f} GB"


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _drop_owned(folder: Path, under: str) -> None:
    """A finished cell's ``checkpoints/`` or ``student/``: only the files its run wrote
    (opdf.run.owner)."""
    with contextlib.suppress(owner.NotOwnedError):
        owner.remove_owned(folder, under, check=False, what="bench cell")
