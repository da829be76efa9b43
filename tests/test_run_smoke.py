"""Smoke runs of every method in all four variants, and the merged student in stock transformers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from opdf.run import load_config, run_distill

VARIANTS = {  # name: overrides
    "base": ["overparam=none", "align.weight=0"],
    "svd": ["overparam=svd", "align.weight=0"],
    "mpo": ["overparam=mpo", "align.weight=0"],
    "opdf": ["overparam=mpo", "align.weight=0.01"],
}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("method", ["kd", "theseus", "lgtm", "dbkd", "adkd"])
def test_smoke_run(method, variant, tmp_path):
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "run"
    cfg = load_config(
        f"configs/smoke-{method}.yaml",
        [*VARIANTS[variant], f"output_dir={out}", "max_steps=6", "eval_every=3",
         "checkpoint_every=3", "log_every=2"],
    )  # fmt: skip
    summary = run_distill(cfg, progress=False)
    for key in ("method", "overparam", "unit_modes", "align", "seed", "train_params",
                "inference_params", "dev", "test", "wall_time", "seconds_per_step"):  # fmt: skip
        assert key in summary, key
    assert summary == json.loads((out / "summary.json").read_text())
    assert summary["method"] == method and summary["overparam"] == cfg.overparam
    assert (summary["align"] is not None) == (variant == "opdf")
    assert 0.0 <= summary["test"]["accuracy"] <= 1.0
    if variant == "base":
        assert summary["train_params"] == summary["inference_params"]
    else:
        assert summary["train_params"] > summary["inference_params"]
    if variant in ("mpo", "opdf"):
        svd_like = summary["train_params"] - summary["inference_params"]
        assert svd_like > 0
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train] == [2, 4, 6]
    assert [r["step"] for r in records if r["split"] == "dev"] == [3, 6]
    assert all("loss" in r and r["loss"] == r["loss"] for r in train)  # logged and not NaN
    if variant == "opdf":
        assert all(r["align"] > 0 for r in train)
    if method == "theseus":
        assert all("replacing_rate" in r for r in train)
    if method == "lgtm":  # its teacher trains, over-parameterized when its cores are aligned
        assert summary["teacher_trains"] and summary["teacher_overparam"] == (variant == "opdf")
        assert all(r["teacher_loss"] > 0 for r in train)
    # the merged student: stock transformers, exactly inference_params parameters, same accuracy
    model = AutoModelForSequenceClassification.from_pretrained(out / "student").eval()
    assert sum(p.numel() for p in model.parameters()) == summary["inference_params"]
    assert not any("parametrizations" in k for k in model.state_dict())
    from opdf.data import load_text_dataset, make_dataloader
    from opdf.models import load_tokenizer

    ds = load_text_dataset(cfg.data.name)
    tok = load_tokenizer(out / "student")
    preds, labels = [], []
    with torch.no_grad():
        for b in make_dataloader(ds.test, tok, batch_size=64, max_length=cfg.data.max_length):
            labels += b.pop("labels").tolist()
            preds.append(model(**b).logits)
    acc = ds.metric(torch.cat(preds), labels)["accuracy"]
    assert acc == pytest.approx(summary["test"]["accuracy"])


def test_existing_output_dir_is_never_overwritten_silently(tmp_path):
    from opdf.errors import OpdfError

    out = tmp_path / "run"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    cfg = load_config("configs/smoke-kd.yaml", [f"output_dir={out}", "max_steps=2"])
    with pytest.raises(OpdfError, match="opdf did not write"):
        run_distill(cfg, progress=False)
    assert (out / "summary.json").read_text() == "{}"


def test_foreign_folders_are_never_deleted(tmp_path):
    """A non-empty output_dir that is not an opdf run survives, with and without --overwrite."""
    from opdf.errors import OpdfError
    from opdf.run.runner import prepare_output_dir

    cfg = load_config(Path(__file__).parents[1] / "configs" / "smoke-kd.yaml")
    project = tmp_path / "myproject"
    project.mkdir()
    (project / "thesis.tex").write_text("months of work")
    for overwrite in (False, True):
        with pytest.raises(OpdfError, match="holds thesis.tex, which opdf did not write"):
            prepare_output_dir(project, resume=False, overwrite=overwrite, cfg=cfg)
        assert (project / "thesis.tex").read_text() == "months of work"
    # a failed start (only opdf's start-up files, listed in its marker) may be reused
    from opdf.run import owner

    failed = tmp_path / "failed"
    assert prepare_output_dir(failed, resume=False, overwrite=False, cfg=cfg) is False
    (failed / "checkpoints").mkdir()
    (failed / "config.yaml").write_text("method: kd\n")
    owner.record(failed, "checkpoints", "config.yaml")
    assert prepare_output_dir(failed, resume=False, overwrite=False, cfg=cfg) is False
    assert [p.name for p in failed.iterdir()] == [owner.MARKER]
