"""Checkpoints: their layout (defined here only), atomic writes, checksums and safe reading.

Writes go through :mod:`opdf.storage` (a temporary file in the same folder, fsynced, then
renamed): a run killed at any moment leaves either the previous checkpoint or the new one, never a
torn file. A write that fails (disk full, read-only folder) is a :class:`CheckpointWriteError`
and leaves every earlier file as it was.

A run folder's ``checkpoints/`` holds ``last.pt`` (periodic, for exact resume), ``previous.pt``
(the ``last.pt`` before it: a resume falls back to it when ``last.pt`` is damaged), ``best.pt``
(the best student on dev) and ``manifest.json``, written after each of them: the sha256 and size
of every checkpoint file. :func:`read` checks a file against it before unpickling anything, so a
file cut short or with flipped bytes is reported (:class:`CheckpointError`) instead of loading
wrong weights silently (a flipped byte inside a tensor loads without any error otherwise).

Reading never runs code: files are loaded with ``torch.load(weights_only=True)``, which accepts
tensors and plain containers only; anything else is refused (:class:`UnsafeCheckpointError`)
without being executed. Everything opdf writes is of that kind (checked on saving: a method's
``extra_state`` with another type is an error at the first checkpoint, not at the resume).

Each file is a :class:`Checkpoint` saved as a plain dict::

    format      3 (2: RNG states as NumPy arrays and tuples; absent: format 1, flat keys)
    step        optimizer steps done
    modules     {name: state_dict} of Distiller.trainable_modules() (over-parameterized cores
                included): "student", and "teacher" for a method whose teacher trains
    score       best.pt only: its dev score
    dev         best.pt only: its dev metrics (absent in files from before format 2)
    -- last.pt / previous.pt only --
    optimizers  {name: state_dict}, the optimizers of Distiller.configure_optimizers ("main", ...)
    schedulers  {name: state_dict}, their LR schedules
    method      Distiller.extra_state() (tensors and plain containers)
    progress    the loop's bookkeeping (PROGRESS_KEYS): best score and step, timings, the running
                train-loss sums of the log window in progress, steps skipped as not finite
    rng         Python, NumPy, torch and CUDA RNG states (rng_state(): tensors, ints, tuples)
                of rank 0
    world_size  the number of processes that trained it (absent: 1)
    rank_rngs   under DDP: the RNG states of ranks 1 .. world_size - 1 (absent: none)
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import os
import pickle
import random
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from opdf.errors import OpdfError

# the atomic writes live on the ground floor (opdf.storage); their names stay importable here
from opdf.storage import (  # noqa: F401
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    interrupts_deferred,
)

LAST = "last.pt"
PREVIOUS = "previous.pt"
BEST = "best.pt"
MANIFEST = "manifest.json"
FORMAT = 3
#: the keys of ``Checkpoint.progress`` (see TrainState.progress in opdf.run.trainer)
PROGRESS_KEYS = ("best", "best_step", "train_seconds", "wall_time", "running", "n_running",
                 "skipped")  # fmt: skip


class CheckpointError(OpdfError):
    """A checkpoint file that is damaged, cut short or not what opdf wrote."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint holding objects that only arbitrary code could rebuild: refused unread."""


class CheckpointWriteError(OpdfError):
    """A checkpoint (or run file) could not be written; the earlier files are unchanged."""


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
    world_size: int = 1
    rank_rngs: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        out = {"format": FORMAT, "step": self.step, "modules": self.modules}
        if self.score is not None:
            out["score"] = self.score
        if self.dev is not None:
            out["dev"] = self.dev
        if self.rng is not None:  # a resumable (last) checkpoint
            out.update(optimizers=self.optimizers, schedulers=self.schedulers,
                       method=self.method, progress=self.progress, rng=self.rng)  # fmt: skip
            if self.world_size != 1:
                out.update(world_size=self.world_size, rank_rngs=self.rank_rngs)
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
        fields = ("score", "dev", "optimizers", "schedulers", "method", "progress", "rng",
                  "world_size", "rank_rngs")  # fmt: skip
        return cls(raw["step"], raw["modules"], **{k: raw[k] for k in fields if k in raw})


