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
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Sequence
from pathlib import Path

from opdf.data.dataset import TextDataset, TextSplit, fraction_sizes, split_indices
from opdf.data.metrics import get_metric
from opdf.errors import OpdfError

EXTENSIONS = (".csv", ".tsv", ".jsonl", ".json")
DEV_NAMES = ("dev", "validation", "valid", "val")
_INT = re.compile(r"^[+-]?\d+$")


def is_data_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in EXTENSIONS


def read_records(path: str | Path) -> tuple[list[dict], list[str]]:
    """Rows of a CSV/TSV/JSONL file (or a ``.json`` file holding one array of objects, as
    ``pandas.DataFrame.to_json(orient="records")`` writes) as dicts, and the column names."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    ext = path.suffix.lower()
    if ext in (".csv", ".tsv"):
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t" if ext == ".tsv" else ",")
            rows = list(reader)
            columns = list(reader.fieldnames or [])
        return rows, columns
    if ext == ".json":
        array = _json_array(path)
        if array is not None:
            return array
    if ext in (".jsonl", ".json"):
        rows, columns = [], {}
        with open(path, encoding="utf-8-sig") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise OpdfError(f"{path}, line {lineno}: not valid JSON ({e.msg})") from None
                if not isinstance(row, dict):
                    raise OpdfError(f"{path}, line {lineno}: expected a JSON object per line")
                rows.append(row)
                columns.update(dict.fromkeys(row))
        return rows, list(columns)
    raise OpdfError(f"{path}: unsupported file type {ext!r}; use one of {', '.join(EXTENSIONS)}")


def _json_array(path: Path) -> tuple[list[dict], list[str]] | None:
    """A ``.json`` file that is one array of objects; None when it is JSON lines instead."""
    with open(path, encoding="utf-8-sig") as f:
        head = f.read(4096).lstrip()
    if head.startswith("{") and "\n{" not in head.rstrip():
        try:  # one object for the whole file: pandas' default to_json(orient="columns")
            with open(path, encoding="utf-8-sig") as f:
                whole = json.load(f)
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
        with open(path, encoding="utf-8-sig") as f:
            data = json.load(f)
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


def _column_values(rows, columns, column, path) -> tuple[list, list[int]]:
    if column not in columns:
        raise OpdfError(
            f"{path}: missing column {column!r}; available columns: {', '.join(map(str, columns))}"
        )
    values = [r.get(column) for r in rows]
    missing = [i for i, v in enumerate(values) if v is None or (isinstance(v, str) and v == "")]
    return values, missing


def _read_split(path: Path, text_column, text_pair_column, label_column):
    rows, columns = read_records(path)
    texts, missing_t = _column_values(rows, columns, text_column, path)
    if missing_t:
        raise OpdfError(
            f"{path}: {len(missing_t)} row(s) have no {text_column!r} (first data row "
            f"{missing_t[0] + 1})"
        )
    pairs = None
    if text_pair_column is not None:
        pairs, missing_p = _column_values(rows, columns, text_pair_column, path)
        if missing_p:
            raise OpdfError(
                f"{path}: {len(missing_p)} row(s) have no {text_pair_column!r} (first data row "
                f"{missing_p[0] + 1})"
            )
        pairs = [str(p) for p in pairs]
    labels, missing_l = _column_values(rows, columns, label_column, path)
    if missing_l:
        raise OpdfError(
            f"{path}: {len(missing_l)} row(s) have no label in {label_column!r} (first data row "
            f"{missing_l[0] + 1})"
        )
    return [str(t) for t in texts], pairs, labels


def _is_int_label(v) -> bool:
    if isinstance(v, bool):
        return False
    return isinstance(v, int) or (isinstance(v, str) and bool(_INT.match(v.strip())))


def _encode_labels(raw: dict[str, list], task: str, label_names, sources: dict[str, Path]):
    """Raw label lists per split -> (encoded lists per split, num_labels, label names)."""
    if task == "regression":
        out = {}
        for split, values in raw.items():
            enc = []
            for i, v in enumerate(values):
                try:
                    enc.append(float(v))
                except (TypeError, ValueError):
                    raise OpdfError(
                        f"{sources[split]}: label {v!r} in data row {i + 1} is not a number "
                        "(task='regression')"
                    ) from None
            out[split] = enc
        return out, 1, None
    if task != "classification":
        raise OpdfError(f"task must be 'classification' or 'regression', got {task!r}")
    every = [v for values in raw.values() for v in values]
    if label_names is not None:
        names = [str(n) for n in label_names]
        lookup = {n: i for i, n in enumerate(names)}
        out = {}
        for split, values in raw.items():
            bad = sorted({str(v) for v in values} - set(lookup))
            if bad:
                raise OpdfError(f"{sources[split]}: labels {bad} are not in label_names {names}")
            out[split] = [lookup[str(v)] for v in values]
        return out, len(names), names
    if all(_is_int_label(v) for v in every):
        out = {s: [int(v) for v in values] for s, values in raw.items()}
        lo = min(min(v) for v in out.values() if v)
        if lo < 0:
            raise OpdfError(f"integer labels must be >= 0 (class ids), found {lo}")
        n = max(max(v) for v in out.values() if v) + 1
        return out, max(n, 2), None
    names = sorted({str(v) for v in every})
    lookup = {n: i for i, n in enumerate(names)}
    return {s: [lookup[str(v)] for v in values] for s, values in raw.items()}, len(names), names


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
        files = {k: v for k, v in files.items() if v is not None}
    elif path.is_file():
        files = {"train": path}
    else:
        raise FileNotFoundError(f"data path {path} does not exist")
    if text_pair_column is not None and text_pair_column == text_column:
        raise OpdfError(f"text_pair_column and text_column are both {text_column!r}")

    cols = (text_column, text_pair_column, label_column)
    read = {k: _read_split(p, *cols) for k, p in files.items()}
    encoded, num_labels, names = _encode_labels(
        {k: v[2] for k, v in read.items()}, task, label_names, files
    )
    splits = {k: TextSplit(read[k][0], encoded[k], read[k][1]) for k in read}
    regression = num_labels == 1
    how = "files"
    if "test" not in splits and "dev" in splits:
        dev = splits["dev"]
        n_test = len(dev) // 2
        splits["dev"], splits["test"] = (
            dev.select(range(len(dev) - n_test)),
            dev.select(range(len(dev) - n_test, len(dev))),
        )
        how = "dev halves"
    elif "dev" not in splits:
        full = splits["train"]
        test_frac = 0.0 if "test" in splits else test_fraction
        sizes = fraction_sizes(len(full), dev_fraction, test_frac)
        parts = split_indices(full.labels, sizes, split_seed, regression)
        splits["train"], splits["dev"] = full.select(parts[0]), full.select(parts[1])
        if "test" not in splits:
            splits["test"] = full.select(parts[2])
        how = f"split {sizes} (seed {split_seed})"
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
