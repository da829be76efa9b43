"""EDA-style text perturbations (Wei and Zou, 2019), as DBKD's teacher queries use them.

:func:`perturbed_copies` turns each sentence into ``n_copies`` versions: ``n_copies - 1``
perturbed ones and the original last, following the official DBKD code
(``utils/add_noise_eda.py`` of THUNLP-MT/DBKD-PLM):

* The text is first cleaned as EDA does (lower case, letters and spaces only; apostrophes removed,
  hyphens become spaces), the original copy included. ``clean=False`` keeps the raw text and splits
  it on white space instead.
* One strength per chunk of ``chunk_size`` sentences (the official code draws it once per batched
  ``datasets.map`` call, 1,000 sentences by default): ``alpha = min(|N(0, (sqrt(pi/2) s)^2)|,
  0.5)``, whose mean is ``s = strength``, drawn separately for insertion and swap. The deletion
  probability is drawn the same way around the *drawn swap strength* (the official code passes
  ``alpha_rs`` there); without swap, around ``strength``.
* Per sentence of ``n`` words: ``max(1, int(alpha n))`` insertions or swaps per copy, deletion of
  each word with probability ``p``; each enabled operation makes ``int((N - 1) / k) + 1`` copies
  (``k`` counts the operations with ``int(alpha n) > 0``, deletion always counts), the pool is
  shuffled and cut to ``N - 1``. A sentence that cleans to nothing is repeated ``N`` times as is.
* Synonym replacement is off, as in the official script (``--ablation_sr``).

**Deviation (offline):** EDA's random insertion inserts a WordNet synonym of a random word of the
sentence, and WordNet is not installed here (NLTK's data is a separate download). The stand-ins
are ``insert_words="sentence"`` (default: a copy of a random word of the same sentence, the
nearest thing to its first synonym) and ``insert_words="corpus"`` (a word drawn from
``corpus_words``, e.g. every non-stop-word token of the training texts, so frequent words come up
more often). Swap and deletion are EDA's own.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np

from opdf.errors import ConfigError

OPERATIONS = ("insert", "swap", "delete")
INSERT_WORDS = ("sentence", "corpus")
MAX_STRENGTH = 0.5
_NOT_LETTERS = re.compile(r"[^a-z ]")
_SPACES = re.compile(" +")


def clean_text(text: str) -> str:
    """EDA's cleaning: lower case; ``'`` and ``’`` removed; everything but a-z becomes a space."""
    text = text.replace("’", "").replace("'", "").replace("-", " ").replace("\t", " ")
    text = text.replace("\n", " ").lower()
    return _SPACES.sub(" ", _NOT_LETTERS.sub(" ", text)).strip()


def _words(text: str, clean: bool) -> list[str]:
    return (clean_text(text) if clean else text).split()


def corpus_words(texts: Sequence[str], clean: bool = True) -> list[str]:
    """Every token of ``texts`` that is not an English stop word (the ``corpus`` insertion pool)."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return [w for t in texts for w in _words(t, clean) if w not in ENGLISH_STOP_WORDS]


def draw_strength(rng: np.random.Generator, mean: float) -> float:
    """``min(|N(0, (sqrt(pi/2) mean)^2)|, 0.5)``: a half-normal draw whose mean is ``mean``."""
    return min(abs(rng.normal(0.0, math.sqrt(math.pi / 2) * mean)), MAX_STRENGTH)


def _insert(words, n, rng, insert_words, pool):
    out = list(words)
    for _ in range(n):
        if insert_words == "sentence":
            word = out[rng.integers(len(out))]
        else:
            word = pool[rng.integers(len(pool))]
        out.insert(int(rng.integers(len(out))), word)  # EDA: any position but the end
    return out


def _swap(words, n, rng):
    out = list(words)
    for _ in range(n):
        i = j = int(rng.integers(len(out)))
        tries = 0
        while j == i:  # EDA gives up after a few tries (a one-word sentence stays as is)
            j = int(rng.integers(len(out)))
            tries += 1
            if tries > 3:
                break
        out[i], out[j] = out[j], out[i]
    return out


def _delete(words, p, rng):
    if len(words) == 1:
        return list(words)
    keep = [w for w in words if rng.random() > p]
    return keep or [words[int(rng.integers(len(words)))]]


