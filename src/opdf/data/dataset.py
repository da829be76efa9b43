"""The in-memory text dataset every loader returns, and the split / subsample helpers they share."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from sklearn.model_selection import train_test_split

from opdf.data.metrics import MetricFn
from opdf.errors import OpdfError

SPLITS = ("train", "dev", "test")


@dataclass
class TextSplit:
    """One split: ``texts``, optional second texts ``text_pairs`` (None for single-sentence tasks),
    and ``labels`` (int class ids, or floats for regression)."""

    texts: list[str]
    labels: list
    text_pairs: list[str] | None = None

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise ValueError(f"{len(self.texts)} texts but {len(self.labels)} labels")
        if self.text_pairs is not None and len(self.text_pairs) != len(self.texts):
            raise ValueError(f"{len(self.texts)} texts but {len(self.text_pairs)} text pairs")

    def __len__(self) -> int:
        return len(self.texts)

    def select(self, indices: Sequence[int]) -> TextSplit:
        """A new split holding the examples at ``indices`` (in that order)."""
        idx = [int(i) for i in indices]
        return TextSplit(
            texts=[self.texts[i] for i in idx],
            labels=[self.labels[i] for i in idx],
            text_pairs=None if self.text_pairs is None else [self.text_pairs[i] for i in idx],
        )


@dataclass
class TextDataset:
    """A text task: three splits plus everything needed to train and score on it.

    Attributes
    ----------
    name : str
        e.g. ``"rt-polarity"``, ``"glue:mrpc"``, or the file name for generic files.
    train, dev, test : TextSplit
        ``dev`` is for checkpoint selection, ``test`` is what gets reported.
    num_labels : int
        1 for regression.
    label_names : list of str or None
        Class names in id order (None for regression).
    metric : callable
        ``metric(preds, labels) -> dict[str, float]``; preds may be logits or class ids.
    main_metric : str
        The key of ``metric``'s result used for checkpoint selection (higher is better).
    """

    name: str
    train: TextSplit
    dev: TextSplit
    test: TextSplit
    num_labels: int
    metric: MetricFn
    main_metric: str
    label_names: list[str] | None = None
    info: dict = field(default_factory=dict)

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1

    @property
    def is_pair(self) -> bool:
        return self.train.text_pairs is not None

    @property
    def splits(self) -> dict[str, TextSplit]:
        return {"train": self.train, "dev": self.dev, "test": self.test}

    def __getitem__(self, split: str) -> TextSplit:
        if split not in SPLITS:
            raise KeyError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
        return getattr(self, split)

    def sizes(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.splits.items()}

    def __repr__(self) -> str:
        kind = "regression" if self.is_regression else f"{self.num_labels} labels"
        pair = ", pairs" if self.is_pair else ""
        return f"TextDataset({self.name!r}, {kind}{pair}, sizes={self.sizes()})"


def _stratify(labels: Sequence, is_regression: bool):
    """Labels to stratify on, or None when stratification is impossible."""
    if is_regression:
        return None
    y = np.asarray(labels)
    _, counts = np.unique(y, return_counts=True)
    return y if len(counts) > 1 and counts.min() >= 2 else None


def split_indices(
    labels: Sequence, sizes: Sequence[int], seed: int, is_regression: bool = False
) -> list[np.ndarray]:
    """Partition ``range(len(labels))`` into parts of the given ``sizes`` (summing to the total),
    stratified by label when possible, with a fixed seed. Each part is sorted (file order)."""
    n = len(labels)
    if sum(sizes) != n:
        raise ValueError(f"split sizes {list(sizes)} do not add up to {n}")
    rest = np.arange(n)
    parts = []
    for k, size in enumerate(sizes[:-1]):
        if size == 0:
            parts.append(np.array([], dtype=np.int64))
            continue
        if size == len(rest):
            parts.append(np.sort(rest))
            rest = rest[:0]
            continue
        strat = _stratify([labels[i] for i in rest], is_regression)
        try:
            take, rest = train_test_split(
                rest, train_size=size, random_state=seed + k, stratify=strat
            )
        except ValueError:  # too few examples per class for the requested size
            take, rest = train_test_split(rest, train_size=size, random_state=seed + k)
        parts.append(np.sort(take))
    parts.append(np.sort(rest))
    return parts


def fraction_sizes(n: int, dev_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """``(train, dev, test)`` sizes: dev and test rounded to the nearest integer."""
    if not (0 <= dev_fraction < 1 and 0 <= test_fraction < 1 and dev_fraction + test_fraction < 1):
        raise OpdfError(
            f"dev_fraction={dev_fraction} and test_fraction={test_fraction} must be in [0, 1) "
            "and sum to less than 1"
        )
    n_dev, n_test = round(n * dev_fraction), round(n * test_fraction)
    return n - n_dev - n_test, n_dev, n_test


def subsample(
    split: TextSplit, max_samples: int | None, seed: int, is_regression: bool = False
) -> TextSplit:
    """At most ``max_samples`` examples, stratified by label, fixed seed, file order kept."""
    if max_samples is None or max_samples >= len(split):
        return split
    if max_samples <= 0:
        raise OpdfError(f"max samples must be positive, got {max_samples}")
    keep, _ = split_indices(
        split.labels, [max_samples, len(split) - max_samples], seed, is_regression
    )
    return split.select(keep)


def check_nonempty(ds: TextDataset, source: str) -> TextDataset:
    """Raise one clear error if any split is empty."""
    empty = [k for k, v in ds.splits.items() if len(v) == 0]
    if empty:
        raise OpdfError(
            f"{ds.name}: split(s) {', '.join(empty)} are empty (from {source}); sizes: {ds.sizes()}"
        )
    return ds
