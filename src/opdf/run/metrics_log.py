"""A run's metric records: ``metrics.jsonl`` and, with ``log_to`` naming it, TensorBoard.

One home for what the trainer logs and how a resumed session makes the log match its checkpoint:
records after the checkpoint's step (and a killed session's test record) leave ``metrics.jsonl``;
TensorBoard purges the killed session's events from the checkpoint's step on and takes that
step's kept records again (a purge works by step, not by tag). Rank 0 alone writes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from opdf.run import checkpoint as ckpt
from opdf.run import owner
from opdf.run.tblog import TB_DIR, TensorBoardLog

__all__ = ["METRICS_FILE", "MetricsLog"]

METRICS_FILE = "metrics.jsonl"


class MetricsLog:
    """The records of one run folder ``out``, to the sinks ``log_to`` names (jsonl, tensorboard);
    a no-op on ranks other than 0."""

    def __init__(self, out: Path, log_to: Sequence[str], *, is_main: bool = True) -> None:
        self.out = Path(out)
        self.path = self.out / METRICS_FILE
        self.jsonl = "jsonl" in log_to
        self.tensorboard = "tensorboard" in log_to
        self.is_main = is_main
        self.tb: TensorBoardLog | None = None  # open between open_session and close

    def write(self, record: dict) -> None:
        """One record (``{"step": ..., "split": ..., name: value}``) to every sink."""
        if not self.is_main:
            return
        if self.tb is not None:
            self.tb.write(record)
        if not self.jsonl:
            return
        with ckpt.writing(self.path, "metrics log"), open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def truncate(self, step: int) -> None:
        """A resumed run's ``metrics.jsonl`` as of its checkpoint at ``step``: later records and
        every test record (written after the last checkpoint, by a session that finished) go, as
        does a line cut short by the kill."""
        if not self.is_main or not self.path.exists():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # written after the last checkpoint: dropped anyway
                continue
            if isinstance(record, dict) and record.get("step", 0) <= step and (
                record.get("split") != "test"
            ):  # fmt: skip
                keep.append(line)
        ckpt.atomic_write_text(self.path, "".join(k + "\n" for k in keep))

    def open_session(self, step: int) -> None:
        """The TensorBoard writer of this session, started at ``step`` (0: a new run). A resumed
        session purges the killed one's events from ``step`` on and writes that step's kept
        records again from the (truncated) ``metrics.jsonl``: the killed session may have written
        the final test record at that very step. Without ``metrics.jsonl`` only the steps after
        ``step`` can be purged."""
        if not self.tensorboard or not self.is_main:
            return
        replay = self._records_at(step) if step else None
        if not step:
            purge = None
        elif replay is None:
            purge = step + 1  # no record of the step to write again: keep the killed session's
        else:
            purge = step
        self.tb = TensorBoardLog(self.out / TB_DIR, purge_step=purge)
        owner.record(self.out, TB_DIR)  # the session's event file exists from here on
        for record in replay or ():
            self.tb.write(record)

    def _records_at(self, step: int) -> list[dict] | None:
        """The records of ``metrics.jsonl`` at ``step`` (kept by :meth:`truncate`, whatever this
        session's ``log_to``); None without the file."""
        if not self.path.exists():
            return None
        records = (json.loads(line) for line in self.path.read_text().splitlines())
        return [r for r in records if r.get("step") == step]

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
            owner.record(self.out, TB_DIR)