def perturb_sentence(
    words: list[str],
    n_aug: int,
    rng: np.random.Generator,
    *,
    alpha_insert: float,
    alpha_swap: float,
    p_delete: float,
    insert_words: str = "sentence",
    pool: Sequence[str] = (),
) -> list[list[str]]:
    """``n_aug`` perturbed versions of one word list (EDA's ``eda()`` with SR off)."""
    n = len(words)
    counted = (int(alpha_insert * n) > 0) + (int(alpha_swap * n) > 0) + (p_delete > 0)
    if counted == 0:
        raise ValueError("no perturbation is enabled")
    per_op = n_aug // counted + 1
    made: list[list[str]] = []
    if alpha_insert > 0:
        k = max(1, int(alpha_insert * n))
        made += [_insert(words, k, rng, insert_words, pool) for _ in range(per_op)]
    if alpha_swap > 0:
        k = max(1, int(alpha_swap * n))
        made += [_swap(words, k, rng) for _ in range(per_op)]
    if p_delete > 0:
        made += [_delete(words, p_delete, rng) for _ in range(per_op)]
    order = rng.permutation(len(made))
    return [made[i] for i in order[:n_aug]]


def perturbed_copies(
    texts: Sequence[str],
    n_copies: int = 10,
    *,
    strength: float = 0.1,
    operations: Sequence[str] = OPERATIONS,
    insert_words: str = "sentence",
    pool: Sequence[str] | None = None,
    clean: bool = True,
    chunk_size: int = 1000,
    seed: int = 0,
) -> list[list[str]]:
    """For each text, ``n_copies`` strings: ``n_copies - 1`` perturbed, the original last (see the
    module docstring). Deterministic for a given ``seed``; ``pool`` is the ``corpus`` insertion
    vocabulary (default: :func:`corpus_words` of ``texts``)."""
    bad = [op for op in operations if op not in OPERATIONS]
    if bad or not operations:
        raise ValueError(f"operations {list(operations)}: choose from {', '.join(OPERATIONS)}")
    if insert_words not in INSERT_WORDS:
        raise ValueError(f"insert_words {insert_words!r}: choose from {', '.join(INSERT_WORDS)}")
    if n_copies < 1 or chunk_size < 1 or strength <= 0:
        raise ValueError("n_copies and chunk_size must be >= 1 and strength > 0")
    if "insert" in operations and insert_words == "corpus":
        pool = list(pool) if pool is not None else corpus_words(texts, clean)
        if not pool:
            raise ConfigError(
                "dbkd.insert_words: corpus needs words to insert, and the training texts have "
                "none after cleaning (EDA keeps the letters a-z only): set dbkd.clean: false or "
                "dbkd.insert_words: sentence"
            )
    tokens = [_words(t, clean) for t in texts]  # each text split and cleaned once
    if clean and texts and sum(not w for w in tokens) > len(texts) / 2:
        raise ConfigError(
            "most training texts have no letters a-z, which EDA's cleaning keeps: every copy "
            "would be the empty text and the teacher's decisions one label per sentence; set "
            "dbkd.clean: false for text outside the Latin alphabet"
        )
    rng = np.random.default_rng(seed)
    out: list[list[str]] = []
    for start in range(0, len(texts), chunk_size):
        a_ins = draw_strength(rng, strength) if "insert" in operations else 0.0
        a_swap = draw_strength(rng, strength) if "swap" in operations else 0.0
        p_del = draw_strength(rng, a_swap or strength) if "delete" in operations else 0.0
        for text, words in zip(texts[start : start + chunk_size],
                               tokens[start : start + chunk_size], strict=True):  # fmt: skip
            if not words or n_copies == 1:  # nothing to perturb: EDA repeats the sentence
                out.append([" ".join(words) if words else text] * n_copies)
                continue
            try:
                versions = perturb_sentence(
                    words, n_copies - 1, rng, alpha_insert=a_ins, alpha_swap=a_swap,
                    p_delete=p_del, insert_words=insert_words, pool=pool or (),
                )  # fmt: skip
            except ValueError:  # every drawn strength rounds to nothing for this sentence
                versions = [list(words)] * (n_copies - 1)
            out.append([" ".join(v) for v in versions] + [" ".join(words)])
    return out
