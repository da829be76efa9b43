"""Bad data files: one clear error naming the file and the row (API: OpdfError; CLI: exit 2)."""

from __future__ import annotations

import json
import re

import pytest

from opdf.cli import main
from opdf.data import load_glue, load_text_dataset
from opdf.errors import OpdfError


def _write(path, text: str | bytes):
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _good_lines(n: int = 20) -> str:
    return "".join(f"sentence number {i},{'pos' if i % 2 else 'neg'}\n" for i in range(n))


def _raises(path, pattern: str, *, named=None, **options):
    """Loading ``path`` fails with a message naming ``named`` (default: ``path``) and matching."""
    with pytest.raises(OpdfError) as exc:
        load_text_dataset(path, **options)
    message = str(exc.value)
    assert str(named or path) in message, message
    assert re.search(pattern, message), message
    return message


@pytest.mark.parametrize("cell", ['""', "   ", '"  \t "'])
def test_empty_or_blank_text_names_file_and_row(tmp_path, cell):
    path = _write(tmp_path / "x.csv", "text,label\n" + _good_lines(5) + f"{cell},pos\n")
    _raises(path, r"data row 6 \(line 7\): no text in 'text' \(empty or blank; 1 row")


def test_empty_text_pair_and_null_json_text(tmp_path):
    path = _write(tmp_path / "p.csv", "a,b,label\nx,y,pos\nx,,neg\n")
    _raises(path, r"data row 2 \(line 3\): no text in 'b'", text_column="a", text_pair_column="b")
    rows = [{"text": "fine", "label": 1}, {"text": None, "label": 0}]
    path = _write(tmp_path / "n.jsonl", "\n" + "".join(json.dumps(r) + "\n" for r in rows))
    _raises(path, r"data row 2 \(line 3\): no text")
    path = _write(tmp_path / "l.jsonl", json.dumps({"text": ["a", "list"], "label": 1}) + "\n")
    _raises(path, r"data row 1 \(line 1\): 'text' holds a JSON list, not a text")


def test_missing_label_names_the_row(tmp_path):
    path = _write(tmp_path / "x.csv", "text,label\n" + _good_lines(3) + "no label here,\n")
    _raises(path, r"data row 4 \(line 5\): no label in 'label' \(1 row\(s\) have no label\)")
    path = _write(tmp_path / "x.jsonl", '{"text": "a", "label": 1}\n{"text": "b"}\n')
    _raises(path, r"data row 2 \(line 2\): no label")
    path = _write(tmp_path / "d.jsonl", '{"text": "a", "label": {"x": 1}}\n')
    _raises(path, r"data row 1 \(line 1\): the label is a JSON dict")


def test_unknown_labels_name_the_file_and_row(tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    _write(folder / "train.csv", "text,label\n" + _good_lines(10))
    _write(folder / "dev.csv", "text,label\n" + _good_lines(4) + "a typo,postive\n")
    _write(folder / "test.csv", "text,label\n" + _good_lines(4))
    message = _raises(folder, r"data row 5 \(line 6\): label 'postive' never occurs",
                      named=folder / "dev.csv")  # fmt: skip
    assert str(folder / "train.csv") in message
    with pytest.raises(OpdfError, match=r"dev.csv, data row 5 \(line 6\): label 'postive' is not"):
        load_text_dataset(folder, label_names=["neg", "pos"])
    # integer class ids too: a dev-only id would add an output the student never trains
    _write(folder / "train.csv", "text,label\n" + "".join(f"s {i},{i % 2}\n" for i in range(10)))
    _write(folder / "dev.csv", "text,label\ns,0\ns,7\n")
    _write(folder / "test.csv", "text,label\ns,0\ns,1\n")
    _raises(folder, r"data row 2 \(line 3\): label '7' never occurs", named=folder / "dev.csv")
    _write(folder / "dev.csv", "text,label\ns,0\ns,-1\n")
    _raises(folder, r"data row 2 \(line 3\): integer labels must be >= 0", named=folder / "dev.csv")


def test_one_class_label_column(tmp_path):
    path = _write(tmp_path / "x.csv", "text,label\n" + "".join(f"s {i},pos\n" for i in range(20)))
    _raises(path, r"one class \('pos'\) in all 20 rows; a classifier needs at least two")
    path = _write(tmp_path / "i.csv", "text,label\n" + "".join(f"s {i},1\n" for i in range(20)))
    _raises(path, r"one class \('1'\)")
    _raises(path, "one class", label_names=["1"])


def test_non_utf8_bytes_name_file_line_and_byte(tmp_path):
    body = ("text,label\n" + _good_lines(3)).encode() + "caf\u00e9 au lait,pos\n".encode("latin-1")
    path = _write(tmp_path / "latin1.csv", body)
    _raises(path, r"line 5: byte 0xe9 at offset \d+ is not UTF-8; save the file as UTF-8")
    path = _write(
        tmp_path / "x.jsonl", b'{"text": "a", "label": 1}\n{"text": "\xff", "label": 0}\n'
    )
    _raises(path, r"line 2: byte 0xff")
    path = _write(tmp_path / "x.json", b'[{"text": "\xc3", "label": 1}]')
    _raises(path, r"line 1: byte 0xc3")
    glue = tmp_path / "SST-2"
    glue.mkdir()
    _write(glue / "train.tsv", b"sentence\tlabel\ngood\t1\nbad \x92 one\t0\n")
    _write(glue / "dev.tsv", b"sentence\tlabel\ngood\t1\nbad\t0\n")
    with pytest.raises(OpdfError, match=r"train.tsv, line 3: byte 0x92"):
        load_glue("sst2", glue)


def test_rows_with_too_many_fields_and_multiline_cells(tmp_path):
    path = _write(tmp_path / "x.csv", "text,label\ngood film,pos\ngreat, fun film,pos\n")
    _raises(path, r"line 3: 3 fields but the header has 2; quote fields that contain ','")
    # a quoted cell over two lines: later rows still report their real line
    path = _write(tmp_path / "m.csv", 'text,label\n"two\nlines",pos\ns,neg\n,pos\n')
    _raises(path, r"data row 3 \(line 5\): no text")


def test_regression_labels_must_be_finite(tmp_path):
    rows = "".join(f"s {i},{i / 10}\n" for i in range(10)) + "s,nan\n"
    path = _write(tmp_path / "r.csv", "text,score\n" + rows)
    _raises(path, r"data row 11 \(line 12\): label 'nan' is not a finite number",
            label_column="score", task="regression")  # fmt: skip


def test_cli_reports_bad_data_in_one_line_with_exit_2(tmp_path, capsys):
    bad = _write(tmp_path / "bad.csv", "text,label\n" + _good_lines(8) + "\u00a0,pos\n")
    argv = ["distill", "configs/smoke-kd.yaml", f"output_dir={tmp_path / 'run'}",
            f"data.name={bad}", "--no-progress"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("opdf distill: error: ") and f"{bad}, data row 9 (line 10)" in err
