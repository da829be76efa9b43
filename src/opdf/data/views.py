"""One split as the training loop sees it: ``len``, ``batch(indices, epoch)``, ``eval_order()``.

The trainer draws indices (a seeded permutation per epoch) and asks the split's view for the batch,
so text and image data share one loop:

* :class:`TextView`: tokenized once (:class:`opdf.data.TokenizedSplit`), padded per batch; the
  epoch is not used; evaluation goes by length (less padding). Batches carry each example's
  position in the split (``index``), for methods with per-example targets (DBKD).
* :class:`ImageView`: uint8 images normalized per batch; training batches (``epoch`` given) are
  augmented with the per-image parameters of ``(seed, epoch, index)``, so they do not depend on
  which batch an image lands in (:mod:`opdf.data.vision`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from opdf.data.collate import PaddingCollator, TokenizedSplit
from opdf.data.vision import ImageBatcher, ImageDataset

__all__ = ["ImageView", "TextView", "split_views"]


class TextView:
    """A tokenized text split; batches are padded to their longest item and carry ``index``."""

    def __init__(self, split, tokenizer, max_length: int, regression: bool = False):
        self.data = TokenizedSplit(split, tokenizer, max_length, regression)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.collate = PaddingCollator(pad, regression, with_index=True)

    def __len__(self) -> int:
        return len(self.data)

    def batch(self, indices: Sequence[int], epoch: int | None = None) -> dict[str, torch.Tensor]:
        return self.collate([self.data[i] for i in indices])

    def eval_order(self) -> list[int]:
        lengths = self.data.lengths
        return sorted(range(len(lengths)), key=lambda i: (lengths[i], i))


class ImageView:
    """An image split; ``epoch`` (training) turns on the dataset's augmentation."""

    def __init__(self, dataset: ImageDataset, split: str, seed: int = 0, *,
                 channels_last: bool = False):  # fmt: skip
        self.batcher = ImageBatcher(dataset, split, channels_last=channels_last)
        self.seed = seed

    def __len__(self) -> int:
        return len(self.batcher)

    def batch(self, indices: Sequence[int], epoch: int | None = None) -> dict[str, torch.Tensor]:
        return self.batcher.batch(indices, epoch, self.seed)

    def eval_order(self) -> list[int]:
        return list(range(len(self)))


def split_views(dataset, tokenizer=None, *, max_length: int = 128, seed: int = 0,
                channels_last: bool = False) -> dict:  # fmt: skip
    """``{split: view}`` for a text dataset (needs ``tokenizer``) or an image dataset."""
    if getattr(dataset, "kind", "text") == "image":
        return {
            name: ImageView(dataset, name, seed, channels_last=channels_last)
            for name in dataset.splits
        }
    if tokenizer is None:
        raise ValueError("a text dataset needs the model's tokenizer")
    return {
        name: TextView(split, tokenizer, max_length, dataset.is_regression)
        for name, split in dataset.splits.items()
    }
