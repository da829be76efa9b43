"""One live run per output folder: an advisory lock held for as long as a run lives.

Two runs writing into one folder interleave their checkpoints and metrics, and ``--overwrite``
would delete a live run's folder under it. :class:`RunLock` takes an exclusive ``flock`` on
``OUTPUT_DIR/.opdf.lock``. The kernel drops the lock when its process ends, however it ends
(SIGKILL and out-of-memory kills included), so a lock left by a killed run never blocks a later
``--resume``: only a live holder does. The file says who holds it (pid, host, command, start), for
the message the second run prints; it is removed when the run ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
import warnings
from pathlib import Path

from opdf.errors import OpdfError

LOCK_FILE = ".opdf.lock"

try:  # POSIX
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError as e:  # a file system without locks (some network mounts): run unguarded
            warnings.warn(f"cannot lock the output folder ({e}); a second run into it would not "
                          "be stopped", RuntimeWarning, stacklevel=3)  # fmt: skip
        return True

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)

except ImportError:  # pragma: no cover - Windows
    import msvcrt

    def _try_lock(fd: int) -> bool:
        os.lseek(fd, 0, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def _unlock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)


class RunLockedError(OpdfError):
    """Another live process holds the folder's lock."""


class RunLock:
    """``with RunLock(folder):`` holds ``folder/.opdf.lock`` or raises :class:`RunLockedError`.

    Not re-entrant: a second ``RunLock`` on the same folder refuses even in the same process.
    """

    def __init__(self, folder: str | Path, what: str = "run") -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.what = what
        self._fd: int | None = None
        self._created = False

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        if self._fd is not None:
            return self
        self._created = not self.folder.exists()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):  # the folder, or a parent, is a file
            raise OpdfError(
                f"output_dir {str(self.folder)!r} is a file, not a folder (or lies under a file);"
                " set output_dir=... to a folder, new or an opdf run's"
            ) from None
        for _ in range(100):  # retried only when a holder removed the file as we opened it
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            if not _try_lock(fd):
                info = _read(fd)
                os.close(fd)
                raise RunLockedError(_busy_message(self.folder, info, self.what))
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                _write(fd)
                return self
            _unlock(fd)
            os.close(fd)
        raise RunLockedError(f"{self.folder}: could not take {self.path} (it keeps changing)")

    def release(self) -> None:
        """Remove the file while still holding it (a waiting opener then sees a new file), then
        unlock."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):  # a read-only folder: the stale file blocks nobody
            self.path.unlink(missing_ok=True)
        _unlock(fd)
        os.close(fd)
        if self._created:  # made only to hold the lock (a run that failed at once): leave no trace
            with contextlib.suppress(OSError):
                self.folder.rmdir()  # only when empty

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def holder(folder: str | Path) -> dict | None:
    """Who holds ``folder``'s lock now (pid, host, command, started), or None when nobody does."""
    path = Path(folder) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        if _try_lock(fd):  # a left-over file from a killed run
            _unlock(fd)
            return None
        return _read(fd) or {}
    finally:
        os.close(fd)


def _write(fd: int) -> None:
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": " ".join(["opdf", *sys.argv[1:]]) if sys.argv else "",
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, (json.dumps(info) + "\n").encode())
    os.fsync(fd)


def _read(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = json.loads(os.read(fd, 1 << 16).decode() or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _busy_message(folder: Path, info: dict, what: str) -> str:
    who = ", ".join(
        f"{k} {info[k]}" for k in ("pid", "host", "started") if info.get(k) not in (None, "")
    )
    cmd = f" `{info['command']}`" if info.get("command") else ""
    return (
        f"{folder} is in use by a live opdf {what}{f' ({who})' if who else ''}{cmd}; wait for it "
        "to end or use another output_dir (--overwrite and --resume refuse while it runs)"
    )
