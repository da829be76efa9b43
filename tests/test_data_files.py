"""Generic CSV / TSV / JSONL / JSON-array loader, the dataset-name dispatcher, and its errors."""

import csv
import json

import pytest

from opdf.data import load_text_dataset


def _csv(path, rows, columns):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    return path


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _rows(n, labels=("neg", "pos")):
    return [
        {"review": f"text number {i}, with a comma", "other": f"pair {i}", "y": labels[i % 2]}
        for i in range(n)
    ]


def test_json_array_file_matches_the_same_rows_as_json_lines(tmp_path):
    rows = _rows(40)
    array = tmp_path / "reviews.json"
    array.write_text(json.dumps(rows, indent=2), encoding="utf-8")  # pretty-printed array
    lines = _jsonl(tmp_path / "lines.json", rows)  # JSON lines under a .json name still work
    a = load_text_dataset(array, text_column="review", label_column="y")
    b = load_text_dataset(lines, text_column="review", label_column="y")
    for split in ("train", "dev", "test"):
        assert a[split].texts == b[split].texts and a[split].labels == b[split].labels
    assert a.label_names == ["neg", "pos"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"review": "a", "y": "pos"}, ["not", "an", "object"]]))
    with pytest.raises(ValueError, match="item 1 is a list"):
        load_text_dataset(bad, text_column="review", label_column="y")
    bom = tmp_path / "bom.json"
    bom.write_text("\ufeff" + json.dumps(rows), encoding="utf-8")  # Excel/Windows editors
    c = load_text_dataset(bom, text_column="review", label_column="y")
    assert c.train.texts == a.train.texts
    columns = tmp_path / "columns.json"  # pandas' default to_json(): one object of columns
    columns.write_text(json.dumps({"review": {"0": "a", "1": "b"}, "y": {"0": "pos", "1": "neg"}}))
    with pytest.raises(ValueError, match="orient=.records"):
        load_text_dataset(columns, text_column="review", label_column="y")
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    with pytest.raises(ValueError, match="array is empty"):
        load_text_dataset(empty, text_column="review", label_column="y")
    broken = tmp_path / "broken.json"
    broken.write_text('[{"review": "a", "y": "pos"},\n {oops}]')
    with pytest.raises(ValueError, match="line 2: not valid JSON"):
        load_text_dataset(broken, text_column="review", label_column="y")


def test_single_csv_string_labels_is_split_stratified_and_deterministic(tmp_path):
    path = _csv(tmp_path / "reviews.csv", _rows(40), ["review", "other", "y"])
    a = load_text_dataset(path, text_column="review", label_column="y")
    b = load_text_dataset(str(path), text_column="review", label_column="y")
    assert a.sizes() == {"train": 32, "dev": 4, "test": 4}
    assert a.label_names == ["neg", "pos"] and a.num_labels == 2 and not a.is_regression
    for split in ("train", "dev", "test"):
        assert a[split].texts == b[split].texts
        assert a[split].labels.count(0) == a[split].labels.count(1)  # stratified
        assert a[split].text_pairs is None
    all_texts = a.train.texts + a.dev.texts + a.test.texts
    assert sorted(all_texts) == sorted(r["review"] for r in _rows(40))  # a partition
    assert a.name == "reviews.csv" and a.main_metric == "accuracy"
    c = load_text_dataset(path, text_column="review", label_column="y", split_seed=7)
    assert c.test.texts != a.test.texts


def test_jsonl_int_labels_and_text_pairs(tmp_path):
    rows = [{"s1": f"a{i}", "s2": f"b{i}", "label": i % 3} for i in range(30)]
    ds = load_text_dataset(
        _jsonl(tmp_path / "nli.jsonl", rows), text_column="s1", text_pair_column="s2"
    )
    assert ds.num_labels == 3 and ds.label_names is None
    assert ds.sizes() == {"train": 24, "dev": 3, "test": 3}
    for split in ds.splits.values():
        for t, p, y in zip(split.texts, split.text_pairs, split.labels, strict=True):
            i = int(t[1:])
            assert p == f"b{i}" and y == i % 3


def test_regression_labels(tmp_path):
    rows = [{"text": f"t{i}", "score": f"{i / 10:.1f}"} for i in range(20)]
    ds = load_text_dataset(
        _csv(tmp_path / "r.csv", rows, ["text", "score"]), label_column="score", task="regression"
    )
    assert ds.is_regression and ds.num_labels == 1 and ds.main_metric == "combined"
    assert all(isinstance(v, float) for v in ds.train.labels)
    assert sorted(ds.train.labels + ds.dev.labels + ds.test.labels) == [i / 10 for i in range(20)]
    with pytest.raises(
        ValueError, match="data row 1 \\(line 2\\): label 'high' is not a finite number"
    ):
        load_text_dataset(
            _csv(tmp_path / "bad.csv", [{"text": "x", "score": "high"}] * 3, ["text", "score"]),
            label_column="score",
            task="regression",
        )


