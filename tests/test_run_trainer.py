"""Trainer and runner paths the smoke runs do not reach: gradient accumulation, fused AdamW, a
method that trains nothing, steps without a gradient by design, the teacher cache key."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

import opdf
import opdf.run.trainer
from opdf.distill import Distiller, register_method
from opdf.errors import OpdfError
from opdf.run import checkpoint as ckpt
from opdf.run import load_config, run_distill


def test_grad_accum_uses_one_contraction_per_step_and_fused_adamw(tmp_path, monkeypatch):
    entered = []
    real = opdf.accumulate

    def counting(model):
        entered.append(sum(1 for _ in opdf.overparam.mpo_modules(model)))
        return real(model)

    monkeypatch.setattr(opdf.run.trainer, "accumulate", counting)  # the name it calls
    out = tmp_path / "run"
    cfg = load_config(
        "configs/smoke-kd.yaml",
        [f"output_dir={out}", "max_steps=3", "grad_accum=4", "eval_every=3", "log_every=1"],
    )
    summary = run_distill(cfg, progress=False)
    # one accumulate block per optimizer step, over every over-parameterized module
    assert len(entered) == 3 and all(n > 0 for n in entered)
    assert summary["steps"] == 3 and summary["train_params"] > summary["inference_params"]
    optimizer = ckpt.read(out / "checkpoints" / ckpt.LAST).optimizers["main"]
    assert all(g["fused"] for g in optimizer["param_groups"])
    assert all(len(s) > 0 for s in optimizer["state"].values())


def test_a_method_that_trains_nothing_is_an_error_not_a_silent_run(tmp_path):
    @register_method("test-detached")
    class Detached(Distiller):
        """Returns a loss with no gradient path (a broken method)."""

        @dataclass
        class Options:
            pass

        def forward_train(self, batch):
            logits = self.student(input_ids=batch["input_ids"]).logits.detach()
            return logits, {"ce": F.cross_entropy(logits, batch["labels"])}

    try:
        cfg = load_config(
            "configs/smoke-kd.yaml",
            [f"output_dir={tmp_path / 'run'}", "method=test-detached", "kd=null",
             "overparam=none", "align.weight=0", "max_steps=30", "eval_every=30"],
        )  # fmt: skip
        with pytest.raises(OpdfError, match="10 optimizer steps in a row .* without a gradient"):
            run_distill(cfg, progress=False)
    finally:
        from opdf.distill import unregister_method

        unregister_method("test-detached")
    assert torch.is_grad_enabled()


def test_theseus_steps_without_a_gradient_by_design_are_not_an_error(tmp_path):
    # p = 0 for 12 steps: every module draws its frozen predecessor, no gradient, then p = 1
    cfg = load_config(
        "configs/smoke-theseus.yaml",
        [f"output_dir={tmp_path / 'run'}", "theseus.scheduler=constant",
         "theseus.replacing_rate=0", "theseus.steps_for_replacing=12", "max_steps=14",
         "eval_every=14", "align.weight=0"],
    )  # fmt: skip
    summary = run_distill(cfg, progress=False)
    assert summary["steps"] == 14


def test_teacher_cache_key_follows_local_data_and_model_contents(tmp_path):
    from opdf.run.runner import teacher_key

    data = tmp_path / "reviews.csv"
    data.write_text("text,label\ngood,1\nbad,0\n")
    model = tmp_path / "teacher"
    model.mkdir()
    (model / "config.json").write_text('{"a": 1}')
    overrides = [f"data.name={data}", f"teacher.model={model}"]
    key = teacher_key(load_config("configs/smoke-kd.yaml", overrides))
    assert key == teacher_key(load_config("configs/smoke-kd.yaml", overrides))
    data.write_text("text,label\ngood,1\nbad,1\n")  # same size, one label changed
    key2 = teacher_key(load_config("configs/smoke-kd.yaml", overrides))
    assert key2 != key
    (model / "config.json").write_text('{"a": 2}')
    key3 = teacher_key(load_config("configs/smoke-kd.yaml", overrides))
    assert key3 != key2
    (model / ".git").mkdir()  # hidden files are not part of the model
    (model / ".git" / "HEAD").write_text("ref: x")
    assert teacher_key(load_config("configs/smoke-kd.yaml", overrides)) == key3


def test_fingerprint_is_reused_only_for_files_not_just_written(tmp_path):
    import os
    import time

    from opdf.run import teacher as runner

    data = tmp_path / "reviews.csv"
    data.write_text("text,label\ngood,1\n")
    fresh = runner.fingerprint(data)
    hits = runner._digest.cache_info().hits
    assert runner.fingerprint(data) == fresh  # just written: hashed afresh, not cached
    assert runner._digest.cache_info().hits == hits
    hour_ago = time.time() - 3600
    os.utime(data, (hour_ago, hour_ago))
    settled = runner.fingerprint(data)
    assert settled == fresh and runner.fingerprint(data) == settled
    assert runner._digest.cache_info().hits == hits + 1


def test_every_hook_sees_the_same_0_based_step_index(tmp_path):
    """before_step(s), forward_train (self.step) and on_step_end(s) name one step by one index:
    the optimizer steps done before it (0, 1, 2, ...)."""
    seen: list[tuple[str, int]] = []

    @register_method("test-step-index")
    class Recording(Distiller):
        """Plain CE, recording the step index each hook is given."""

        @dataclass
        class Options:
            pass

        def before_step(self, batch, step):
            seen.append(("before", step))
            return {}

        def forward_train(self, batch):
            seen.append(("forward", self.step))
            logits = self.student(input_ids=batch["input_ids"]).logits
            return logits, {"ce": F.cross_entropy(logits, batch["labels"])}

        def on_step_end(self, step):
            seen.append(("end", step))
            return {}

    try:
        cfg = load_config(
            "configs/smoke-kd.yaml",
            [f"output_dir={tmp_path / 'run'}", "method=test-step-index", "kd=null",
             "overparam=none", "align.weight=0", "max_steps=3", "eval_every=3"],
        )  # fmt: skip
        run_distill(cfg, progress=False)
    finally:
        from opdf.distill import unregister_method

        unregister_method("test-step-index")
    assert [x for x in seen if x[0] != "forward"] == [
        ("before", 0), ("end", 0), ("before", 1), ("end", 1), ("before", 2), ("end", 2)
    ]  # fmt: skip
    assert sorted({s for hook, s in seen if hook == "forward"}) == [0, 1, 2]
