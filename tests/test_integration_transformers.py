"""OpdfTrainer: OPDF inside transformers.Trainer (train, checkpoint, resume, merge, reload)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForSequenceClassification,
    DataCollatorWithPadding,
    TrainerCallback,
    TrainingArguments,
)

import opdf
from opdf.errors import OpdfError
from opdf.integrations.transformers import OpdfTrainer
from opdf.models import load_model, student_from_teacher
from opdf.overparam import mpo_modules

DATA = Path(__file__).resolve().parents[1] / "configs" / "data" / "smoke-sentiment.csv"
NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


class Texts(torch.utils.data.Dataset):
    """The smoke sentences, tokenized: what a user's Trainer script already has."""

    def __init__(self, tokenizer, n: int = 64):
        with open(DATA, newline="") as f:
            rows = list(csv.DictReader(f))[:n]
        self.items = [
            {**tokenizer(r["text"], truncation=True, max_length=24), "labels": int(r["label"])}
            for r in rows
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


@pytest.fixture(scope="module")
def parts():
    """The smoke config's teacher (tiny BERT fine-tuned on the smoke sentences, cached once per
    test session), dropout off so that a resumed run can match an uninterrupted one."""
    from opdf.run import load_config
    from opdf.run.runner import finetune_teacher

    folder = finetune_teacher(load_config("configs/smoke-kd.yaml"), progress=False)
    teacher, tokenizer = load_model(folder, 2, **NO_DROPOUT)
    return tokenizer, teacher, Texts(tokenizer)


def make_trainer(parts, out: Path, max_steps: int = 6, callbacks=None, optim="adamw_torch",
                 **opdf_kwargs):  # fmt: skip
    tokenizer, teacher, data = parts
    student = student_from_teacher(teacher, [0, 1]).requires_grad_(True)  # the teacher is frozen
    args = TrainingArguments(
        output_dir=str(out), max_steps=max_steps, per_device_train_batch_size=8,
        gradient_accumulation_steps=2, learning_rate=1e-3, save_steps=3, logging_steps=1,
        eval_strategy="no", report_to=[], use_cpu=True, seed=0, disable_tqdm=True,
        dataloader_num_workers=0, optim=optim,
    )  # fmt: skip
    kwargs = {"scheme": "mpo", "unit_modes": 2, "align_weight": 1.0, "kd_alpha": 0.5}
    kwargs.update(opdf_kwargs)
    return OpdfTrainer(
        model=student, args=args, train_dataset=data, processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer), teacher=teacher, callbacks=callbacks,
        **kwargs,
    )  # fmt: skip