def _test_write_delay() -> float:
    """``OPDF_TEST_WRITE_DELAY`` (seconds): tests pause inside each checkpoint's ``torch.save``
    to interrupt or kill it there."""
    try:
        return float(os.environ.get("OPDF_TEST_WRITE_DELAY", "0"))
    except ValueError:
        return 0.0


def save(checkpoint: Checkpoint, path: Path, *, keep_previous: bool = False) -> None:
    """Write ``checkpoint`` atomically, then record its checksum in the folder's manifest; a
    Ctrl-C meanwhile stops the run once both are written (:func:`interrupts_deferred`).

    ``keep_previous``: the file ``path`` replaces is kept as ``previous.pt`` (``last.pt``'s
    fallback). A failed write raises :class:`CheckpointWriteError` and changes nothing.
    """
    with interrupts_deferred():
        _save(checkpoint, path, keep_previous=keep_previous)


def _save(checkpoint: Checkpoint, path: Path, *, keep_previous: bool) -> None:
    path = Path(path)
    obj = checkpoint.to_dict()
    _check_plain(obj, path.name)
    files = _manifest_files(path.parent)
    digest: dict = {}
    rotate = _before_rename(path) if keep_previous else None
    with writing(path, "checkpoint"):
        atomic_write_bytes(path, lambda f: digest.update(_save_hashed(obj, f)), rotate)
    if rotate is not None and path.name in files:
        files[PREVIOUS] = files[path.name]
    files[path.name] = {**digest, "step": checkpoint.step}
    with writing(path.parent / MANIFEST, "checkpoint manifest"):
        atomic_write_json(path.parent / MANIFEST, {"format": FORMAT, "files": files})


def _manifest_files(folder: Path) -> dict:
    """The manifest's entries; for a folder without one (a run from before manifests), the
    checkpoint files already there, hashed now, so that a resumed old run keeps its best.pt."""
    try:
        manifest = _read_manifest(folder)
    except CheckpointError as exc:
        warnings.warn(f"{exc}; writing a new one", UserWarning, stacklevel=3)
        manifest = None
    if manifest is not None:
        return dict(manifest["files"])
    found = {}
    for name in (LAST, PREVIOUS, BEST):
        f = Path(folder) / name
        if f.is_file():
            found[name] = {"sha256": file_sha256(f), "size": f.stat().st_size, "step": None}
    return found


def _before_rename(path: Path):
    """Just before the new file takes ``path``'s name: the old one becomes ``previous.pt``."""

    def rotate() -> None:
        if path.exists():
            os.replace(path, path.with_name(PREVIOUS))

    return rotate


class _HashingWriter:
    """A write-only file that hashes what passes through it (no second read of the file).

    It also keeps the ``OSError`` of a failed write: torch's zip writer swallows it and fails
    later with ``RuntimeError: ... unexpected pos``, which says nothing of a full disk."""

    def __init__(self, f) -> None:
        self.f, self.sha, self.size = f, hashlib.sha256(), 0
        self.error: OSError | None = None

    def write(self, data) -> int:
        if self.size == 0 and _test_write_delay():
            time.sleep(_test_write_delay())  # inside torch.save (tests only)
        self.sha.update(data)
        self.size += len(data)
        try:
            return self.f.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.f.flush()


def _save_hashed(obj, f) -> dict:
    w = _HashingWriter(f)
    try:
        torch.save(obj, w)
    except RuntimeError:
        if w.error is not None:  # the real cause (disk full, quota), for :func:`writing`
            raise w.error from None
        raise
    return {"sha256": w.sha.hexdigest(), "size": w.size}


