"""Files that are whole or absent, and where opdf keeps its cache: the ground floor for writing.

Every writer in opdf (checkpoints, run folders, the teacher-output and DBKD/TinyViT caches,
prepared models, the fine-tuned teacher) goes through here, so that a run killed at any moment,
or two runs writing the same cache entry, leave the old file or the new one, never a torn one:

* :func:`atomic_write_bytes` (and ``_text``, ``_json``): a temporary file in the same folder,
  fsynced, then renamed onto the target; a Ctrl-C meanwhile waits until the file is done
  (:func:`interrupts_deferred`).
* :func:`atomic_dir`: a temporary folder, renamed into place when the block succeeds.
* :func:`cache_dir`: ``$OPDF_CACHE``, else ``~/.cache/opdf``.

Standard library only (``opdf --help`` imports nothing heavy through it); a ``torch.save`` is
``atomic_write_bytes(path, lambda f: torch.save(obj, f))``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "atomic_dir",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "cache_dir",
    "interrupts_deferred",
]


def cache_dir() -> Path:
    """The opdf cache root: env ``OPDF_CACHE`` if set, else ``~/.cache/opdf``."""
    root = os.environ.get("OPDF_CACHE") or "~/.cache/opdf"
    return Path(root).expanduser()


_deferring = threading.local()


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold a Ctrl-C (SIGINT) that arrives inside the block until the block is done, then raise
    it (``KeyboardInterrupt``, or whatever handler was installed). An interrupt inside
    ``torch.save`` surfaces as torch's own ``RuntimeError`` (two chained tracebacks, exit 1)
    instead of a clean stop; deferred, the file is finished and the run stops right after it,
    resumable. Nested blocks defer to the outermost; outside the main thread, a no-op."""
    main = threading.current_thread() is threading.main_thread()
    if getattr(_deferring, "on", False) or not main:
        yield
        return
    got: list[int] = []
    try:
        old = signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))
    except ValueError:  # pragma: no cover - no signal handling here (an embedded interpreter)
        yield
        return
    _deferring.on = True
    try:
        yield
    finally:
        _deferring.on = False
        signal.signal(signal.SIGINT, old)
    if got:
        if callable(old):
            old(signal.SIGINT, None)
        elif old != signal.SIG_IGN:
            raise KeyboardInterrupt


def atomic_write_bytes(
    path: Path, write: Callable[[BinaryIO], object], before_rename: Callable[[], None] | None = None
) -> None:
    """Call ``write(fileobj)`` on a temp file next to ``path``, then rename it onto ``path``
    (``before_rename()`` runs once the temp file is complete, just before). A failed write
    removes the temp file and leaves ``path`` as it was."""
    with interrupts_deferred():
        _atomic_write_bytes(Path(path), write, before_rename)


def _atomic_write_bytes(path: Path, write, before_rename) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            _open_mode(f.fileno(), path)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if before_rename is not None:
            before_rename()
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _read_umask() -> int:
    """The process umask, read once at import (setting it and back is the only getter; doing so
    on every write could race another thread creating a file)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _open_mode(fd: int, path: Path) -> None:
    """Give a temporary file (mkstemp: 0600) the mode ``open(path, "w")`` would leave: the
    existing file's when ``path`` exists, else 0666 less the umask. Best effort: a file system
    without POSIX modes keeps mkstemp's."""
    if not hasattr(os, "fchmod"):
        return
    with contextlib.suppress(OSError):
        os.fchmod(fd, path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_UMASK)


def atomic_write_text(path: Path, text: str) -> None:
    """:func:`atomic_write_bytes` of ``text`` in UTF-8."""
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def atomic_write_json(path: Path, obj) -> None:
    """:func:`atomic_write_text` of ``obj`` as indented JSON (key order kept)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a fresh temporary folder next to ``final``; on success rename it to ``final``.

    On error the temporary folder is removed and ``final`` is untouched. If another process
    created ``final`` meanwhile, its copy is kept and ours is discarded.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        try:
            os.replace(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
