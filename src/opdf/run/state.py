"""The training loop's bookkeeping (:class:`TrainState`), shared by the named steps of
:meth:`opdf.run.trainer.Trainer.fit` and read by the end stage (:mod:`opdf.run.finish`)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field


@dataclass
class TrainState:
    """The loop's bookkeeping, shared by the named steps of :meth:`Trainer.fit`; what of it a
    checkpoint keeps is :meth:`progress`."""

    step: int = 0  # optimizer steps done
    best: float = -math.inf  # best dev score so far, and its step
    best_step: int | None = None
    train_seconds: float = 0.0  # time inside train steps, every session of the run
    wall_before: float = 0.0  # wall time of the earlier sessions (before a resume)
    running: dict[str, float] = field(default_factory=dict)  # train-loss sums since the last log
    n_running: int = 0
    no_grad_run: int = 0  # optimizer steps in a row whose losses had no gradient
    skipped: int = 0  # steps skipped as not finite (on_nonfinite="skip"), every session
    skip_run: int = 0  # ... of them in a row
    saved_step: int | None = None  # the step of the newest last.pt (for messages)
    start: int = 0  # the step this session began at
    t0: float = field(default_factory=time.perf_counter)  # this session's start

    def wall_time(self) -> float:
        return self.wall_before + time.perf_counter() - self.t0

    def progress(self) -> dict:
        """The fields a checkpoint keeps (``checkpoint.PROGRESS_KEYS``)."""
        return {"best": self.best, "best_step": self.best_step,
                "train_seconds": self.train_seconds, "wall_time": self.wall_time(),
                "running": dict(self.running), "n_running": self.n_running,
                "skipped": self.skipped}  # fmt: skip

    def restore(self, step: int, progress: dict) -> None:
        self.step = self.start = step
        self.best, self.best_step = progress["best"], progress["best_step"]
        self.train_seconds, self.wall_before = progress["train_seconds"], progress["wall_time"]
        self.running = dict(progress.get("running", {}))
        self.n_running = progress.get("n_running", 0)
        self.skipped = progress.get("skipped", 0)
        self.saved_step = step
