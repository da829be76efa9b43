"""Tokenization, dynamic padding and length bucketing with a real tokenizer (MiniLM's WordPiece)."""

import pytest
import torch

from opdf.data import BucketBatchSampler, TextSplit, make_dataloader
from opdf.models import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("minilm-l6")  # the package folder as is: no preparation, no Hub


def _split(n=40, pairs=False, regression=False):
    texts = [" ".join(["word"] * (1 + (i * 7) % 23)) + f" number {i}" for i in range(n)]
    labels = [float(i) / 10 for i in range(n)] if regression else [i % 2 for i in range(n)]
    return TextSplit(texts, labels, [f"second {i}" for i in range(n)] if pairs else None)


def test_batches_are_padded_to_the_longest_and_match_the_tokenizer(tokenizer):
    split = _split()
    dl = make_dataloader(split, tokenizer, batch_size=8, max_length=16)
    seen = 0
    for batch in dl:
        assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
        lengths = batch["attention_mask"].sum(1)
        assert batch["input_ids"].shape[1] == lengths.max()  # dynamic: longest in this batch
        assert batch["labels"].dtype == torch.long
        for row, n in zip(batch["input_ids"], lengths.tolist(), strict=True):
            ref = tokenizer(split.texts[seen], truncation=True, max_length=16)["input_ids"]
            assert row[:n].tolist() == ref and len(ref) <= 16
            assert (row[n:] == tokenizer.pad_token_id).all()
            seen += 1
    assert seen == len(split)


def test_truncation_pairs_and_regression_labels(tokenizer):
    split = _split(pairs=True, regression=True)
    batch = next(iter(make_dataloader(split, tokenizer, batch_size=40, max_length=12)))
    assert batch["input_ids"].shape == (40, 12)  # long texts cut to max_length
    assert batch["labels"].dtype == torch.float32
    assert (batch["token_type_ids"] == 1).any(dim=1).all()  # every row has a second segment
    sep = tokenizer.sep_token_id
    assert ((batch["input_ids"] == sep).sum(1) == 2).all()
    with pytest.raises(ValueError, match="max_length must be positive"):
        make_dataloader(split, tokenizer, max_length=0)


def test_shuffle_is_seeded(tokenizer):
    split = _split()

    def order(seed):
        dl = make_dataloader(split, tokenizer, 8, 16, shuffle=True, seed=seed, with_index=True)
        return [i for b in dl for i in b["index"].tolist()]

    a, b, c = order(0), order(0), order(1)
    assert a == b and a != c and sorted(a) == list(range(len(split)))


def test_bucketing_covers_everything_once_and_cuts_padding(tokenizer):
    split = _split(n=200)
    kw = dict(batch_size=10, max_length=32, shuffle=True, seed=3, with_index=True)
    plain = make_dataloader(split, tokenizer, **kw)
    bucketed = make_dataloader(split, tokenizer, bucket=True, **kw)

    def run(dl):
        idx, pad = [], 0
        for b in dl:
            idx += b["index"].tolist()
            pad += int((b["attention_mask"] == 0).sum())
        return idx, pad

    (_, pad_plain), (i2, pad_bucket) = run(plain), run(bucketed)
    assert sorted(i2) == list(range(200)) and len(bucketed) == 20
    assert pad_bucket < pad_plain / 3
    assert run(make_dataloader(split, tokenizer, bucket=True, **kw))[0] == i2  # same seed
    assert run(bucketed)[0] != i2  # the next epoch is reshuffled


def test_bucket_sampler_without_shuffle_sorts_by_length():
    sampler = BucketBatchSampler([5, 1, 4, 2, 3], batch_size=2, shuffle=False)
    assert list(sampler) == [[1, 3], [4, 2], [0]]
    assert len(BucketBatchSampler([1] * 5, 2, drop_last=True)) == 2
    with pytest.raises(ValueError, match="batch_size"):
        BucketBatchSampler([1], 0)