def test_folder_with_train_dev_test_files(tmp_path):
    _csv(tmp_path / "train.csv", _rows(10), ["review", "other", "y"])
    _jsonl(tmp_path / "validation.jsonl", _rows(4))
    _csv(tmp_path / "test.tsv", [], ["review", "other", "y"])
    (tmp_path / "test.tsv").write_text("review\tother\ty\nfine\tp\tpos\nbad\tp\tneg\n")
    ds = load_text_dataset(tmp_path, text_column="review", label_column="y")
    assert ds.sizes() == {"train": 10, "dev": 4, "test": 2}
    assert ds.test.texts == ["fine", "bad"] and ds.test.labels == [1, 0]


def test_folder_train_dev_only_halves_dev_and_train_test_only_splits_dev_from_train(tmp_path):
    a = tmp_path / "a"
    a.mkdir()
    _csv(a / "train.csv", _rows(10), ["review", "other", "y"])
    _csv(a / "dev.csv", _rows(5), ["review", "other", "y"])
    ds = load_text_dataset(a, text_column="review", label_column="y")
    assert ds.sizes() == {"train": 10, "dev": 3, "test": 2}
    assert ds.dev.texts + ds.test.texts == [r["review"] for r in _rows(5)]
    b = tmp_path / "b"
    b.mkdir()
    _csv(b / "train.csv", _rows(20), ["review", "other", "y"])
    _csv(b / "test.csv", _rows(4), ["review", "other", "y"])
    ds = load_text_dataset(b, text_column="review", label_column="y")
    assert ds.sizes() == {"train": 18, "dev": 2, "test": 4}


def test_label_names_fix_the_order(tmp_path):
    path = _csv(tmp_path / "x.csv", _rows(10), ["review", "other", "y"])
    ds = load_text_dataset(path, text_column="review", label_column="y", label_names=["pos", "neg"])
    assert ds.label_names == ["pos", "neg"]
    full = ds.train.texts + ds.dev.texts + ds.test.texts
    labels = ds.train.labels + ds.dev.labels + ds.test.labels
    for t, lab in zip(full, labels, strict=True):
        assert lab == (0 if int(t.split()[2][:-1]) % 2 else 1)  # odd rows are "pos" -> 0
    with pytest.raises(
        ValueError, match=r"data row 2 \(line 3\): label 'pos' is not in label_names"
    ):
        load_text_dataset(path, text_column="review", label_column="y", label_names=["neg", "x"])


def test_subsampling_is_stratified_and_seeded(tmp_path):
    path = _csv(tmp_path / "x.csv", _rows(100), ["review", "other", "y"])
    kw = dict(text_column="review", label_column="y", max_train_samples=20, max_eval_samples=4)
    a = load_text_dataset(path, **kw)
    b = load_text_dataset(path, **kw)
    c = load_text_dataset(path, seed=1, **kw)
    assert a.sizes() == {"train": 20, "dev": 4, "test": 4}
    assert a.train.labels.count(0) == 10
    assert a.train.texts == b.train.texts and a.train.texts != c.train.texts


def test_errors_name_what_is_wrong(tmp_path):
    path = _csv(tmp_path / "x.csv", _rows(10), ["review", "other", "y"])
    with pytest.raises(
        ValueError, match="missing column 'text'; available columns: review, other, y"
    ):
        load_text_dataset(path)
    with pytest.raises(ValueError, match="missing column 'label'"):
        load_text_dataset(path, text_column="review")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_text_dataset(tmp_path / "missing.csv")
    with pytest.raises(ValueError, match="unknown dataset 'sst-3'.*rt-polarity, imdb, glue:cola"):
        load_text_dataset("sst-3")
    with pytest.raises(ValueError, match="unknown option.*text_colum.*valid options: text_column"):
        load_text_dataset(path, text_colum="review")
    with pytest.raises(ValueError, match="task must be"):
        load_text_dataset(path, text_column="review", label_column="y", task="ranking")
    with pytest.raises(ValueError, match="unknown metric 'auc'"):
        load_text_dataset(path, text_column="review", label_column="y", metric="auc")
    empty = tmp_path / "e"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no train file"):
        load_text_dataset(empty)
    _csv(empty / "train.csv", [], ["text", "label"])
    with pytest.raises(ValueError, match="empty"):
        load_text_dataset(empty)
    blank = _csv(tmp_path / "blank.csv", [{"text": "a", "label": ""}], ["text", "label"])
    with pytest.raises(ValueError, match="1 row\\(s\\) have no label"):
        load_text_dataset(blank)
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"text": "a", "label": 1}\n{oops\n')
    with pytest.raises(ValueError, match="line 2: not valid JSON"):
        load_text_dataset(bad_json)
    neg = _jsonl(tmp_path / "neg.jsonl", [{"text": "a", "label": -1}] * 4)
    with pytest.raises(ValueError, match=">= 0"):
        load_text_dataset(neg)
