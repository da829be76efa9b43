"""A frozen teacher's outputs per training batch, on disk (``teacher.cache_outputs: true``).

A frozen teacher in eval mode is a pure function of its weights and the batch, yet every run
recomputes it: in a suite, each variant and learning rate of one seed trains on the same batches
in the same order, so the teacher's forward (about 30% of a KD step on the 3-layer student, its
attributions about a sixth of an AD-KD step) is the same work repeated in every cell.

The cache is keyed by content, never by run: the folder by a digest of the teacher's weights and
buffers (plus its class and config), the entry by the output kind (``"logits"``, or AD-KD's
attribution maps with the options that shape them), the autocast state and every tensor of the
batch (inputs, labels, example ids). So an entry is read back only for the same teacher on the
same batch, and a run that reads it trains bitwise as one that computes it (at the thread count
of the run that wrote it: another thread count rounds differently, in the last bits). One small
safetensors file per entry, written atomically: concurrent cells of a suite share the folder
safely. An unreadable entry is recomputed and rewritten; a failed write (a full disk) warns once
and the run goes on computing.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from opdf.overparam import contraction_follows_autocast
from opdf.storage import atomic_write_bytes, cache_dir

VERSION = 1


def _update(h, name: str, t: torch.Tensor) -> None:
    """Feed a named tensor (name, dtype, shape and bytes) to the hash ``h``: the byte length
    follows from dtype and shape, so the stream is unambiguous. (The form DBKD's cache keys have
    always used: changing it would invalidate them.)"""
    h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
    h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


def digest_tensors(module: nn.Module) -> str:
    """Content digest of a model's weights and buffers (a teacher's identity in a cache)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        _update(h, name, t)
    return h.hexdigest()


def teacher_outputs_dir(root: Path | None = None) -> Path:
    """``<root>/teacher-outputs``; ``root`` defaults to the opdf cache (``OPDF_CACHE``)."""
    return Path(cache_dir() if root is None else root) / "teacher-outputs"


def batch_key(kind: str, batch: dict) -> str:
    """Digest of what decides a frozen teacher's outputs on ``batch``: the output kind, the
    autocast state (with the MPO contraction's) and every tensor of the batch."""
    h = hashlib.sha256(f"v{VERSION}:{kind}".encode())
    tensors = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError("a batch without tensors cannot be keyed")
    device = next(iter(tensors.values())).device.type
    if torch.is_autocast_enabled(device):
        h.update(f":autocast:{device}:{torch.get_autocast_dtype(device)}".encode())
        if contraction_follows_autocast():  # an over-parameterized teacher contracts in bf16
            h.update(b":contraction-follows-autocast")  # (a plain one recomputes, harmlessly)
    for name, t in sorted(tensors.items()):
        _update(h, name, t)
    return h.hexdigest()


class TeacherCache:
    """Disk cache of one frozen teacher's outputs per batch: :meth:`get` reads an entry or
    computes, stores and returns it. ``hits`` / ``misses`` count the lookups of this process."""

    def __init__(self, teacher: nn.Module, root: Path | None = None):
        h = hashlib.sha256(digest_tensors(teacher).encode())
        h.update(type(teacher).__qualname__.encode())
        config = getattr(teacher, "config", None)
        if config is not None and hasattr(config, "to_json_string"):
            h.update(config.to_json_string(use_diff=False).encode())
        self.folder = teacher_outputs_dir(root) / h.hexdigest()[:24]
        self.hits = 0
        self.misses = 0
        self._writable = True

    def get(self, kind: str, batch: dict,
            compute: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:  # fmt: skip
        """The teacher's ``kind`` outputs on ``batch`` (tensors by name, on the batch's device)."""
        key = batch_key(kind, batch)
        path = self.folder / key[:2] / f"{key}.safetensors"
        device = next(v for v in batch.values() if isinstance(v, torch.Tensor)).device
        stored = self._read(path, device)
        if stored is not None:
            self.hits += 1
            return stored
        self.misses += 1
        outputs = compute()
        if self._writable:
            self._write(path, outputs)
        return outputs

    def info(self) -> dict:
        return {"folder": str(self.folder), "hits": self.hits, "misses": self.misses}

    @staticmethod
    def _read(path: Path, device: torch.device) -> dict[str, torch.Tensor] | None:
        if not path.is_file():
            return None
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path, device=str(device))
        except (OSError, SafetensorError, RuntimeError, ValueError):
            return None  # a torn or foreign file: recompute, and the write replaces it

    def _write(self, path: Path, outputs: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save

        data = save({k: v.detach().cpu().contiguous() for k, v in outputs.items()})
        try:  # atomic: a reader sees the old entry, the new one or none
            atomic_write_bytes(path, lambda f: f.write(data))
        except OSError as e:
            self._writable = False
            warnings.warn(
                f"the teacher-output cache cannot write to {self.folder} ({e}); this run goes "
                "on computing the teacher's outputs",
                stacklevel=3,
            )