class StopAt(TrainerCallback):
    """Ends training after ``step`` optimizer steps, as a kill would (a checkpoint is there)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True
        return control


def weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_trains_checkpoints_cores_and_saves_a_stock_merged_model(parts, tmp_path):
    tokenizer, teacher, data = parts
    trainer = make_trainer(parts, tmp_path / "run")
    student = trainer.model
    assert any(True for _ in mpo_modules(student))  # over-parameterized at construction
    live = dict(student.named_parameters())  # the core Parameters the optimizer trains
    before = {n: p.detach().clone() for n, p in live.items()}
    trainer.train()
    # checkpoints hold the cores (what a resume needs)
    ckpt = weights(tmp_path / "run" / "checkpoint-3")
    assert any(".parametrizations.weight.original" in k for k in ckpt)
    # the logged loss terms: task, KD and alignment, with a gradient into the cores
    logged = [h for h in trainer.state.log_history if "opdf_align" in h]
    assert logged and all(h["opdf_kd"] > 0 and h["opdf_task"] > 0 for h in logged)
    cores = [n for n in live if ".original" in n]
    assert cores and all(not torch.equal(before[n], live[n]) for n in cores)
    # merged in place, then saved: stock transformers loads it, no opdf involved
    assert trainer.merged and not any(True for _ in mpo_modules(student))
    merged = tmp_path / "run" / "merged"
    reloaded = AutoModelForSequenceClassification.from_pretrained(str(merged))
    plain = student_from_teacher(teacher, [0, 1])
    assert sum(p.numel() for p in reloaded.parameters()) == sum(
        p.numel() for p in plain.parameters()
    )
    assert set(reloaded.state_dict()) == set(plain.state_dict())
    batch = tokenizer(["a delightful cast", "a messy plot"], return_tensors="pt", padding=True)
    reloaded.eval()
    student.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded(**batch).logits, student.cpu()(**batch).logits, rtol=1e-5, atol=1e-6
        )
    assert (merged / "tokenizer.json").is_file() or (merged / "vocab.txt").is_file()
    with pytest.raises(OpdfError, match="build a new OpdfTrainer"):
        trainer.train()


def test_resume_from_a_checkpoint_gives_the_same_merged_model(parts, tmp_path):
    make_trainer(parts, tmp_path / "full").train()
    make_trainer(parts, tmp_path / "cut", callbacks=[StopAt(3)]).train()  # "killed" at step 3
    state = json.loads((tmp_path / "cut" / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    resumed = make_trainer(parts, tmp_path / "cut")
    resumed.train(resume_from_checkpoint=str(tmp_path / "cut" / "checkpoint-3"))
    a = weights(tmp_path / "full" / "merged")
    b = weights(tmp_path / "cut" / "merged")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=k)


def test_one_contraction_per_optimizer_step(parts, tmp_path, monkeypatch):
    """With gradient accumulation 2, the cores are contracted once per optimizer step, and the
    same training gives the same model as contracting in every micro-batch (SGD: AdamW would turn
    the rounding noise of the key biases' zero gradient into steps of size lr)."""
    import opdf.overparam as op

    calls = {"n": 0}
    real = op.contract

    def counting(cs):
        calls["n"] += 1
        return real(cs)

    monkeypatch.setattr(op, "contract", counting)
    once = make_trainer(parts, tmp_path / "once", max_steps=2, merged_dir=False, optim="sgd")
    n_weights = sum(1 for _ in mpo_modules(once.model))
    once.train()
    assert calls["n"] == 2 * n_weights + n_weights  # 2 steps, + the merge
    calls["n"] = 0
    each = make_trainer(parts, tmp_path / "each", max_steps=2, merged_dir=False, optim="sgd",
                        one_contraction_per_step=False)  # fmt: skip
    each.train()
    assert calls["n"] == 2 * 2 * n_weights + n_weights  # every micro-batch contracts
    for (name, p), q in zip(once.model.named_parameters(), each.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=name)


def test_bad_arguments_are_user_errors(parts, tmp_path):
    tokenizer, teacher, data = parts
    student = student_from_teacher(teacher, [0, 1]).requires_grad_(False)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    with pytest.raises(OpdfError, match="requires grad"):
        OpdfTrainer(model=student, args=args, teacher=teacher)
    student.requires_grad_(True)
    with pytest.raises(OpdfError, match="needs a teacher"):
        OpdfTrainer(model=student, args=args, align_weight=1.0)
    with pytest.raises(OpdfError, match="kd_alpha"):
        OpdfTrainer(model=student, args=args, teacher=teacher, kd_alpha=1.5)
    with pytest.raises(OpdfError, match="needs model"):
        OpdfTrainer(args=args, model_init=lambda: student)
    plain = student_from_teacher(teacher, [0, 1]).requires_grad_(True)
    opdf.overparameterize(plain, scheme="svd")
    trainer = OpdfTrainer(model=plain, args=args, teacher=teacher, scheme="mpo")
    # an already over-parameterized model is used as it is
    assert {p.scheme for _, _, p in mpo_modules(trainer.model)} == {"svd"}


def test_under_torchrun_two_processes_train_the_one_process_model(parts, tmp_path):
    """The Trainer's own DDP (accelerate, gloo, find_unused_parameters as the Trainer sets it)
    with OPDF's one contraction per step: 2 processes x 4 examples x 2 accumulation steps give
    the model 1 process x 8 x 2 gives; rank 0 alone writes the merged model."""
    import os
    import subprocess
    import sys

    from opdf.run import load_config
    from opdf.run.runner import finetune_teacher

    teacher_dir = str(finetune_teacher(load_config("configs/smoke-kd.yaml"), progress=False))
    script = str(Path(__file__).with_name("hf_trainer_script.py"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, script, str(tmp_path / "one"), "8", teacher_dir],
                         env=env, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         script, str(tmp_path / "two"), "4", teacher_dir],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    r1 = json.loads(one.stdout.strip().splitlines()[-1])
    r2 = json.loads(two.stdout.strip().splitlines()[-1])
    assert (r1["world_size"], r2["world_size"]) == (1, 2)
    assert r2["losses"] == pytest.approx(r1["losses"], rel=1e-4)
    a, b = weights(tmp_path / "one" / "merged"), weights(tmp_path / "two" / "merged")
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-4
