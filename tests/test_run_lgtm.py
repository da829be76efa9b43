"""LGTM through the runner: a trainable (over-parameterized) teacher, its checkpoints, its quiz
batches, and learning from chance on real data."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from opdf.distill.lgtm import LGTM
from opdf.run import checkpoint as ckpt
from opdf.run import load_config, run_distill
from opdf.run.runner import build, merge_checkpoint


def test_smoke_run_mpo_with_alignment_on_live_teacher_cores(tmp_path):
    cfg = load_config("configs/smoke-lgtm.yaml", [f"output_dir={tmp_path}/r"])
    distiller, _, _, align, info = build(cfg, progress=False)
    # the teacher is over-parameterized with the student's scheme, and the loss aligns its live
    # (trainable) cores, not a frozen decomposition
    teacher_params = dict(distiller.teacher.named_parameters())
    assert align._teacher_live and align.pairs
    for _, t_core in align.pairs:
        assert t_core in teacher_params and teacher_params[t_core].requires_grad
    assert info["teacher_overparam"] is True
    start = {k: v.clone() for k, v in distiller.teacher.state_dict().items()}

    summary = run_distill(cfg, progress=False)
    out = tmp_path / "r"
    assert summary["method"] == "lgtm" and summary["align_pairs"] == len(align.pairs)
    # the exported student is merged: a stock transformers checkpoint
    weights = load_file(str(out / "student" / "model.safetensors"))
    assert not any("parametrizations" in k for k in weights)
    assert summary["inference_params"] == sum(w.numel() for w in weights.values())
    # `opdf merge` rebuilds the same student from best.pt, without the teacher
    merged = load_file(str(merge_checkpoint(out, tmp_path / "m") / "model.safetensors"))
    assert all(torch.equal(merged[k], weights[k]) for k in weights)
    # last.pt holds both models, both optimizers and both LR schedules
    last = ckpt.read(out / "checkpoints" / ckpt.LAST)
    assert set(last.modules) == {"student", "teacher"}
    assert any("parametrizations" in k for k in last.modules["teacher"])
    assert set(last.optimizers) == set(last.schedulers) == {"main", "teacher"}
    assert last.schedulers["teacher"]["last_epoch"] == cfg.max_steps
    # the teacher trained: its weights moved from the ones it started with
    moved = [k for k, v in last.modules["teacher"].items() if not torch.equal(v, start[k])]
    assert moved
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert all({"teacher_loss", "quiz_loss", "influence_norm"} <= set(r) for r in train)
    assert all(r["influence_norm"] > 0 for r in train)


def test_quiz_batches_come_from_dev_never_from_test(tmp_path, monkeypatch):
    cfg = load_config("configs/smoke-lgtm.yaml", ["max_steps=6", "eval_every=6",
                                                  f"output_dir={tmp_path}/q"])  # fmt: skip
    seen = []
    step = LGTM.teacher_step

    def spy(self, batch, quiz, *args, **kw):
        seen.append(quiz["input_ids"].clone())
        return step(self, batch, quiz, *args, **kw)

    monkeypatch.setattr(LGTM, "teacher_step", spy)
    run_distill(cfg, progress=False)
    assert len(seen) == 6
    _, dataset, tokenizer, _, _ = build(cfg, progress=False)

    def rows(split):
        enc = tokenizer(dataset[split].texts, truncation=True, max_length=cfg.data.max_length)
        return {tuple(ids) for ids in enc["input_ids"]}

    dev, test = rows("dev"), rows("test")
    pad = tokenizer.pad_token_id
    drawn = {tuple(i for i in row.tolist() if i != pad) for q in seen for row in q}
    assert drawn <= dev and not drawn & test
    assert len(drawn) > cfg.batch_size  # several quiz batches, not one repeated


def test_student_learns_from_chance(tmp_path):
    """A freshly initialised student (random encoder and head: chance level) learns from LGTM's
    jointly trained teacher, here the smoke teacher fine-tuned on the fixture (shared with the kd
    smoke tests). A student built from teacher layers would start near 100% on this easy data.
    (The real-data equivalent, a 2-layer MiniLM on 320 rt-polarity sentences, takes ~3 minutes
    on the 2-core machine; the rt-polarity runs of benchmarks/results/rt-polarity-methods are
    the real-data evidence.)"""
    from opdf.run.runner import settings_from
    from opdf.run.trainer import Trainer

    args = ["teacher.finetune={epochs: 4, batch_size: 16, lr: 3.0e-3, warmup_ratio: 0.0, seed: 0}",
            "lgtm.init_classifier_to_zero=false", "student.model=tiny-bert", "student.layers=null",
            "overparam=none", "align.weight=0", "max_steps=36", "eval_every=12", "lr=3.0e-3",
            "lgtm.t_lr=1.0e-4", f"output_dir={tmp_path}/run"]  # fmt: skip
    cfg = load_config("configs/smoke-lgtm.yaml", args)
    distiller, dataset, tokenizer, _, _ = build(cfg, progress=False)
    trainer = Trainer(distiller, dataset, tokenizer, settings_from(cfg), tmp_path / "unused")
    assert trainer.evaluate("test")["accuracy"] <= 0.65
    summary = run_distill(cfg, progress=False)
    assert summary["test"]["accuracy"] >= 0.8, summary["test"]
