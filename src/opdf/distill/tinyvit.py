"""TinyViT-style fast distillation (Wu et al., ECCV 2022, arXiv 2207.10666; ``microsoft/Cream``).

1. Before training, the frozen teacher sees every training image once per epoch, augmented exactly
   as the student will see it in that epoch (the augmentation of image ``i`` in epoch ``e`` is a
   pure function of the run's seed, ``e`` and ``i``; see :mod:`opdf.data.vision`). Only its
   **top-k softmax probabilities** are kept, as float16 values and int16 class indices
   (:class:`TopKStore`), like TinyViT's ``save_logits.py``.
2. The student trains on the dense target rebuilt from them: the stored probability at each stored
   class and ``(1 - sum of the top-k) / (C - k)`` at every other class
   (:func:`sparse_soft_targets`, TinyViT's ``train_one_epoch_distill_using_saved_logits``), with
   soft-target cross-entropy and **no ground-truth term**. The teacher never runs during training.

How many classes are kept: ``topk`` (an explicit K), or by default a fraction of the classes,
:func:`default_topk`: ``K = max(1, round(C * TOPK_FRACTION))`` with ``TOPK_FRACTION = 0.01``, the
official ratio on ImageNet-1k (about 10 of 1,000 classes; the ImageNet-21k logits keep 100 of
21,841, 0.46%). So the rebuilt target stays sparse, as in TinyViT: on Fashion-MNIST's 10 classes
the rule gives K = 1 (the teacher's top class, the rest spread evenly), where K = 3 (30% of the
classes, the committed ``configs/fashion-mnist-tinyvit-*.yaml``) rebuilds a target close to the
teacher's full output.

The store is cached on disk (``<opdf cache>/teacher-topk/<key>.pt``, when the trainer passes a
cache folder and ``tinyvit.cache`` is on), the key hashing the teacher's
weights, the training images and labels, their normalization and augmentation, the seed, ``k`` and
the number of epochs: runs that differ only in the student (none / svd / mpo / OPDF) reuse it, as
TinyViT reuses one set of saved logits for every student.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from opdf.choices import at_least, check_fields
from opdf.distill.base import Distiller, model_logits
from opdf.distill.registry import register_method
from opdf.errors import ConfigError, OpdfError
from opdf.progress import progress_bar
from opdf.storage import atomic_write_bytes

STORE_VERSION = 1
#: the default share of the classes whose probabilities are stored: TinyViT's ImageNet-1k ratio
#: (about 10 of 1,000; its ImageNet-21k logits keep 100 of 21,841, ~0.46%)
TOPK_FRACTION = 0.01


def default_topk(num_classes: int, fraction: float = TOPK_FRACTION) -> int:
    """K for ``num_classes`` classes when ``tinyvit.topk`` is null: ``max(1, round(C * fraction))``
    (1,000 -> 10, 21,841 -> 218, 100 -> 1, 10 -> 1), at most ``C``."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return min(num_classes, max(1, math.floor(num_classes * fraction + 0.5)))  # half up


