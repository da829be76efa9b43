"""The checkpoint layout (run/checkpoint.py) and the trainer seams a method with its own
optimizer (LGTM's trainable teacher) plugs into: every optimizer, schedule and trainable module is
checkpointed, so such a run resumes exactly too."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from opdf.distill import Distiller, model_inputs, register_method, unregister_method
from opdf.errors import OpdfError
from opdf.run import checkpoint as ckpt
from opdf.run import load_config, run_distill


def test_layout_round_trip_and_the_format_1_flat_layout(tmp_path):
    full = ckpt.Checkpoint(
        step=4, modules={"student": {"w": torch.ones(2)}}, optimizers={"main": {"a": 1}},
        schedulers={"main": {"b": 2}}, method={"c": 3}, rng=ckpt.rng_state(),
        progress={"best": 0.5, "best_step": 2, "train_seconds": 1.0, "wall_time": 2.0,
                  "running": {"loss": 0.3}, "n_running": 1},
    )  # fmt: skip
    ckpt.save(full, tmp_path / "last.pt")
    back = ckpt.read(tmp_path / "last.pt")
    assert (back.step, back.optimizers, back.schedulers, back.method, back.progress) == (
        4, {"main": {"a": 1}}, {"main": {"b": 2}}, {"c": 3}, full.progress,
    )  # fmt: skip
    assert torch.equal(back.modules["student"]["w"], torch.ones(2)) and back.score is None
    # what opdf wrote before the layout had a number: flat keys, one optimizer
    flat = {"step": 4, "modules": {}, "optimizer": {"a": 1}, "lr_schedule": {"b": 2},
            "method": {}, "rng": None, **full.progress}  # fmt: skip
    old = ckpt.Checkpoint.from_dict(flat)
    assert old.optimizers == {"main": {"a": 1}} and old.schedulers == {"main": {"b": 2}}
    assert old.progress == full.progress
    best = ckpt.Checkpoint.from_dict({"step": 6, "modules": {}, "score": 0.9})
    assert (best.step, best.score, best.optimizers) == (6, 0.9, {})


def test_a_damaged_checkpoint_is_a_user_error_naming_the_file(tmp_path):
    path = tmp_path / "best.pt"
    ckpt.save(ckpt.Checkpoint(step=1, modules={"student": {}}, score=0.1), path)
    path.write_bytes(path.read_bytes()[:40])  # cut short
    with pytest.raises(OpdfError, match="best.pt is not a readable checkpoint"):
        ckpt.read(path)  # by its checksum
    with pytest.raises(OpdfError, match="best.pt is not a readable checkpoint"):
        ckpt.read(path, verify=False)  # by torch, as for a folder from before manifests
    torch.save([1, 2], path)
    with pytest.raises(OpdfError, match="not an opdf checkpoint"):
        ckpt.read(path, verify=False)


class TwoOptimizers(Distiller):
    """CE through a trainable calibration layer with its own optimizer (a test method)."""

    @dataclass
    class Options:
        pass

    def __init__(self, student, teacher, options=None, *, num_labels=2):
        super().__init__(student, teacher, options, num_labels=num_labels)
        self.calib = nn.Linear(num_labels, num_labels)

    def configure_optimizers(self, build):
        self.calib_opt, self.calib_sched = build([{"params": list(self.calib.parameters()),
                                                   "names": ["calib.weight", "calib.bias"]}],
                                                 lr=1e-2)  # fmt: skip
        return {**super().configure_optimizers(build), "calib": (self.calib_opt, self.calib_sched)}

    def trainable_modules(self):
        return {**super().trainable_modules(), "calib": self.calib}

    def forward_train(self, batch):
        logits = self.student(**model_inputs(batch)).logits
        return logits, {"ce": F.cross_entropy(self.calib(logits), batch["labels"])}

    def on_step_end(self, step):
        self.calib_opt.step()  # the method steps its own optimizer
        self.calib_sched.step()
        self.calib_opt.zero_grad(set_to_none=True)
        return {"calib_lr": self.calib_sched.get_last_lr()[0]}


def test_a_method_with_its_own_optimizer_resumes_exactly(tmp_path):
    register_method("test-two-optimizers")(TwoOptimizers)
    try:
        common = ["method=test-two-optimizers", "kd=null", "overparam=none", "align.weight=0",
                  "max_steps=8", "eval_every=4", "checkpoint_every=3"]  # fmt: skip
        full = load_config("configs/smoke-kd.yaml", [*common, f"output_dir={tmp_path}/a"])
        run_distill(full, progress=False)
        cfg = load_config("configs/smoke-kd.yaml", [*common, f"output_dir={tmp_path}/b"])
        assert run_distill(cfg, progress=False, stop_after_step=3) is None
        assert set(ckpt.read(tmp_path / "b/checkpoints/last.pt").optimizers) == {"main", "calib"}
        run_distill(cfg, resume=True, progress=False)
    finally:
        unregister_method("test-two-optimizers")
    a, b = (ckpt.read(tmp_path / run / "checkpoints" / ckpt.LAST) for run in ("a", "b"))
    for name in ("student", "calib"):
        assert a.modules[name].keys() == b.modules[name].keys()
        for k, v in a.modules[name].items():
            assert torch.equal(v, b.modules[name][k]), (name, k)
    moments = [(s["exp_avg"], t["exp_avg"]) for s, t in
               zip(a.optimizers["calib"]["state"].values(),
                   b.optimizers["calib"]["state"].values(), strict=True)]  # fmt: skip
    assert moments and all(torch.equal(x, y) for x, y in moments)
    steps = [float(s["step"]) for s in b.optimizers["calib"]["state"].values()]
    assert steps == [8.0, 8.0]  # the method's optimizer took every step, across the resume


@pytest.mark.parametrize(("overparam", "dev_evals"), [("none", 2), ("mpo", 3)])
def test_the_final_dev_score_is_reused_only_when_nothing_was_merged(
    overparam, dev_evals, tmp_path, monkeypatch
):
    """A plain student is the very model best.pt was scored with: finish() takes its dev metrics
    from best.pt; a merged one is evaluated again (a check of the merge)."""
    import json

    from opdf.run.trainer import Trainer

    calls = []
    real = Trainer.evaluate

    def counting(self, split):
        if self.distiller.name == "kd":  # not the teacher's fine-tune (if not cached yet)
            calls.append(split)
        return real(self, split)

    monkeypatch.setattr(Trainer, "evaluate", counting)
    align = "0.01" if overparam == "mpo" else "0"
    overrides = [f"output_dir={tmp_path}/r", "max_steps=4", "eval_every=2",
                 f"overparam={overparam}", f"align.weight={align}"]  # fmt: skip
    summary = run_distill(load_config("configs/smoke-kd.yaml", overrides), progress=False)
    assert calls.count("dev") == dev_evals and calls.count("test") == 1
    records = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    (best,) = [r for r in records if r["split"] == "dev" and r["step"] == summary["best_step"]]
    assert summary["dev"]["accuracy"] == best["accuracy"]
