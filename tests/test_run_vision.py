"""Vision runs end to end on the same runner as text: smoke configs (digits), exact resume with
augmentation, merge / export round trip, inspect, config errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from opdf.cli import main
from opdf.run import load_config, run_distill

VARIANTS = {  # name: overrides
    "base": ["overparam=none", "align.weight=0"],
    "svd": ["overparam=svd", "align.weight=0"],
    "mpo": ["overparam=mpo", "align.weight=0"],
    "opdf": ["overparam=mpo", "align.weight=1.0"],
}
CASES = [("kd", v) for v in VARIANTS] + [
    (m, v) for m in ("dkd", "tinyvit") for v in ("base", "opdf")
]


def student_accuracy(folder, cfg):
    """Top-1 of the exported student, recomputed outside the runner."""
    from opdf.data.views import ImageView
    from opdf.data.vision import load_vision_dataset
    from opdf.models import load_vision_model

    model = load_vision_model(folder)
    ds = load_vision_dataset(cfg.data.name, max_eval_samples=cfg.data.max_eval_samples)
    batch = ImageView(ds, "test").batch(range(len(ds.test)))
    with torch.no_grad():
        logits = model(batch["pixel_values"])
    return float((logits.argmax(1) == batch["labels"]).float().mean()), model


@pytest.mark.parametrize(("method", "variant"), CASES)
def test_vision_smoke_run(method, variant, tmp_path):
    out = tmp_path / "run"
    cfg = load_config(
        f"configs/smoke-vision-{method}.yaml",
        [*VARIANTS[variant], f"output_dir={out}", "max_steps=6", "eval_every=3",
         "checkpoint_every=3", "log_every=2"],
    )  # fmt: skip
    summary = run_distill(cfg, progress=False)
    # (JSON keeps the layer_map's int keys as strings)
    assert json.loads(json.dumps(summary)) == json.loads((out / "summary.json").read_text())
    assert summary["method"] == method and summary["main_metric"] == "top1"
    assert (
        set(summary["test"]) == {"top1", "top5"}
        and summary["test"]["top5"] >= summary["test"]["top1"]
    )
    assert summary["teacher_test"]["top1"] > 0.5  # the cached teacher learned digits
    if variant == "base":
        assert summary["train_params"] == summary["inference_params"]
    else:
        assert summary["train_params"] > summary["inference_params"]
    assert (summary["align_pairs"] > 0) == (variant == "opdf")
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train] == [2, 4, 6]
    assert all(r["loss"] == r["loss"] for r in train)  # not NaN
    expected_terms = {"kd": {"ce", "kd"}, "dkd": {"ce", "tckd", "nckd"}, "tinyvit": {"soft_ce"}}
    assert expected_terms[method] <= set(train[0])
    if variant == "opdf":
        assert all(r["align"] > 0 for r in train)
    # the export: safetensors + architecture.json, exactly inference_params, same test accuracy
    acc, model = student_accuracy(out / "student", cfg)
    assert sum(p.numel() for p in model.parameters()) == summary["inference_params"]
    assert not any("parametrizations" in k for k in model.state_dict())
    assert acc == pytest.approx(summary["test"]["top1"])


@pytest.mark.parametrize("method", ["kd", "tinyvit"])
def test_vision_resume_is_exact(method, tmp_path):
    """Augmented batches depend on (seed, epoch, image) only: a run killed and resumed ends with
    the same student, bit for bit, as an uninterrupted one (over an epoch boundary; TinyViT's
    stored teacher outputs are read back from the cache)."""
    common = ["max_steps=50", "eval_every=20", "checkpoint_every=10", "log_every=5",
              "data.max_train_samples=640", "overparam=mpo", "align.weight=1.0"]  # fmt: skip
    config = f"configs/smoke-vision-{method}.yaml"
    run_distill(load_config(config, [*common, f"output_dir={tmp_path}/a"]), progress=False)
    cfg = load_config(config, [*common, f"output_dir={tmp_path}/b"])
    assert run_distill(cfg, progress=False, stop_after_step=30) is None  # epoch 2 of 20 steps
    summary = run_distill(cfg, resume=True, progress=False)
    assert summary["resumed_from_step"] == 30
    a = load_file(str(tmp_path / "a" / "student" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "student" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sa = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert (sa["dev"], sa["test"], sa["best_step"]) == (
        summary["dev"], summary["test"], summary["best_step"])  # fmt: skip


def test_tinyvit_stores_teacher_outputs_once_and_never_runs_the_teacher_while_training(
    tmp_path, monkeypatch
):
    from opdf.distill import tinyvit

    built, calls = [], []
    build = tinyvit.TopKStore.build.__func__
    start = tinyvit.TinyViTDistill.on_train_start

    def counting_build(cls, *args, **kwargs):
        built.append(args[2])  # epochs
        return build(cls, *args, **kwargs)

    def watching_start(self, context):
        start(self, context)  # the store is ready: from now on the teacher must stay idle
        self.teacher.register_forward_hook(lambda *a: calls.append(1))

    monkeypatch.setattr(tinyvit.TopKStore, "build", classmethod(counting_build))
    monkeypatch.setattr(tinyvit.TinyViTDistill, "on_train_start", watching_start)
    for variant in ("mpo", "base"):
        cfg = load_config("configs/smoke-vision-tinyvit.yaml",
                          [*VARIANTS[variant], "max_steps=8", "eval_every=4", "seed=7",
                           f"output_dir={tmp_path}/{variant}"])  # fmt: skip
        run_distill(cfg, progress=False)
    assert calls == []
    # 8 steps of 20 per epoch: one epoch stored, once (seed 7: no other test stored it); the second
    # run reuses it
    assert built == [1]


def test_merge_cli_round_trip_and_inspect(tmp_path, capsys):
    run = tmp_path / "kd"
    argv = ["distill", "configs/smoke-vision-kd.yaml", f"output_dir={run}", "max_steps=6",
            "eval_every=3", "checkpoint_every=3", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "test_top1" in result and result["overparam"] == "mpo"
    for which in ("best", "last"):
        out = tmp_path / f"merged-{which}"
        assert main(["merge", str(run), "--which", which, "-o", str(out)]) == 0
        capsys.readouterr()
        assert (out / "architecture.json").is_file() and (out / "model.safetensors").is_file()
    a = load_file(str(run / "student" / "model.safetensors"))
    b = load_file(str(tmp_path / "merged-best" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    spec = json.loads((tmp_path / "merged-best" / "architecture.json").read_text())
    assert spec["name"] == "resnet8" and spec["input"]["channels"] == 1
    assert main(["report", str(run)]) == 0
    assert "test top5" in capsys.readouterr().out

    inspect = ["inspect", "resnet8", "--teacher", "resnet14", "--in-channels", "1", "--image-size",
               "8", "--layer-map", "0:0,1:2,2:4", "--num-labels", "10"]  # fmt: skip
    assert main(inspect) == 0
    text = capsys.readouterr().out
    assert (
        "blocks.2.conv2" in text
        and "pairs: 36; skipped modules (no same-shaped teacher cores): 0" in text
    )
    assert "inference params: 77,754" in text
    assert main(["inspect", str(run / "student"), "--scheme", "svd"]) == 0
    assert "inference params: 77,754" in capsys.readouterr().out
    assert main(["inspect", "resnet8", "--teacher", "resnet14"]) == 2  # stage-entry shapes differ
    assert "--allow-partial" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["method=theseus", "kd=null"], "does not work on image data"),
        (["student.model=null"], "set student.model to a vision model"),
        (["student.model=tiny-bert"], "is not a vision model"),
        (["teacher.finetune=null"], "without trained weights"),
        (["data.options.colour=1"], "unknown option(s) colour for image data"),
        (
            ["data.name=data/smoke-sentiment.csv", "teacher.model=tiny-bert"],
            "is an image classifier",
        ),
    ],
)
def test_config_errors_before_any_work(overrides, message, capsys):
    assert main(["distill", "configs/smoke-vision-kd.yaml", *overrides, "--print-config"]) == 2
    assert message in capsys.readouterr().err


def test_finetune_verb_trains_and_caches_a_vision_teacher(capsys):
    assert main(["finetune", "configs/smoke-vision-tinyvit.yaml", "--no-progress"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(["finetune", "configs/smoke-vision-tinyvit.yaml", "--no-progress"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["cached"] is True and again["teacher"] == first["teacher"]
    assert first["main_metric"] == "top1" and first["test"]["top1"] > 0.5
    from opdf.models import load_vision_model

    assert load_vision_model(first["teacher"]).vision_spec["name"] == "vit-d4"


def test_teacher_cache_key_covers_the_image_files(tmp_path):
    from opdf.run.runner import teacher_key
    from test_data_vision import write_fashion_folder

    folder = write_fashion_folder(tmp_path / "fm")
    cfg = load_config("configs/smoke-vision-kd.yaml",
                      ["data.name=fashion-mnist", f"data.options.path={folder}"])  # fmt: skip
    key = teacher_key(cfg)
    assert teacher_key(cfg) == key
    write_fashion_folder(folder, seed=1)  # same layout, other pixels
    assert teacher_key(cfg) != key
