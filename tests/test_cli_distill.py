"""The CLI verbs end to end on the smoke config: distill, finetune, merge, report, methods."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from opdf.cli import main


@pytest.mark.parametrize("verb", ["distill", "finetune", "merge", "report", "methods"])
def test_every_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as exc:
        main([verb, "--help"])
    assert exc.value.code == 0
    assert len(capsys.readouterr().out) > 200


def test_a_misspelled_verb_gets_a_suggestion(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["distil", "configs/smoke-kd.yaml"])
    assert exc.value.code == 2
    assert "unknown verb 'distil' (did you mean 'distill'?)" in capsys.readouterr().err


def test_methods_lists_every_method_with_its_options(capsys):
    from opdf.distill import method_names, methods

    assert method_names() == ["adkd", "dbkd", "dkd", "kd", "lgtm", "theseus", "tinyvit"]
    assert main(["methods", "--brief"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [ln.split()[0] for ln in lines] == method_names()
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name, cls in methods().items():
        assert f"{name} " in out and cls.description in out
    assert "kd_alpha=0.7" in out and "operations=[insert, swap, delete]" in out  # dbkd
    assert "topk=null" in out and "ig_steps=1" in out  # adkd
    assert main(["methods", "--options"]) == 0
    assert "dbkd.insert_words: sentence  (str)" in capsys.readouterr().out


def test_distill_merge_report_finetune(tmp_path, capsys):
    run = tmp_path / "kd"
    argv = ["distill", "configs/smoke-kd.yaml", f"output_dir={run}", "max_steps=4",
            "eval_every=2", "checkpoint_every=2", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["method"] == "kd" and result["overparam"] == "mpo" and result["align"]
    for name in ("summary.json", "metrics.jsonl", "config.yaml", "student/config.json",
                 "checkpoints/last.pt", "checkpoints/best.pt"):  # fmt: skip
        assert (run / name).exists(), name

    # an existing run is never overwritten silently
    assert main(argv) == 2
    assert "already exists" in capsys.readouterr().err
    # --resume of a finished run is a clear error too; --overwrite replaces it
    assert main([*argv, "--resume"]) == 2
    assert "finished run" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0
    capsys.readouterr()

    # merge: the best checkpoint -> the same weights as the finished run's student/
    out = tmp_path / "merged"
    assert main(["merge", str(run), "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    a = load_file(str(run / "student" / "model.safetensors"))
    b = load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # its output folder is opdf's: --overwrite replaces what the merge wrote, and only that
    assert main(["merge", str(run), "-o", str(out)]) == 2
    assert "not empty; pass --overwrite" in capsys.readouterr().err
    (out / "stale.bin").write_bytes(b"x")  # a file of the user's among the merged model's
    assert main(["merge", str(run), "-o", str(out), "--overwrite"]) == 2
    assert "stale.bin" in capsys.readouterr().err and (out / "model.safetensors").is_file()
    (out / "stale.bin").unlink()
    assert main(["merge", str(run), "-o", str(out), "--overwrite", "--which", "last"]) == 0
    capsys.readouterr()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert main(["merge", str(run), "-o", str(foreign), "--overwrite"]) == 2
    assert "notes.txt" in capsys.readouterr().err
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    # inside the run folder (the default RUN_DIR/merged-best) the run's marker lists it
    assert main(["merge", str(run)]) == 0
    assert main(["merge", str(run)]) == 2
    assert main(["merge", str(run), "--overwrite"]) == 0
    capsys.readouterr()
    marker = json.loads((run / ".opdf-owner.json").read_text())
    assert "merged-best/model.safetensors" in marker["paths"]
    assert marker["derived"] == ["merged-best"]  # what the run's --overwrite will say it removes
    assert main(["merge", str(tmp_path / "nothing")]) == 2
    assert (
        f"{tmp_path / 'nothing'} does not exist; give an opdf run folder" in capsys.readouterr().err
    )
    (tmp_path / "empty").mkdir()
    assert main(["merge", str(tmp_path / "empty")]) == 2
    assert "not an opdf run folder" in capsys.readouterr().err

    # report: one row per run
    assert main(["report", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "| kd " in table and "+OPDF(L=2)" in table and "test accuracy" in table
    assert main(["report", str(run), "--format", "csv"]) == 0
    assert capsys.readouterr().out.startswith("run,method,variant,seed,dev,test")
    assert main(["report", str(tmp_path / "missing")]) == 2
    capsys.readouterr()

    # finetune: the teacher the run used is cached and reused
    assert main(["finetune", "configs/smoke-kd.yaml", "--no-progress"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["cached"] is True and info["test"]["accuracy"] >= 0.9
    summary = json.loads((run / "summary.json").read_text())
    assert summary["teacher"] == info["teacher"]


def test_an_internal_error_is_not_reported_as_a_user_error(monkeypatch, tmp_path, capsys):
    """A bug (here a KeyError or a plain ValueError deep inside a verb) keeps its traceback: it
    propagates out of main() instead of printing one line with exit code 2; user errors do not."""
    import opdf.commands.report

    for bug in (KeyError("best_step"), ValueError("internal shape mismatch")):

        def broken(paths, bug=bug):
            raise bug

        monkeypatch.setattr(opdf.commands.report, "load_rows", broken)
        with pytest.raises(type(bug)):
            main(["report", str(tmp_path)])
        assert "error:" not in capsys.readouterr().err
    monkeypatch.undo()
    assert main(["report", str(tmp_path)]) == 2  # no summary.json: the user's fault
    assert "opdf report: error: no summary.json" in capsys.readouterr().err


def test_merge_of_a_bench_cell_without_checkpoints_points_to_its_student(tmp_path, capsys):
    """A finished bench cell keeps no checkpoints: on main merge said the folder "is not an opdf
    run folder"."""
    cell = tmp_path / "cell"
    (cell / "student").mkdir(parents=True)
    (cell / "config.yaml").write_text("method: kd\n")
    (cell / "summary.json").write_text("{}")
    assert main(["merge", str(cell)]) == 2
    err = capsys.readouterr().err
    assert f"merged student is already in {cell / 'student'}" in err
    assert "not an opdf run folder" not in err