def read(path: Path, *, verify: bool = True) -> Checkpoint:
    """A checkpoint file, checked against the manifest (when its folder has one) before it is
    unpickled, and unpickled with ``weights_only=True``. A damaged file is a
    :class:`CheckpointError` naming it; one that would need code to load an
    :class:`UnsafeCheckpointError`."""
    path = Path(path)
    if verify:
        check(path)
    raw = load(path)
    if not isinstance(raw, dict) or "modules" not in raw:
        raise CheckpointError(f"{path} is not an opdf checkpoint (no module states)")
    return Checkpoint.from_dict(raw)


def check(path: Path) -> dict | None:
    """Compare ``path`` with its folder's manifest; returns the manifest entry, or None for a
    folder written before manifests existed (nothing to compare with)."""
    path = Path(path)
    manifest = _read_manifest(path.parent)
    if manifest is None:
        return None
    files = manifest["files"]
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist") from None
    candidates = [e for e in files.values() if isinstance(e, dict) and e.get("size") == size]
    if candidates:
        digest = file_sha256(path)
        for entry in candidates:
            if entry.get("sha256") == digest:
                return entry
    listed = files.get(path.name)
    manifest_path = path.parent / MANIFEST
    sizes = isinstance(listed, dict) and isinstance(listed.get("size"), int)
    why = (
        f"it has {size:,} bytes where {manifest_path} says {listed['size']:,}"
        if sizes and listed["size"] != size
        else f"its sha256 matches no entry of {manifest_path}"
    )
    raise CheckpointError(f"{path} is not a readable checkpoint (damaged or cut short: {why})")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_manifest(folder: Path) -> dict | None:
    path = Path(folder) / MANIFEST
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        # written last, atomically: only outside damage gets here; nothing can be verified
        raise CheckpointError(
            f"{path} is damaged (not the JSON opdf writes); the checkpoints next to it cannot "
            "be verified"
        )
    return data


def read_modules(path: Path) -> dict[str, dict]:
    """``{name: state_dict}`` of a checkpoint's trainable modules (``"student"``, ...)."""
    return read(path).modules


def resumable(folder: Path) -> bool:
    """Whether ``folder`` (a run's ``checkpoints/``) holds a checkpoint to resume from."""
    return any((Path(folder) / name).is_file() for name in (LAST, PREVIOUS))


def read_latest(folder: Path, *, purpose: str = "resume") -> tuple[Path, Checkpoint] | None:
    """The newest intact resumable checkpoint in ``folder``: ``last.pt``, else ``previous.pt``
    (with a warning saying why ``last.pt`` was passed over). None when there is neither; a
    :class:`CheckpointError` naming both when neither is intact. ``purpose``: ``"resume"`` (a
    run continuing) or ``"merge"`` (``opdf merge --which last``), for the advice given."""
    folder = Path(folder)
    problems = []
    for name in (LAST, PREVIOUS):
        path = folder / name
        if not path.is_file():
            continue
        try:
            found = read(path)
        except UnsafeCheckpointError:
            raise
        except CheckpointError as exc:
            problems.append(str(exc))
            continue
        if problems:
            doing = "resuming from" if purpose == "resume" else "merging"
            warnings.warn(
                f"{problems[0]}; {doing} {path} (step {found.step}) instead",
                UserWarning,
                stacklevel=2,
            )
        return path, found
    if problems:
        advice = "Start the run again (--overwrite)"
        if purpose == "merge":
            advice = (f"Merge the best checkpoint instead (--which best: {folder / BEST})"
                      if (folder / BEST).is_file()
                      else "Start the run again (opdf distill CONFIG --overwrite)")  # fmt: skip
        raise CheckpointError(
            f"no intact checkpoint to {purpose} from in {folder}: {'; '.join(problems)}. {advice}"
        )
    return None


@contextlib.contextmanager
def writing(path: Path, what: str = "file"):
    """Turn an ``OSError`` while writing ``path`` (disk full, read-only folder) into one clear
    :class:`CheckpointWriteError`."""
    try:
        yield
    except CheckpointWriteError:
        raise
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise CheckpointWriteError(
            f"could not write the {what} {path}: {reason}; the files written before it are "
            "unchanged (free space or make the folder writable, then continue with --resume)"
        ) from None


