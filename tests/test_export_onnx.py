"""``opdf export --format onnx``: text (tiny BERT) and vision (ResNet, TinyViT) students,
over-parameterized then merged, written as ONNX with dynamic axes and checked against PyTorch
with onnxruntime; the check fails loudly; a run folder (finished or not) exports too."""

from __future__ import annotations

import json
import re

import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import onnx  # noqa: E402

from opdf import merge, overparameterize  # noqa: E402
from opdf.cli import main  # noqa: E402
from opdf.models import build_vision_model, load_model, save_vision_model  # noqa: E402
from opdf.models.onnx_export import (  # noqa: E402
    max_abs_difference,
    onnxruntime_logits,
)


def merged_text_student(folder):
    """A tiny BERT classifier over-parameterized (MPO, L=2), nudged off its initial function
    so that the merge has something to contract, merged and saved."""
    model, tokenizer = load_model("tiny-bert", num_labels=3, seed=0)
    overparameterize(model, scheme="mpo", unit_modes=2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "original" in name:
                p.add_(0.01 * torch.randn_like(p))
    merge(model)
    model.eval().save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return model.eval(), tokenizer


def merged_vision_student(folder, name):
    model = build_vision_model(name, num_classes=10, in_channels=1, image_size=28, seed=0)
    overparameterize(model, scheme="mpo", unit_modes=3)
    merge(model)
    model.eval()
    save_vision_model(model, folder, label_names=[str(i) for i in range(10)])
    return model


def printed_difference(out: str) -> float:
    found = re.search(r"max abs difference of the logits ([0-9.e+-]+) \(tolerance", out)
    assert found, out
    return float(found.group(1))


def dims(graph_input) -> list:
    return [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim]


def test_text_student_exports_with_dynamic_batch_and_sequence(tmp_path, capsys):
    model, tokenizer = merged_text_student(tmp_path / "student")
    out = tmp_path / "onnx"
    assert main(["export", str(tmp_path / "student"), "--format", "onnx", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed_difference(printed) < 1e-4
    assert sorted(p.name for p in out.iterdir()) >= ["config.json", "export.json", "model.onnx"]
    graph = onnx.load(str(out / "model.onnx")).graph
    inputs = {i.name: dims(i) for i in graph.input}
    assert inputs == {k: ["batch", "sequence"] for k in
                      ("input_ids", "attention_mask", "token_type_ids")}  # fmt: skip
    assert [o.name for o in graph.output] == ["logits"] and dims(graph.output[0])[1] == 3
    # another batch size and length than both the traced and the checked samples
    enc = tokenizer(["one", "two words", "a somewhat longer sentence than the others, with more",
                     "x", "y z"], padding=True, return_tensors="pt")  # fmt: skip
    feed = {k: enc[k] for k in inputs}
    with torch.no_grad():
        expected = model(**feed).logits.numpy()
    got = onnxruntime_logits(out / "model.onnx", feed)
    assert got.shape == (5, 3) and abs(got - expected).max() < 1e-4
    record = json.loads((out / "export.json").read_text())
    assert record["kind"] == "text" and record["max_abs_diff"] == pytest.approx(
        printed_difference(printed), rel=0.01, abs=1e-12
    )
    # the tokenizer and config beside it: what a deployment loads with the file
    from transformers import AutoConfig, AutoTokenizer

    assert AutoConfig.from_pretrained(str(out)).num_labels == 3
    assert (
        AutoTokenizer.from_pretrained(str(out))("one")["input_ids"] == tokenizer("one")["input_ids"]
    )


@pytest.mark.parametrize("name", ["resnet8", "vit-d2"])
def test_vision_student_exports_with_dynamic_batch(tmp_path, capsys, name):
    model = merged_vision_student(tmp_path / "student", name)
    out = tmp_path / "onnx"
    assert main(["export", str(tmp_path / "student"), "-o", str(out)]) == 0
    assert printed_difference(capsys.readouterr().out) < 1e-4
    graph = onnx.load(str(out / "model.onnx")).graph
    assert [(i.name, dims(i)) for i in graph.input] == [("pixel_values", ["batch", 1, 28, 28])]
    x = torch.randn(7, 1, 28, 28)
    with torch.no_grad():
        expected = model(x).numpy()
    assert abs(onnxruntime_logits(out / "model.onnx", {"pixel_values": x}) - expected).max() < 1e-4
    assert json.loads((out / "architecture.json").read_text())["label_names"][0] == "0"


def test_the_parity_check_fails_loudly(tmp_path, capsys, monkeypatch):
    model = merged_vision_student(tmp_path / "student", "resnet8")
    out = tmp_path / "onnx"
    assert main(["export", str(tmp_path / "student"), "-o", str(out)]) == 0
    capsys.readouterr()
    # the check is real: another model's logits are far from the file's
    x = {"pixel_values": torch.randn(3, 1, 28, 28)}
    other = build_vision_model("resnet8", num_classes=10, in_channels=1, image_size=28, seed=1)
    assert max_abs_difference(out / "model.onnx", other.eval(), x) > 1e-2
    assert max_abs_difference(out / "model.onnx", model, x) < 1e-4
    # an exporter that got the model wrong: one line, exit 2, no model.onnx kept
    import opdf.models.onnx_export as ox

    real = ox.onnxruntime_logits
    monkeypatch.setattr(ox, "onnxruntime_logits", lambda *a, **k: real(*a, **k) + 1e-3)
    assert main(["export", str(tmp_path / "student"), "-o", str(out), "--overwrite"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "differ from PyTorch's by up to 0.001 on 3 random images 1x28x28" in err
    assert "tolerance 0.0001" in err and not (out / "model.onnx").exists()
    # a looser tolerance accepts it; a non-empty output folder needs --overwrite
    assert main(["export", str(tmp_path / "student"), "-o", str(out), "--tolerance", "0.01"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "student"), "-o", str(out), "--tolerance", "0.01",
                 "--overwrite"]) == 0  # fmt: skip
    assert printed_difference(capsys.readouterr().out) == pytest.approx(1e-3, rel=0.01)


def test_bad_inputs_are_one_line(tmp_path, capsys, monkeypatch):
    (tmp_path / "empty").mkdir()
    assert main(["export", str(tmp_path / "empty")]) == 2
    assert "neither an opdf run folder" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nowhere")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    import builtins

    real = builtins.__import__

    def no_onnxscript(name, *args, **kwargs):
        if name == "onnxscript":
            raise ImportError(name)
        return real(name, *args, **kwargs)

    merged_vision_student(tmp_path / "student", "resnet8")
    monkeypatch.setattr(builtins, "__import__", no_onnxscript)
    assert main(["export", str(tmp_path / "student")]) == 2
    err = capsys.readouterr().err
    assert "needs onnxscript" in err and "pip install 'opdf[onnx]'" in err


def test_run_folders_finished_or_not(tmp_path, capsys, monkeypatch):
    """A real OPDF smoke run stopped after its first checkpoint: its best checkpoint is merged
    and exported; once finished, RUN_DIR/student is what is exported, to RUN_DIR/onnx."""
    from opdf.commands.export import student_folder
    from opdf.run import load_config, run_distill

    run = tmp_path / "run"
    cfg = load_config("configs/smoke-kd.yaml", [f"output_dir={run}", "max_steps=4",
                                                "eval_every=2", "checkpoint_every=2"])  # fmt: skip
    assert run_distill(cfg, progress=False, stop_after_step=2) is None
    import tempfile

    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    assert main(["export", str(run), "-o", str(tmp_path / "early")]) == 0
    captured = capsys.readouterr()
    assert "is unfinished: exporting its best checkpoint" in captured.err
    assert printed_difference(captured.out) < 1e-4
    assert not list((tmp_path / "tmp").iterdir())  # the temporary merge is gone
    run_distill(cfg, resume=True, progress=False)
    assert student_folder(run) == (run / "student", run / "onnx", None)
    assert student_folder(run / "student")[:2] == (run / "student", run / "student-onnx")


def test_the_default_output_inside_a_run_is_opdfs_and_dot_works(tmp_path, capsys, monkeypatch):
    """RUN_DIR/onnx is listed in the run's ownership marker (a later --overwrite of the run may
    remove it), and `opdf export .` inside a merged student folder names OUT from the folder."""
    from opdf.run import load_config, owner, run_distill

    run = tmp_path / "run"
    cfg = load_config("configs/smoke-kd.yaml", [f"output_dir={run}", "max_steps=2",
                                                "eval_every=2", "checkpoint_every=2"])  # fmt: skip
    run_distill(cfg, progress=False)
    assert main(["export", str(run)]) == 0
    assert (run / "onnx" / "model.onnx").is_file() and not owner.foreign(run)
    monkeypatch.chdir(run / "student")
    assert main(["export", "."]) == 0
    assert (run / "student-onnx" / "model.onnx").is_file()
    capsys.readouterr()
