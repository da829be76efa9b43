"""The one Markdown/CSV table renderer (opdf.report.render): the padded tables of reports and
the compact ones the benchmark scripts commit must keep their exact text."""

from __future__ import annotations

from opdf.report.render import csv_records, csv_rows, markdown_table, print_and_write
from opdf.report.tables import format_table


def test_compact_table_is_the_benchmarks_text():
    rows = [["kd step", "0.123", "2"], ["lgtm step", "0.456", ""]]
    old = ["| what | s | times per LGTM step |", "|---|---|---|"]
    old += ["| " + " | ".join(r) + " |" for r in rows]
    assert markdown_table(["what", "s", "times per LGTM step"], rows, pad=False) == "\n".join(old)


def test_compact_table_blank_cells_and_right_alignment():
    text = markdown_table(["check", "value", "target"], [["peak", "1.01", None]], pad=False,
                          right=[1, 2])  # fmt: skip
    assert text == "| check | value | target |\n|---|---:|---:|\n| peak | 1.01 | |"


def test_padded_table_aligns_columns():
    text = markdown_table(["variant", "n"], [["base", "3"], ["mpo-opdf", "12"]])
    assert text.splitlines() == [
        "| variant  | n  |",
        "|----------|----|",
        "| base     | 3  |",
        "| mpo-opdf | 12 |",
    ]
    assert markdown_table(["a", "bb"], []) == "| a | bb |\n|---|----|"


def test_csv_records_take_every_key_in_first_seen_order():
    text = csv_records([{"a": 1, "b": None}, {"b": 2, "c": "x"}])
    assert text.splitlines() == ["a,b,c", "1,,", ",2,x"]
    assert csv_rows(["k", "v"], [["lr", 1e-4], ["seed", None]]).splitlines() == [
        "k,v",
        "lr,0.0001",
        "seed,",
    ]


def test_run_table_keeps_its_text():
    rows = [{"run": "runs/a", "method": "kd", "variant": "base", "seed": 1, "dev": 0.81234,
             "test": 0.8, "metric": "accuracy", "train_params": 17_390_000,
             "inference_params": 17_390_000, "seconds_per_step": 0.75, "wall_time": 100.4,
             "test_std": 0.01}]  # fmt: skip
    assert format_table(rows).splitlines() == [
        "| run    | method | variant | seed | dev accuracy | test accuracy | train params "
        "| inference params | s/step | wall (s) |",
        "|--------|--------|---------|------|--------------|---------------|--------------"
        "|------------------|--------|----------|",
        "| runs/a | kd     | base    | 1    | 81.23        | 80.00 ± 1.00  | 17.39M       "
        "| 17.39M           | 0.750  | 100      |",
    ]
    assert format_table(rows, "csv").splitlines()[1] == (
        "runs/a,kd,base,1,0.81234,0.8,17390000,17390000,0.75,100.4,0.01"  # the spread: last
    )


def test_print_and_write(tmp_path, capsys):
    out = tmp_path / "new" / "table.md"
    print_and_write("| a |", out, newline=True)
    assert out.read_text() == "| a |\n"
    assert capsys.readouterr().out == "| a |\n"
    print_and_write("| b |", None)
    assert capsys.readouterr().out == "| b |\n"


def test_report_of_run_folders_skips_a_damaged_summary_by_name_and_groups_to_csv(tmp_path, capsys):
    """One half-written summary.json hid every other run; `{}` became a row labelled "base";
    the grouped CSV had no spread column and printed float noise."""
    import csv
    import io
    import json

    from opdf.cli import main

    for seed, test in ((1, 0.71), (2, 0.74)):
        run = tmp_path / f"run{seed}"
        run.mkdir()
        summary = {"method": "kd", "overparam": "none", "seed": seed, "dev": {"accuracy": 0.7},
                   "test": {"accuracy": test}, "seconds_per_step": 0.0321 + 0.0321,
                   "wall_time": 0.387}  # fmt: skip
        (run / "summary.json").write_text(json.dumps(summary))
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "summary.json").write_text('{"method": "kd", ')
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "summary.json").write_text("{}")
    assert main(["report", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert out.count("| kd ") == 2 and "| 0.4 " in out  # both runs; wall 0.387 s is not "0"
    assert "opdf report: warning: skipped " in err and "cut/summary.json: not valid JSON" in err
    assert "warnings.warn" not in err and "UserWarning" not in err  # one line, not Python's form
    assert "empty/summary.json: not an opdf run summary" in err and "empty" not in out
    assert main(["report", str(tmp_path), "--group", "--format", "csv"]) == 0
    head, line = list(csv.reader(io.StringIO(capsys.readouterr().out)))[:2]
    assert head[4:6] == ["dev", "test"] and head[-1] == "test_std"  # added last: positions hold
    assert line[4:6] == ["0.7", "0.725"] and line[-1] == "0.0212132034"
    assert "0.0642" in line  # not 0.06420000000000001
    assert main(["report", str(tmp_path / "cut")]) == 2  # nothing else to show: the error
    assert "not valid JSON" in capsys.readouterr().err