_PLAIN = (str, int, float, bool, type(None), torch.dtype, torch.device)
_CONTAINERS = (dict, collections.OrderedDict, list, tuple, torch.Size)


def _check_plain(obj, where: str) -> None:
    """Only what ``torch.load(weights_only=True)`` reads back: tensors, plain containers and
    scalars (exact types: a NumPy float is a ``float`` subclass but is refused)."""
    stack = [(obj, where)]
    while stack:
        value, at = stack.pop()
        kind = type(value)
        if isinstance(value, torch.Tensor) or kind in _PLAIN:
            continue
        if kind in (dict, collections.OrderedDict):
            stack += [(k, f"{at} (key)") for k in value]
            stack += [(v, f"{at}[{k!r}]") for k, v in value.items()]
        elif kind in _CONTAINERS:
            stack += [(v, f"{at}[{i}]") for i, v in enumerate(value)]
        else:
            raise OpdfError(
                f"checkpoint {at} is a {kind.__module__}.{kind.__qualname__}: checkpoints hold "
                "only tensors, numbers, strings and lists/tuples/dicts of them (they are read "
                "with weights_only=True); convert it, e.g. a NumPy array with torch.from_numpy"
            )


def atomic_save(obj, path: Path) -> None:
    """``torch.save`` atomically (:func:`opdf.storage.atomic_write_bytes`)."""
    atomic_write_bytes(path, lambda f: torch.save(obj, f))


def rng_state() -> dict:
    """Every RNG state as tensors, ints and tuples (what ``weights_only=True`` reads)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),  # (version, tuple of 625 ints, gauss_next)
        "numpy": {"bit_generator": name, "keys": torch.from_numpy(keys.astype(np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }  # fmt: skip


def set_rng_state(state: dict) -> None:
    random.setstate(_tuples(state["python"]))
    npstate = state["numpy"]
    if isinstance(npstate, dict):
        keys = npstate["keys"].numpy().astype(np.uint32)
        npstate = (npstate["bit_generator"], keys, npstate["pos"], npstate["has_gauss"],
                   npstate["cached_gaussian"])  # fmt: skip
    np.random.set_state(npstate)
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _tuples(value):
    """``random.setstate`` wants tuples; a list (from any other reader) is turned back."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list | tuple) else value


def _numpy_rng_globals() -> list:
    """What a format-2 ``last.pt`` needs besides tensors: NumPy's array rebuild (its RNG state),
    which builds arrays and dtypes only and runs no other code."""
    from numpy._core.multiarray import _reconstruct

    return [_reconstruct, np.ndarray, np.dtype, np.dtypes.UInt32DType]


def load(path: Path) -> dict:
    """``torch.load(path, weights_only=True)``: tensors and plain containers only, never code.

    Anything else is an :class:`UnsafeCheckpointError` (nothing of it is executed); a file torch
    cannot parse is a :class:`CheckpointError`.
    """
    path = Path(path)
    try:
        with torch.serialization.safe_globals(_numpy_rng_globals()), warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Detected pickle protocol")  # a foreign file
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "weights only" in text.lower() or "weights_only" in text:
            found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
            what = f" (here {found.group(1)})" if found else ""
            raise UnsafeCheckpointError(
                f"refusing to load {path}: it holds Python objects other than tensors and plain "
                f"containers{what}, and rebuilding those can run arbitrary code. opdf never "
                "writes such files; nothing from it was executed. Use checkpoints written by "
                "opdf, from a source you trust"
            ) from None
        raise CheckpointError(f"{path} is not a readable checkpoint (damaged): {exc}") from None
    except (RuntimeError, EOFError, ValueError, KeyError) as exc:
        raise CheckpointError(
            f"{path} is not a readable checkpoint (damaged or cut short): {exc}"
        ) from None
