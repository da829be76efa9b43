"""Tokenization with the model's own tokenizer, dynamic padding, optional length bucketing.

``make_dataloader(split, tokenizer, batch_size, max_length, ...)`` tokenizes a :class:`TextSplit`
once (truncated to ``max_length``, no padding) and returns a ``torch.utils.data.DataLoader`` whose
batches are dicts of tensors: ``input_ids``, ``attention_mask``, ``token_type_ids`` (when the
tokenizer makes them), ``labels`` (int64, or float32 for regression), plus ``index`` (positions in
the split) when ``with_index=True`` (pop it before ``model(**batch)``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from opdf.data.dataset import TextSplit
from opdf.errors import OpdfError


class TokenizedSplit(Dataset):
    """A split tokenized once: each item is a dict of int lists plus ``labels`` and ``index``."""

    def __init__(self, split: TextSplit, tokenizer, max_length: int, regression: bool = False):
        if max_length <= 0:
            raise OpdfError(f"max_length must be positive, got {max_length}")
        args = [split.texts] if split.text_pairs is None else [split.texts, split.text_pairs]
        enc = tokenizer(*args, truncation=True, max_length=max_length, padding=False)
        self.features = {k: list(v) for k, v in enc.items() if k != "special_tokens_mask"}
        self.labels = list(split.labels)
        self.regression = regression
        self.lengths = [len(ids) for ids in self.features["input_ids"]]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        item = {k: v[i] for k, v in self.features.items()}
        item["labels"] = self.labels[i]
        item["index"] = i
        return item


class PaddingCollator:
    """Pads a list of items to the longest in the batch (right padding)."""

    def __init__(self, pad_token_id: int, regression: bool = False, with_index: bool = False):
        self.pad_token_id = pad_token_id
        self.regression = regression
        self.with_index = with_index

    def __call__(self, items: Sequence[dict]) -> dict[str, torch.Tensor]:
        width = max(len(it["input_ids"]) for it in items)
        out: dict[str, torch.Tensor] = {}
        for key in items[0]:
            if key in ("labels", "index"):
                continue
            pad = self.pad_token_id if key == "input_ids" else 0
            out[key] = torch.tensor(
                [list(it[key]) + [pad] * (width - len(it[key])) for it in items], dtype=torch.long
            )
        dtype = torch.float32 if self.regression else torch.long
        out["labels"] = torch.tensor([it["labels"] for it in items], dtype=dtype)
        if self.with_index:
            out["index"] = torch.tensor([it["index"] for it in items], dtype=torch.long)
        return out


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of similar length: shuffle, sort by length inside chunks of
    ``batch_size * chunk_batches`` examples, cut into batches, shuffle the batch order.

    Deterministic for a given ``seed``; each new iteration (epoch) uses ``seed + epoch``. Without
    ``shuffle`` the batches are simply sorted by length (useful for fast evaluation).
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        chunk_batches: int = 50,
        drop_last: bool = False,
    ):
        if batch_size <= 0:
            raise OpdfError(f"batch_size must be positive, got {batch_size}")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.chunk = batch_size * chunk_batches
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        n = len(self.lengths)
        if not self.shuffle:
            order = sorted(range(n), key=lambda i: (self.lengths[i], i))
            chunks = [order]
        else:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=g).tolist()
            chunks = [
                sorted(order[s : s + self.chunk], key=lambda i: self.lengths[i])
                for s in range(0, n, self.chunk)
            ]
        batches = [
            c[s : s + self.batch_size] for c in chunks for s in range(0, len(c), self.batch_size)
        ]
        if self.drop_last:
            batches = [b for b in batches if len(b) == self.batch_size]
        if self.shuffle:
            perm = torch.randperm(len(batches), generator=g).tolist()
            batches = [batches[i] for i in perm]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._batches()
        self.epoch += 1
        return iter(batches)

    def __len__(self) -> int:
        n = len(self.lengths)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)


def make_dataloader(
    split: TextSplit,
    tokenizer,
    batch_size: int = 32,
    max_length: int = 128,
    shuffle: bool = False,
    seed: int = 0,
    bucket: bool = False,
    regression: bool | None = None,
    with_index: bool = False,
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader over ``split`` tokenized with ``tokenizer`` (see the module docstring).

    ``shuffle`` uses a ``torch.Generator`` seeded with ``seed`` (same order for the same seed);
    ``bucket=True`` groups examples of similar length (:class:`BucketBatchSampler`), which cuts
    padding a lot on long, varied texts such as IMDB. ``regression`` defaults to "labels are
    floats".
    """
    if regression is None:
        regression = bool(split.labels) and isinstance(split.labels[0], float)
    data = TokenizedSplit(split, tokenizer, max_length, regression)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    collate = PaddingCollator(pad_id, regression, with_index)
    if bucket:
        sampler = BucketBatchSampler(
            data.lengths, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last
        )
        return DataLoader(data, batch_sampler=sampler, collate_fn=collate)
    if batch_size <= 0:
        raise OpdfError(f"batch_size must be positive, got {batch_size}")
    gen = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(
        data,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=gen,
        collate_fn=collate,
        drop_last=drop_last,
    )
