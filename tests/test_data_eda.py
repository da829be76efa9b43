"""EDA perturbations for DBKD's teacher queries: each operation does what it says, copies are
deterministic per seed, the original comes last (EDA-cleaned), strengths follow the code."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from opdf.data.eda import clean_text, corpus_words, draw_strength, perturbed_copies
from opdf.errors import ConfigError

TEXTS = [
    "it is a tedious story with a stupid cast and a dull , lifeless script .",
    "the cast is wonderful , and the story never lets go of you for a minute .",
    "Don't miss it: a well-made, warm-hearted film!",
]


def test_clean_text_is_edas_cleaning():
    assert clean_text("Don't miss it: a well-made, warm-hearted film!") == (
        "dont miss it a well made warm hearted film"
    )
    assert clean_text("  ...  ") == ""


def test_copies_are_deterministic_and_end_with_the_cleaned_original():
    a = perturbed_copies(TEXTS, 10, seed=3)
    assert a == perturbed_copies(TEXTS, 10, seed=3)
    assert a != perturbed_copies(TEXTS, 10, seed=4)
    assert all(len(row) == 10 for row in a)
    for text, row in zip(TEXTS, a, strict=True):
        assert row[-1] == clean_text(text)
        assert any(c != row[-1] for c in row[:-1])  # something was perturbed
    raw = perturbed_copies(TEXTS, 4, clean=False, seed=0)
    assert [row[-1] for row in raw] == [" ".join(t.split()) for t in TEXTS]


@pytest.mark.parametrize("seed", range(5))
def test_each_operation_alone(seed):
    words = [w for t in TEXTS for w in clean_text(t).split()]
    pool = ["zebra", "quantum"]
    for row, text in zip(perturbed_copies(TEXTS, 8, operations=["swap"], seed=seed, strength=0.3),
                         TEXTS, strict=True):  # fmt: skip
        orig = Counter(clean_text(text).split())
        assert all(Counter(c.split()) == orig for c in row)  # swaps keep the words
    for row in perturbed_copies(TEXTS, 8, operations=["delete"], seed=seed, strength=0.3):
        orig = row[-1].split()
        for c in row[:-1]:
            it = iter(orig)
            assert all(w in it for w in c.split()) and len(c.split()) <= len(orig)  # subsequence
    for mode, allowed in (("sentence", set(words)), ("corpus", set(words) | set(pool))):
        rows = perturbed_copies(TEXTS, 8, operations=["insert"], insert_words=mode, pool=pool,
                                seed=seed, strength=0.3)  # fmt: skip
        for row in rows:
            orig = Counter(row[-1].split())
            for c in row[:-1]:
                added = Counter(c.split()) - orig
                assert not (orig - Counter(c.split()))  # nothing removed
                assert set(added) <= (allowed if mode == "sentence" else set(pool))
            # EDA counts an operation only when int(alpha n) > 0; a row where no operation
            # counts is left unperturbed (the official code falls back to copies)
            longer = all(len(c.split()) > len(row[-1].split()) for c in row[:-1])
            assert longer or len(set(row)) == 1


def test_strength_draw_is_half_normal_with_the_given_mean_capped_at_one_half():
    rng = np.random.default_rng(0)
    draws = np.array([draw_strength(rng, 0.1) for _ in range(20000)])
    assert abs(draws.mean() - 0.1) < 0.003 and draws.max() <= 0.5 and draws.min() >= 0
    assert draws.max() == 0.5 or (draws < 0.5).all()
    big = np.array([draw_strength(rng, 1.0) for _ in range(2000)])
    assert (big == 0.5).mean() > 0.5  # the cap


def test_corpus_pool_skips_stop_words_and_bad_options_fail():
    pool = corpus_words(TEXTS)
    assert "tedious" in pool and "the" not in pool and "a" not in pool
    with pytest.raises(ValueError, match="operations"):
        perturbed_copies(TEXTS, operations=["synonym"])
    with pytest.raises(ValueError, match="insert_words"):
        perturbed_copies(TEXTS, insert_words="wordnet")
    # a sentence that cleans to nothing is repeated as is
    assert perturbed_copies(["!!!", *TEXTS], 3)[0] == ["!!!"] * 3
    # most of them (text outside a-z): one error saying how to keep the text, not hard labels
    with pytest.raises(ConfigError, match="dbkd.clean: false"):
        perturbed_copies(["этот фильм", "очень", "!!!", TEXTS[0]], 3)
    with pytest.raises(ConfigError, match="insert_words: corpus needs words"):
        perturbed_copies(["!!!", "???"], 3, insert_words="corpus")
    kept = perturbed_copies(["этот фильм хороший", "очень плохой фильм"], 3, clean=False)
    assert [row[-1] for row in kept] == ["этот фильм хороший", "очень плохой фильм"]
