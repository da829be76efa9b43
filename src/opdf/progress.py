"""Progress bars that suit where they are written: the one home of every opdf progress bar.

On a terminal (or in a notebook) a bar is tqdm's live bar. Anywhere else (a suite cell's log, CI,
``2> run.log``) tqdm would still redraw the bar with ``\\r`` on every update, so a 10-minute
teacher fine-tune leaves one 60 kB line in the log; there :func:`progress_bar` returns a
:class:`LogProgress` instead, which prints tqdm's usual status as a line of its own only every
``every_percent`` percent or ``every_seconds`` seconds (whichever comes first), and once at the
end.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterable
from typing import Any

import tqdm.auto as _auto
from tqdm import tqdm as _tqdm_std
from tqdm.auto import tqdm as _tqdm_auto

__all__ = ["EVERY_PERCENT", "EVERY_SECONDS", "LogProgress", "progress_bar"]

#: a log line each time this much more of the total is done ...
EVERY_PERCENT = 10.0
#: ... or when this many seconds have passed since the last line
EVERY_SECONDS = 60.0


def _now() -> float:
    return time.monotonic()


class LogProgress(_tqdm_std):
    """tqdm that writes whole lines, not redraws: for files that are not terminals."""

    def __init__(self, *args: Any, every_percent: float = EVERY_PERCENT,
                 every_seconds: float = EVERY_SECONDS, **kwargs: Any) -> None:  # fmt: skip
        self._every_percent = float(every_percent)
        self._every_seconds = float(every_seconds)
        self._line_n: float | None = None  # n at the last line written (None: none yet)
        self._line_t = _now()
        self._next_n = 0.0
        kwargs.pop("dynamic_ncols", None)  # no terminal to size the bar to
        super().__init__(*args, **kwargs)

    def _advance_threshold(self) -> None:
        total = self.total
        if not total or self._every_percent <= 0:
            self._next_n = math.inf
            return
        step = total * self._every_percent / 100.0
        self._next_n = (math.floor(self.n / step) + 1) * step

    def _write_line(self) -> None:
        self.fp.write(self.__str__() + "\n")
        self.fp.flush()
        self._line_n, self._line_t = self.n, _now()
        self._advance_threshold()

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        """Called by tqdm on every refresh: a line when one is due, else nothing. ``msg`` is
        tqdm clearing or redrawing the bar in place, which a log has no use for."""
        if msg is not None or self.disable:
            return False
        if (
            self._line_n is None
            or self.n >= self._next_n
            or (self.n != self._line_n and _now() - self._line_t >= self._every_seconds)
        ):
            self._write_line()
        return True

    def close(self) -> None:
        """The final state as a last line (unless the last line already showed it)."""
        if not self.disable and self.n != self._line_n:
            self._write_line()
        self.leave = False  # nothing on screen to keep or to clear
        super().close()


def progress_bar(iterable: Iterable | None = None, *, enabled: bool | None = None,
                 file: Any = None, every_percent: float = EVERY_PERCENT,
                 every_seconds: float = EVERY_SECONDS, **kwargs: Any) -> _tqdm_std:  # fmt: skip
    """A tqdm bar (same arguments) for ``file`` (default: ``sys.stderr``): tqdm's live bar on a
    terminal or in a notebook, a :class:`LogProgress` elsewhere, and a disabled bar when
    ``enabled`` is False (None and True: on)."""
    if enabled is False:
        return _tqdm_std(iterable, disable=True, **kwargs)
    out = sys.stderr if file is None else file
    isatty = getattr(out, "isatty", None)
    live = bool(isatty and isatty()) or _auto.notebook_tqdm is not _tqdm_std  # a widget
    if live:
        return _tqdm_auto(iterable, file=file, **kwargs)
    return LogProgress(iterable, file=out, every_percent=every_percent,
                       every_seconds=every_seconds, **kwargs)  # fmt: skip
