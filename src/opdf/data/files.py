"""Bring-your-own data: CSV / TSV / JSONL / JSON-array files with named text, text-pair and label
columns.

``path`` is either

* one file: it is split into train/dev/test (``dev_fraction``/``test_fraction``, default 10 % each,
  stratified by label, fixed ``split_seed``);
* a folder with ``train.<ext>`` and optionally ``dev.<ext>`` (or ``validation``/``valid``) and
  ``test.<ext>``: with all three they are used as is; with train and dev only, dev is cut into
  halves (dev, test) as for GLUE; with train only, train is split as for one file.

Labels may be ints (used as class ids, ``num_labels = max + 1``) or strings (class ids in sorted
order, or in the order of ``label_names`` when given). ``task="regression"`` reads float labels and
sets ``num_labels = 1``.

Bad rows are an :class:`~opdf.errors.OpdfError` (a ``ValueError``) naming the file, the data
row and its line: empty or blank texts, missing labels, bytes that are not UTF-8, rows with more
fields than the header, labels outside ``label_names`` or (without ``label_names``) a class that
train never shows, a label column with one class, non-finite regression targets.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from opdf.data.dataset import TextDataset, TextSplit, fraction_sizes, split_indices
from opdf.data.metrics import get_metric
from opdf.errors import OpdfError

EXTENSIONS = (".csv", ".tsv", ".jsonl", ".json")
DEV_NAMES = ("dev", "validation", "valid", "val")
_INT = re.compile(r"^[+-]?\d+$")


def is_data_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in EXTENSIONS


def read_text(path: str | Path) -> str:
    """A whole text file decoded as UTF-8 (a BOM is dropped). Bytes that are not UTF-8 are an
    error naming the file, line and byte, not a bare ``UnicodeDecodeError``."""
    path = Path(path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise OpdfError(
            f"{path}, line {line}: byte 0x{data[e.start]:02x} at offset {e.start} is not UTF-8; "
            "save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        ) from None


def read_records(path: str | Path) -> tuple[list[dict], list[str]]:
    """Rows of a CSV/TSV/JSONL file (or a ``.json`` file holding one array of objects, as
    ``pandas.DataFrame.to_json(orient="records")`` writes) as dicts, and the column names."""
    rows, columns, _lines = _records(path)
    return rows, columns


def _records(path: str | Path) -> tuple[list[dict], list[str], list[int | None]]:
    """:func:`read_records` plus the file line of each row (None where unknown), for errors."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    ext = path.suffix.lower()
    if ext not in EXTENSIONS:
        raise OpdfError(
            f"{path}: unsupported file type {ext!r}; use one of {', '.join(EXTENSIONS)}"
        )
    text = read_text(path)
    if ext in (".csv", ".tsv"):
        return _csv_records(path, text, "\t" if ext == ".tsv" else ",")
    if ext == ".json":
        array = _json_array(path, text)
        if array is not None:
            return (*array, [None] * len(array[0]))
    rows, columns, lines = [], {}, []
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise OpdfError(f"{path}, line {lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise OpdfError(f"{path}, line {lineno}: expected a JSON object per line")
        rows.append(row)
        lines.append(lineno)
        columns.update(dict.fromkeys(row))
    return rows, list(columns), lines


def _csv_records(path: Path, text: str, delimiter: str):
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows, lines = [], []
    try:
        for row in reader:
            if None in row:  # more fields than the header names
                raise OpdfError(
                    f"{path}, line {reader.line_num}: {len(row) - 1 + len(row[None])} fields but "
                    f"the header has {len(reader.fieldnames or [])}; quote fields that contain "
                    f"{delimiter!r}"
                )
            rows.append(row)
            lines.append(reader.line_num)
    except csv.Error as e:
        raise OpdfError(f"{path}, line {reader.line_num}: {e}") from None
    return rows, list(reader.fieldnames or []), lines


def _json_array(path: Path, text: str) -> tuple[list[dict], list[str]] | None:
    """A ``.json`` file that is one array of objects; None when it is JSON lines instead."""
    head = text[:4096].lstrip()
    if head.startswith("{") and "\n{" not in head.rstrip():
        try:  # one object for the whole file: pandas' default to_json(orient="columns")
            whole = json.loads(text)
        except json.JSONDecodeError:
            return None  # JSON lines after all
        if isinstance(whole, dict) and whole and all(isinstance(v, dict) for v in whole.values()):
            raise OpdfError(
                f"{path}: one JSON object for the whole file; write one object per row, as an "
                'array (pandas: to_json(orient="records")) or one per line (lines=True)'
            )
        return None
    if not head.startswith("["):
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise OpdfError(f"{path}, line {e.lineno}: not valid JSON ({e.msg})") from None
    if not data:
        raise OpdfError(f"{path}: the JSON array is empty: no rows")
    bad = next((i for i, row in enumerate(data) if not isinstance(row, dict)), None)
    if bad is not None:
        raise OpdfError(
            f"{path}: expected an array of JSON objects, but item {bad} is a "
            f"{type(data[bad]).__name__}"
        )
    columns: dict[str, None] = {}
    for row in data:
        columns.update(dict.fromkeys(row))
    return data, list(columns)


def _find(folder: Path, stems: Sequence[str]) -> Path | None:
    for stem in stems:
        for ext in EXTENSIONS:
            if (folder / f"{stem}{ext}").is_file():
                return folder / f"{stem}{ext}"
    return None


@dataclass
class _Raw:
    """One file's columns as read, with the file line of each row for error messages."""

    path: Path
    texts: list[str]
    pairs: list[str] | None
    labels: list
    lines: list[int | None]

    def where(self, i: int) -> str:
        line = self.lines[i] if i < len(self.lines) else None
        return f"{self.path}, data row {i + 1}" + (f" (line {line})" if line else "")


def _blank(v) -> bool:
    return v is None or (isinstance(v, str) and not v.strip())


def _column_values(rows, columns, column, path) -> list:
    if column not in columns:
        raise OpdfError(
            f"{path}: missing column {column!r}; available columns: {', '.join(map(str, columns))}"
        )
    return [r.get(column) for r in rows]


def _blank_rows(values: list) -> list[int]:
    """Rows with no value in a column: absent, null, empty or whitespace only."""
    return [i for i, v in enumerate(values) if v is None or (isinstance(v, str) and not v.strip())]


def _texts(raw: _Raw, values: list, column: str) -> list[str]:
    """Texts as strings; empty, blank or non-text cells are an error naming the first one."""
    missing = _blank_rows(values)
    if missing:
        raise OpdfError(
            f"{raw.where(missing[0])}: no text in {column!r} (empty or blank; {len(missing)} "
            "row(s) in all); remove those rows or fill them in"
        )
    for i, v in enumerate(values):
        if isinstance(v, dict | list | bool):
            raise OpdfError(
                f"{raw.where(i)}: {column!r} holds a JSON {type(v).__name__}, not a text"
            )
    return [str(v) for v in values]


def _read_split(path: Path, text_column, text_pair_column, label_column) -> _Raw:
    rows, columns, lines = _records(path)
    raw = _Raw(path, [], None, [], lines)
    texts = _column_values(rows, columns, text_column, path)
    pairs = None
    if text_pair_column is not None:
        pairs = _column_values(rows, columns, text_pair_column, path)
    labels = _column_values(rows, columns, label_column, path)
    raw.texts = _texts(raw, texts, text_column)
    if pairs is not None:
        raw.pairs = _texts(raw, pairs, text_pair_column)
    missing = _blank_rows(labels)
    if missing:
        raise OpdfError(
            f"{raw.where(missing[0])}: no label in {label_column!r} ({len(missing)} row(s) have "
            "no label)"
        )
    bad = next((i for i, v in enumerate(labels) if isinstance(v, dict | list)), None)
    if bad is not None:
        raise OpdfError(
            f"{raw.where(bad)}: the label is a JSON {type(labels[bad]).__name__}; labels are "
            "class names, class ids or (task='regression') numbers"
        )
    raw.labels = labels
    return raw


def _is_int_label(v) -> bool:
    if isinstance(v, bool):
        return False
    return isinstance(v, int) or (isinstance(v, str) and bool(_INT.match(v.strip())))


def _regression_labels(raw: _Raw) -> list[float]:
    out = []
    for i, v in enumerate(raw.labels):
        try:
            value = float(v) if not isinstance(v, bool) else math.nan
        except (TypeError, ValueError, OverflowError):
            value = None
        if value is None or not math.isfinite(value):
            raise OpdfError(
                f"{raw.where(i)}: label {v!r} is not a finite number (task='regression')"
            )
        out.append(value)
    return out


def _encode_labels(read: dict[str, _Raw], task: str, label_names):
    """Raw labels per split -> (encoded lists per split, num_labels, label names).

    Every class must occur in train (a class seen only in dev/test is a typo or a mislabelled
    file), and train needs at least two classes.
    """
    if task == "regression":
        return {k: _regression_labels(r) for k, r in read.items()}, 1, None
    if task != "classification":
        raise OpdfError(f"task must be 'classification' or 'regression', got {task!r}")
    every = [v for r in read.values() for v in r.labels]
    if label_names is not None:
        names = [str(n) for n in label_names]
        lookup = {n: i for i, n in enumerate(names)}
        for r in read.values():
            bad = [i for i, v in enumerate(r.labels) if str(v) not in lookup]
            if bad:
                unknown = sorted({str(r.labels[i]) for i in bad})
                raise OpdfError(
                    f"{r.where(bad[0])}: label {str(r.labels[bad[0]])!r} is not in label_names "
                    f"{names} ({len(bad)} row(s) with labels {unknown[:10]})"
                )
        out = {k: [lookup[str(v)] for v in r.labels] for k, r in read.items()}
        n, names_out = len(names), names
    elif all(_is_int_label(v) for v in every):
        out = {k: [int(v) for v in r.labels] for k, r in read.items()}
        for k, r in read.items():
            neg = next((i for i, v in enumerate(out[k]) if v < 0), None)
            if neg is not None:
                raise OpdfError(
                    f"{r.where(neg)}: integer labels must be >= 0 (class ids), found {out[k][neg]}"
                )
        n, names_out = max(max(v) for v in out.values() if v) + 1, None
    else:
        names_out = sorted({str(v) for v in every})
        lookup = {name: i for i, name in enumerate(names_out)}
        out = {k: [lookup[str(v)] for v in r.labels] for k, r in read.items()}
        n = len(names_out)
    train = read["train"]
    seen = set(out["train"])
    if len(seen) < 2 and train.labels:
        raise OpdfError(
            f"{train.path}: the label column has one class ({str(train.labels[0])!r}) in all "
            f"{len(train.labels)} rows; a classifier needs at least two classes (numbers to "
            "predict: task='regression')"
        )
    if label_names is None:
        for k, r in read.items():
            bad = next((i for i, v in enumerate(out[k]) if v not in seen), None)
            if bad is not None:
                raise OpdfError(
                    f"{r.where(bad)}: label {str(r.labels[bad])!r} never occurs in {train.path}; "
                    "every class needs training examples (give label_names to allow it)"
                )
    return out, max(n, 2), names_out


def _split_files(path: Path) -> dict[str, Path]:
    """The file of each split in ``path``: a folder's train/dev/test files, or one file (train)."""
    if path.is_dir():
        files = {
            "train": _find(path, ["train"]),
            "dev": _find(path, DEV_NAMES),
            "test": _find(path, ["test"]),
        }
        if files["train"] is None:
            raise FileNotFoundError(
                f"{path}: no train file (expected train{{{','.join(EXTENSIONS)}}})"
            )
        return {k: v for k, v in files.items() if v is not None}
    if path.is_file():
        return {"train": path}
    raise FileNotFoundError(f"data path {path} does not exist")


def _complete_splits(splits: dict[str, TextSplit], dev_fraction: float, test_fraction: float,
                     split_seed: int, regression: bool) -> str:  # fmt: skip
    """Fill in a missing dev/test split in place: halve dev into dev and test, or carve them out
    of train (stratified with ``split_seed``); returns how (``info["splits"]``)."""
    if "test" not in splits and "dev" in splits:
        dev = splits["dev"]
        n_test = len(dev) // 2
        splits["dev"], splits["test"] = (
            dev.select(range(len(dev) - n_test)),
            dev.select(range(len(dev) - n_test, len(dev))),
        )
        return "dev halves"
    if "dev" not in splits:
        full = splits["train"]
        test_frac = 0.0 if "test" in splits else test_fraction
        sizes = fraction_sizes(len(full), dev_fraction, test_frac)
        parts = split_indices(full.labels, sizes, split_seed, regression)
        splits["train"], splits["dev"] = full.select(parts[0]), full.select(parts[1])
        if "test" not in splits:
            splits["test"] = full.select(parts[2])
        return f"split {sizes} (seed {split_seed})"
    return "files"


def load_file_dataset(
    path: str | Path,
    text_column: str = "text",
    text_pair_column: str | None = None,
    label_column: str = "label",
    task: str = "classification",
    label_names: Sequence[str] | None = None,
    metric: str | None = None,
    dev_fraction: float = 0.1,
    test_fraction: float = 0.1,
    split_seed: int = 42,
) -> TextDataset:
    """Load a generic CSV/TSV/JSONL dataset (one file or a folder); see the module docstring."""
    path = Path(path).expanduser()
    files = _split_files(path)
    if text_pair_column is not None and text_pair_column == text_column:
        raise OpdfError(f"text_pair_column and text_column are both {text_column!r}")

    cols = (text_column, text_pair_column, label_column)
    read = {k: _read_split(p, *cols) for k, p in files.items()}
    encoded, num_labels, names = _encode_labels(read, task, label_names)
    splits = {k: TextSplit(read[k].texts, encoded[k], read[k].pairs) for k in read}
    regression = num_labels == 1
    how = _complete_splits(splits, dev_fraction, test_fraction, split_seed, regression)
    fn, main = get_metric(metric or ("pearson_spearman" if regression else "accuracy"))
    return TextDataset(
        name=path.name,
        train=splits["train"],
        dev=splits["dev"],
        test=splits["test"],
        num_labels=num_labels,
        metric=fn,
        main_metric=main,
        label_names=names,
        info={"source": str(path), "files": {k: str(v) for k, v in files.items()}, "splits": how},
    )