def topk_probs(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest softmax probabilities (float16, sorted) and their classes (int16)."""
    values, indices = torch.softmax(logits.float(), dim=-1).topk(k, dim=-1, largest=True,
                                                                 sorted=True)  # fmt: skip
    return values.to(torch.float16), indices.to(torch.int16)


def sparse_soft_targets(values: torch.Tensor, indices: torch.Tensor, num_classes: int):
    """Dense ``(b, C)`` targets from stored top-k ``values`` / ``indices``: each stored class gets
    its stored probability, every other class an equal share of the rest,
    ``(1 - sum(values)) / (C - k)`` (nothing when ``k == C``)."""
    values = values.float()
    k = values.shape[-1]
    if k > num_classes:
        raise ValueError(f"{k} stored classes for {num_classes} classes")
    if k == num_classes:
        minor = torch.zeros(*values.shape[:-1], 1, dtype=values.dtype, device=values.device)
    else:
        minor = (1.0 - values.sum(-1, keepdim=True)) / (num_classes - k)
    dense = minor.expand(*values.shape[:-1], num_classes).clone()
    return dense.scatter_(-1, indices.long(), values)


def soft_target_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``mean_b sum_c -target * log_softmax(logits)`` (timm's ``SoftTargetCrossEntropy``)."""
    return torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()


@dataclass
class TopKStore:
    """The teacher's top-k probabilities for every (epoch, training image): ``values`` float16
    and ``indices`` int16, both ``(epochs, images, k)``."""

    values: torch.Tensor
    indices: torch.Tensor

    @property
    def epochs(self) -> int:
        return int(self.values.shape[0])

    @property
    def k(self) -> int:
        return int(self.values.shape[2])

    def lookup(self, epoch: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = epoch.long().cpu(), index.long().cpu()
        if (epoch < 0).any() or (epoch >= self.epochs).any():
            raise OpdfError(
                f"no stored teacher outputs for epoch(s) {sorted(set(epoch.tolist()))} (stored: "
                f"0..{self.epochs - 1}); tinyvit needs augmented training batches"
            )
        return self.values[epoch, index], self.indices[epoch, index]

    @classmethod
    @torch.no_grad()
    def build(
        cls,
        teacher: nn.Module,
        view,
        epochs: int,
        k: int,
        *,
        batch_size: int = 256,
        device: torch.device | None = None,
        progress: bool | None = None,
    ) -> TopKStore:
        """Run ``teacher`` (eval mode) over every image of ``view`` (the training split as the
        trainer batches it, :class:`opdf.data.views.ImageView`) in index order, each epoch with
        that epoch's augmentation."""
        device = device or torch.device("cpu")
        n = len(view)
        values = torch.empty(epochs, n, k, dtype=torch.float16)
        indices = torch.empty(epochs, n, k, dtype=torch.int16)
        was = teacher.training
        teacher.eval()
        steps = epochs * math.ceil(n / batch_size)
        bar = progress_bar(total=steps, desc="tinyvit: teacher top-k", enabled=progress,
                           leave=False, dynamic_ncols=True)  # fmt: skip
        try:
            for e in range(epochs):
                for start in range(0, n, batch_size):
                    idx = list(range(start, min(n, start + batch_size)))
                    batch = view.batch(idx, epoch=e)
                    batch = {key: v.to(device) for key, v in batch.items()}
                    v, i = topk_probs(model_logits(teacher, batch), k)
                    values[e, start : start + len(idx)] = v.cpu()
                    indices[e, start : start + len(idx)] = i.cpu()
                    bar.update(1)
        finally:
            bar.close()
            teacher.train(was)
        return cls(values, indices)

    def save(self, path: Path) -> None:
        """Atomically (:func:`opdf.storage.atomic_write_bytes`)."""
        obj = {"version": STORE_VERSION, "values": self.values, "indices": self.indices}
        atomic_write_bytes(path, lambda f: torch.save(obj, f))

    @classmethod
    def load(cls, path: Path) -> TopKStore | None:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError):
            return None  # damaged or unreadable: rebuilt by the caller
        if not isinstance(obj, dict) or obj.get("version") != STORE_VERSION:
            return None
        return cls(obj["values"], obj["indices"])


def store_key(teacher: nn.Module, view, epochs: int, k: int) -> str:
    """A digest of everything the stored outputs depend on: the teacher's weights and buffers,
    the training images, labels, normalization, augmentation and seed, ``epochs`` and ``k``."""
    data = view.batcher
    h = hashlib.sha256(f"v{STORE_VERSION}:{epochs}:{view.seed}:{k}".encode())
    for name, tensor in sorted(teacher.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    aug = data.augment
    h.update(repr((aug.crop_padding, aug.hflip, data.dataset.mean, data.dataset.std)).encode())
    h.update(np.ascontiguousarray(data.images.numpy()).tobytes())
    h.update(np.ascontiguousarray(data.labels.numpy()).tobytes())
    return h.hexdigest()[:20]


@register_method("tinyvit")
class TinyViTDistill(Distiller):
    """TinyViT fast distillation: stored top-k teacher probabilities, soft-target CE, no labels."""

    data_kinds = ("image",)

    @dataclass
    class Options:
        # null: default_topk(classes), 1% of them, at least 1
        topk: int | None = at_least(None, 1, allow_none=True)
        cache: bool = True

        def validate(self, cfg=None) -> None:
            check_fields(self, "tinyvit")

    @property
    def topk(self) -> int:
        """The K of this run: ``tinyvit.topk``, or :func:`default_topk` of the task's classes."""
        k = self.options.topk
        return default_topk(self.num_labels) if k is None else k

    store: TopKStore | None = None

    def on_train_start(self, context) -> None:
        view = context.train_view
        if view is None or not hasattr(view, "batcher"):
            raise ConfigError("tinyvit distils on image data only (data.name: an image dataset)")
        k = self.topk
        if k > self.num_labels:
            raise ConfigError(f"tinyvit.topk={k} exceeds the {self.num_labels} classes of the task")
        epochs = math.ceil(context.total_steps / max(1, context.steps_per_epoch))
        if self.store is not None and self.store.epochs >= epochs and self.store.k == k:
            return
        path = None
        if self.options.cache and getattr(context, "cache_dir", None) is not None:
            key = store_key(self.teacher, view, epochs, k)
            path = Path(context.cache_dir) / "teacher-topk" / f"{key}.pt"
            store = TopKStore.load(path) if path.is_file() else None
            if store is not None and store.epochs == epochs and store.values.shape[1] == len(view):
                self.store = store
                return
        self.store = TopKStore.build(
            self.teacher, view, epochs, k, batch_size=context.eval_batch_size,
            device=context.device, progress=context.progress,
        )  # fmt: skip
        if path is not None:
            self.store.save(path)

    def forward_train(self, batch):
        if self.store is None:
            raise OpdfError("tinyvit: the teacher's top-k store was not built (on_train_start)")
        if "epoch" not in batch or "index" not in batch:
            raise OpdfError("tinyvit needs image batches with 'epoch' and 'index' entries")
        logits = model_logits(self.student, batch)
        values, indices = self.store.lookup(batch["epoch"], batch["index"])
        target = sparse_soft_targets(values.to(logits.device), indices.to(logits.device),
                                     logits.shape[-1])  # fmt: skip
        return logits, {"soft_ce": soft_target_cross_entropy(logits, target)}
