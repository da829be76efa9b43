"""Checkpoints: their layout (defined here only) and atomic writes.

Writes go to a temporary file in the same folder, are fsynced, then renamed: a run killed at any
moment leaves either the previous checkpoint or the new one, never a torn file.

A run folder's ``checkpoints/`` holds ``last.pt`` (periodic, for exact resume) and ``best.pt``
(the best student on dev). Both are a :class:`Checkpoint` saved as a plain dict::

    format      2 (absent in files written before the layout had a number: read as format 1)
    step        optimizer steps done
    modules     {name: state_dict} of Distiller.trainable_modules() (over-parameterized cores
                included): "student", and "teacher" for a method whose teacher trains
    score       best.pt only: its dev score
    dev         best.pt only: its dev metrics (absent in files from before format 2)
    -- last.pt only --
    optimizers  {name: state_dict}, the optimizers of Distiller.configure_optimizers ("main", ...)
    schedulers  {name: state_dict}, their LR schedules
    method      Distiller.extra_state()
    progress    the loop's bookkeeping (PROGRESS_KEYS): best score and step, timings, the running
                train-loss sums of the log window in progress
    rng         Python, NumPy, torch and CUDA RNG states (rng_state())
"""

from __future__ import annotations

import json
import os
import pickle
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from opdf.errors import OpdfError

LAST = "last.pt"
BEST = "best.pt"
FORMAT = 2
#: the keys of ``Checkpoint.progress`` (see TrainState.progress in opdf.run.trainer)
PROGRESS_KEYS = ("best", "best_step", "train_seconds", "wall_time", "running", "n_running")


@dataclass
class Checkpoint:
    """One checkpoint file's contents (see the module docstring for the layout)."""

    step: int
    modules: dict[str, dict]
    score: float | None = None
    dev: dict | None = None
    optimizers: dict[str, dict] = field(default_factory=dict)
    schedulers: dict[str, dict] = field(default_factory=dict)
    method: dict = field(default_factory=dict)
    progress: dict = field(default_factory=dict)
    rng: dict | None = None

    def to_dict(self) -> dict:
        out = {"format": FORMAT, "step": self.step, "modules": self.modules}
        if self.score is not None:
            out["score"] = self.score
        if self.dev is not None:
            out["dev"] = self.dev
        if self.rng is not None:  # a resumable (last) checkpoint
            out.update(optimizers=self.optimizers, schedulers=self.schedulers,
                       method=self.method, progress=self.progress, rng=self.rng)  # fmt: skip
        return out

    @classmethod
    def from_dict(cls, raw: dict) -> Checkpoint:
        if raw.get("format", 1) == 1:  # flat keys, one optimizer and one schedule
            return cls(
                step=raw.get("step", 0), modules=raw["modules"], score=raw.get("score"),
                optimizers={"main": raw["optimizer"]} if "optimizer" in raw else {},
                schedulers={"main": raw["lr_schedule"]} if "lr_schedule" in raw else {},
                method=raw.get("method", {}), rng=raw.get("rng"),
                progress={k: raw[k] for k in PROGRESS_KEYS if k in raw},
            )  # fmt: skip
        fields = ("score", "dev", "optimizers", "schedulers", "method", "progress", "rng")
        return cls(raw["step"], raw["modules"], **{k: raw[k] for k in fields if k in raw})


def save(checkpoint: Checkpoint, path: Path) -> None:
    """Write ``checkpoint`` atomically."""
    atomic_save(checkpoint.to_dict(), path)


def read(path: Path) -> Checkpoint:
    """A checkpoint file; a damaged one is an :class:`OpdfError` naming the file."""
    try:
        raw = load(path)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        raise OpdfError(
            f"{path} is not a readable checkpoint (damaged or cut short): {exc}"
        ) from exc
    if not isinstance(raw, dict) or "modules" not in raw:
        raise OpdfError(f"{path} is not an opdf checkpoint (no module states)")
    return Checkpoint.from_dict(raw)


def read_modules(path: Path) -> dict[str, dict]:
    """``{name: state_dict}`` of a checkpoint's trainable modules (``"student"``, ...)."""
    return read(path).modules


def atomic_write_bytes(path: Path, write) -> None:
    """Call ``write(fileobj)`` on a temp file next to ``path``, then rename it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_save(obj, path: Path) -> None:
    """``torch.save`` atomically."""
    atomic_write_bytes(path, lambda f: torch.save(obj, f))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def rng_state() -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load(path: Path) -> dict:
    # our own files: they hold RNG states (numpy arrays, tuples), so not weights_only
    return torch.load(path, map_location="cpu", weights_only=False)
