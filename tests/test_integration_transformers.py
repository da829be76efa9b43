"""OpdfTrainer: OPDF inside transformers.Trainer (train, checkpoint, resume, merge, reload)."""

from __future__ import annotations

import csv
import json
import math
import statistics
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
from opdf.lr_scaling import predicted_step
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
                 weight_decay: float = 0.0, **opdf_kwargs):  # fmt: skip
    tokenizer, teacher, data = parts
    student = student_from_teacher(teacher, [0, 1]).requires_grad_(True)  # the teacher is frozen
    args = TrainingArguments(
        output_dir=str(out), max_steps=max_steps, per_device_train_batch_size=8,
        gradient_accumulation_steps=2, learning_rate=1e-3, save_steps=3, logging_steps=1,
        eval_strategy="no", report_to=[], use_cpu=True, seed=0, disable_tqdm=True,
        dataloader_num_workers=0, optim=optim, weight_decay=weight_decay,
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


@pytest.mark.parametrize("lr_scaling", ["none", "auto"])
def test_resume_from_a_checkpoint_gives_the_same_merged_model(parts, tmp_path, lr_scaling):
    """With ``auto`` the resumed optimizer takes the saved per-core rates (the rebuilt groups
    have the same layout), so it too continues exactly."""
    make_trainer(parts, tmp_path / "full", lr_scaling=lr_scaling).train()
    cut = make_trainer(parts, tmp_path / "cut", callbacks=[StopAt(3)], lr_scaling=lr_scaling)
    cut.train()  # "killed" at step 3
    state = json.loads((tmp_path / "cut" / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    resumed = make_trainer(parts, tmp_path / "cut", lr_scaling=lr_scaling)
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


def test_bf16_contraction_contracts_the_training_forwards_under_autocast(
    parts, tmp_path, contraction_modes
):
    """``bf16_contraction=True`` with ``bf16=True``: every training forward contracts under
    autocast, evaluation and the merge never do; refused where it would change nothing."""
    tokenizer, teacher, data = parts
    seen = contraction_modes

    def build(out, accumulation=1, bf16=True, checkpointing=False, **kw):
        student = student_from_teacher(teacher, [0, 1]).requires_grad_(True)
        args = TrainingArguments(
            output_dir=str(out), max_steps=2, per_device_train_batch_size=8, bf16=bf16,
            gradient_accumulation_steps=accumulation, learning_rate=1e-3, save_strategy="no",
            eval_strategy="no", report_to=[], use_cpu=True, seed=0, disable_tqdm=True,
            dataloader_num_workers=0, activation_checkpointing=checkpointing,
        )  # fmt: skip
        return OpdfTrainer(model=student, args=args, train_dataset=data, eval_dataset=data,
                           processing_class=tokenizer, teacher=teacher, unit_modes=2,
                           data_collator=DataCollatorWithPadding(tokenizer), merged_dir=False,
                           bf16_contraction=True, **kw)  # fmt: skip

    trainer = build(tmp_path / "bf16c")
    trainer.train()
    assert seen == {(True, True), (False, False)}  # training follows autocast; the merge not
    seen.clear()
    trainer = build(tmp_path / "eval")
    trainer.evaluate()
    assert seen == {(False, False)}
    with pytest.raises(OpdfError, match=r"set TrainingArguments\(bf16=True\)"):
        build(tmp_path / "fp32", bf16=False)
    with pytest.raises(OpdfError, match="opdf.accumulate\\) is float32 by design"):
        build(tmp_path / "acc", accumulation=2)
    with pytest.raises(OpdfError, match=r"activation \(gradient\) checkpointing: the recomputed"):
        build(tmp_path / "ckpt", checkpointing=True)
    with pytest.raises(OpdfError, match="a plain model has no contraction"):
        build(tmp_path / "plain", scheme="none", bf16=False)  # said first: bf16 would not help
    seen.clear()
    build(tmp_path / "each", accumulation=2, one_contraction_per_step=False).train()
    assert seen == {(True, True), (False, False)}  # every micro-batch contracts in bf16


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
    with pytest.raises(OpdfError, match="one of: none, auto; got 'fast'"):
        OpdfTrainer(model=student, args=args, teacher=teacher, lr_scaling="fast")
    for optim in ("sgd", "adafactor"):
        other = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[],
                                  optim=optim)  # fmt: skip
        fresh = student_from_teacher(teacher, [0, 1]).requires_grad_(True)
        with pytest.raises(OpdfError, match=f"Adam's per-entry step; optim='{optim}'"):
            OpdfTrainer(model=fresh, args=other, teacher=teacher, lr_scaling="auto")
    fresh = student_from_teacher(teacher, [0, 1]).requires_grad_(True)
    with pytest.raises(OpdfError, match="derived for Adam/AdamW; .* 'SGD'"):
        OpdfTrainer(model=fresh, args=args, teacher=teacher, lr_scaling="auto",
                    optimizer_cls_and_kwargs=(torch.optim.SGD, {"lr": 0.1}))  # fmt: skip
    fresh = student_from_teacher(teacher, [0, 1]).requires_grad_(True)
    own = torch.optim.AdamW(fresh.parameters())
    with pytest.raises(OpdfError, match="drop optimizers"):
        OpdfTrainer(model=fresh, args=args, teacher=teacher, lr_scaling="auto",
                    optimizers=(own, None))  # fmt: skip
    fresh = student_from_teacher(teacher, [0, 1]).requires_grad_(True)
    auto = OpdfTrainer(model=fresh, args=args, teacher=teacher, lr_scaling="auto")
    auto.is_deepspeed_enabled = True  # as the Trainer sets it under a DeepSpeed config
    with pytest.raises(OpdfError, match="not supported under DeepSpeed"):
        auto._check_auto_optimizer()
    plain = student_from_teacher(teacher, [0, 1]).requires_grad_(True)
    opdf.overparameterize(plain, scheme="svd")
    trainer = OpdfTrainer(model=plain, args=args, teacher=teacher, scheme="mpo")
    # an already over-parameterized model is used as it is
    assert {p.scheme for _, _, p in mpo_modules(trainer.model)} == {"svd"}


# ----------------------------------------------------------------------------- lr_scaling="auto"


def group_of(model, optimizer) -> dict[str, dict]:
    """Each trainable parameter's group, by name; fails if a parameter is in two."""
    names = {id(p): n for n, p in model.named_parameters()}
    out: dict[str, dict] = {}
    for g in optimizer.param_groups:
        for p in g["params"]:
            assert names[id(p)] not in out, "a parameter in two groups"
            out[names[id(p)]] = g
    return out


def test_auto_groups_are_the_rules_rates_over_the_trainers_decay_split(parts, tmp_path):
    auto = make_trainer(parts, tmp_path / "a", weight_decay=0.01, lr_scaling="auto")
    none = make_trainer(parts, tmp_path / "n", weight_decay=0.01)
    model, lr = auto.model, auto.args.learning_rate
    got = group_of(model, auto.create_optimizer())
    assert set(got) == {n for n, p in model.named_parameters() if p.requires_grad}  # once each
    # the cores: opdf.lr_groups's rates and decays for the same model and lr
    rule = group_of(model, torch.optim.AdamW(opdf.lr_groups(model, lr, "auto", 0.01)))
    cores = [n for n in got if ".parametrizations.weight.original" in n]
    assert cores and all(len(got[n]["params"]) == 1 for n in cores)
    for n in cores:
        assert got[n]["lr"] == pytest.approx(rule[n]["lr"], rel=1e-12)
        assert got[n]["weight_decay"] == pytest.approx(rule[n]["weight_decay"], rel=1e-12)
    assert len({round(got[n]["lr"] / lr, 6) for n in cores}) > 1  # not one rate
    # the plain parameters: the Trainer's own decay / no-decay split, at args.learning_rate
    base = group_of(none.model, none.create_optimizer())
    first = auto.optimizer.param_groups[0]
    assert first["lr"] == lr and first["weight_decay"] == 0.01  # the rate the Trainer logs
    for n, g in got.items():
        if n not in cores:
            assert (g["lr"], g["weight_decay"]) == (lr, base[n]["weight_decay"]), n
    assert {base[n]["weight_decay"] for n in cores} == {0.01}  # the Trainer decays cores too
    assert {base[n]["weight_decay"] for n in got if "bias" in n} == {0.0}


def rms_steps(trainer, names: list[str]) -> dict[str, float]:
    """RMS change of each named merged weight over one ``trainer.train()`` (which merges)."""
    with torch.no_grad():
        before = {n: trainer.model.get_submodule(n).weight.detach().clone() for n in names}
    trainer.train()
    with torch.no_grad():
        return {
            n: float((trainer.model.get_submodule(n).weight - w).pow(2).mean().sqrt())
            for n, w in before.items()
        }


@pytest.mark.parametrize("unit_modes", [1, 4])
def test_auto_first_step_moves_merged_weights_like_the_plain_student(parts, tmp_path, unit_modes):
    """One real OpdfTrainer step (KD + task, clipping, scheduler): RMS change of each merged
    weight over the plain student's. This width-64 student's small weights make one common rate
    move W less than plain at 1 unit mode (predicted 0.83) and more at 4 (1.25); auto gives 1."""
    ratio, predicted = {}, {}
    for scaling in ("none", "auto"):
        t = make_trainer(parts, tmp_path / scaling, max_steps=1, merged_dir=False,
                         align_weight=0.0, unit_modes=unit_modes, lr_scaling=scaling)  # fmt: skip
        predicted = predicted_step(t.model, "none")
        ratio[scaling] = rms_steps(t, list(predicted))
    plain = make_trainer(parts, tmp_path / "plain", max_steps=1, merged_dir=False,
                         align_weight=0.0, scheme="none")  # fmt: skip
    ref = rms_steps(plain, list(predicted))
    auto = {n: v / ref[n] for n, v in ratio["auto"].items()}
    none = {n: v / ref[n] for n, v in ratio["none"].items()}
    assert 0.75 <= statistics.median(auto.values()) <= 1.33, auto  # the bands
    assert all(0.6 <= v <= 1.6 for v in auto.values()), auto
    assert abs(math.log(statistics.median(auto.values()))) < math.log(1.05)
    assert abs(math.log(statistics.median(none.values()))) > math.log(1.15), none
    for n in none:  # and one common rate moves W as the derivation predicts
        assert none[n] == pytest.approx(predicted[n], rel=0.05), n


def test_scheduler_keeps_the_per_core_ratios(parts, tmp_path):
    t = make_trainer(parts, tmp_path / "run", max_steps=6, callbacks=[StopAt(3)],
                     merged_dir=False, lr_scaling="auto")  # fmt: skip
    start = [g["lr"] for g in t.create_optimizer().param_groups]
    t.train()  # the linear schedule: 3 of 6 steps done, every rate at half its start
    now = [g["lr"] for g in t.optimizer.param_groups]
    assert t.state.global_step == 3 and len(set(start)) > 2
    assert now == pytest.approx([0.5 * s for s in start], rel=1e-9)
    assert [g["initial_lr"] for g in t.optimizer.param_groups] == start


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


def _tiny_bert(num_labels: int, seed: int):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, num_labels=num_labels, **NO_DROPOUT)  # fmt: skip
    return BertForSequenceClassification(config)


def test_a_regression_model_gets_the_kd_methods_mse_toward_its_teacher(tmp_path):
    """num_labels=1: on main the KD term was a softmax KL over one logit, always 0 (the model
    trained on a tenth of its label loss); it is the CLI `kd` method's MSE, on the same batch."""
    import copy

    from opdf.distill.kd import KD

    teacher, student = _tiny_bert(1, seed=0), _tiny_bert(1, seed=1)
    reference = copy.deepcopy(student)
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, max_steps=1)
    trainer = OpdfTrainer(model=student, args=args, teacher=teacher, scheme="none", kd_alpha=0.9)
    g = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(0, 60, (4, 7), generator=g),
             "attention_mask": torch.ones(4, 7, dtype=torch.long),
             "labels": torch.randn(4, generator=g)}  # fmt: skip
    student.train()
    trainer.compute_loss(student, batch)
    kd = trainer._terms["kd"]
    kd_method = KD(reference.train(), teacher, KD.Options(alpha=0.9), num_labels=1)
    _, cli = kd_method.forward_train(batch)
    assert float(kd) > 1e-6  # exactly 0 on main
    assert torch.allclose(kd, cli["kd"].detach().float(), rtol=1e-5, atol=1e-7)
    assert torch.allclose(trainer._terms["task"], cli["ce"].detach().float(), rtol=1e-5)


def test_a_teacher_with_other_labels_is_refused_when_the_trainer_is_built(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, max_steps=1)
    with pytest.raises(OpdfError, match="student has 1 output.* teacher 2"):
        OpdfTrainer(model=_tiny_bert(1, 0), args=args, teacher=_tiny_bert(2, 1), scheme="none")


# ----------------------------------------------------------------------------- the distiller


class Rows(torch.utils.data.Dataset):
    """Random token rows with float labels: a regression task the test makes itself."""

    def __init__(self, n: int = 16, length: int = 7, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, 60, (n, length), generator=g)
        self.labels = torch.randn(n, generator=g)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]),
                "labels": self.labels[i]}  # fmt: skip


def test_a_regression_student_trains_on_a_nonzero_kd_term_through_the_kd_distiller(tmp_path):
    """num_labels=1, over-parameterized, two real Trainer steps: the logged KD term (the `kd`
    method's MSE toward the teacher's prediction) is non-zero and the cores move."""
    from opdf.distill.kd import KD

    teacher, student = _tiny_bert(1, seed=0), _tiny_bert(1, seed=1)
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, max_steps=2,
                             per_device_train_batch_size=8, logging_steps=1, learning_rate=1e-3,
                             save_strategy="no", disable_tqdm=True)  # fmt: skip
    trainer = OpdfTrainer(model=student, args=args, train_dataset=Rows(), teacher=teacher,
                          scheme="mpo", unit_modes=1, merged_dir=False)  # fmt: skip
    assert isinstance(trainer.distiller, KD) and trainer.distiller.num_labels == 1
    assert (trainer.distiller.options.alpha, trainer.distiller.options.temperature) == (0.9, 4.0)
    cores = {n: p.detach().clone() for n, p in student.named_parameters() if ".original" in n}
    live = dict(student.named_parameters())
    trainer.train()
    logged = [h for h in trainer.state.log_history if "opdf_kd" in h]
    assert len(logged) == 2 and all(h["opdf_kd"] > 1e-6 and h["opdf_task"] > 0 for h in logged)
    assert cores and all(not torch.equal(cores[n], live[n]) for n in cores)


class Images(torch.utils.data.Dataset):
    def __len__(self):
        return 16

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return {"pixel_values": torch.randn(3, 8, 8, generator=g), "labels": i % 3}


def test_a_transformers_image_classifier_distils_through_the_kd_distiller(tmp_path):
    """pixel_values batches reach the distiller too (a ViT's output has .logits)."""
    from transformers import ViTConfig, ViTForImageClassification

    def vit(seed: int):
        torch.manual_seed(seed)
        return ViTForImageClassification(ViTConfig(
            image_size=8, patch_size=4, hidden_size=16, num_hidden_layers=1,
            num_attention_heads=2, intermediate_size=32, num_labels=3))  # fmt: skip

    teacher, student = vit(0), vit(1)
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, max_steps=2,
                             per_device_train_batch_size=8, logging_steps=1, learning_rate=1e-3,
                             save_strategy="no", disable_tqdm=True)  # fmt: skip
    trainer = OpdfTrainer(model=student, args=args, train_dataset=Images(), teacher=teacher,
                          scheme="mpo", unit_modes=1, merged_dir=False)  # fmt: skip
    trainer.train()
    logged = [h for h in trainer.state.log_history if "opdf_kd" in h]
    assert len(logged) == 2 and all(h["opdf_kd"] > 0 and h["opdf_task"] > 0 for h in logged)


def test_the_distiller_by_name_with_options_or_built_gives_the_methods_own_terms(tmp_path):
    from opdf.distill.kd import KD

    teacher, student = _tiny_bert(2, seed=0), _tiny_bert(2, seed=1)
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, max_steps=1)
    g = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(0, 60, (4, 7), generator=g),
             "attention_mask": torch.ones(4, 7, dtype=torch.long),
             "labels": torch.tensor([0, 1, 1, 0])}  # fmt: skip
    weights = {"ce_weight": 1.0, "kd_weight": 3.0, "temperature": 2.0}
    by_name = OpdfTrainer(model=student, args=args, teacher=teacher, scheme="none",
                          method_options=weights)  # fmt: skip
    built = KD(student, teacher, KD.Options(**weights), num_labels=2)
    by_instance = OpdfTrainer(model=student, args=args, distiller=built, scheme="none")
    assert by_instance.teacher is teacher and by_instance.distiller is built
    student.train()
    _, want = built.forward_train(batch)
    for trainer in (by_name, by_instance):
        trainer.compute_loss(student, batch)
        assert torch.allclose(trainer._terms["kd"], want["kd"].detach(), rtol=1e-6)
        assert torch.allclose(trainer._terms["task"], want["ce"].detach(), rtol=1e-6)
    # no labels: a clear error, unless KD alone (kd_alpha=1) needs none
    unlabelled = {k: v for k, v in batch.items() if k != "labels"}
    with pytest.raises(OpdfError, match="no labels, which kd's task term needs"):
        by_name.compute_loss(student, unlabelled)
    alone = OpdfTrainer(model=student, args=args, teacher=teacher, scheme="none", kd_alpha=1.0)
    alone.compute_loss(student, unlabelled)
    assert set(alone._terms) == {"kd"}
    with pytest.raises(OpdfError, match="the batch has pixel_values"):
        alone.compute_loss(student, {**unlabelled, "pixel_values": torch.zeros(4, 3)})


def test_distillers_an_integration_cannot_run_are_refused_by_name(tmp_path):
    teacher, student = _tiny_bert(2, seed=0), _tiny_bert(2, seed=1)
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)

    def build(**kw):
        return OpdfTrainer(model=student, args=args, scheme="none", **kw)

    with pytest.raises(OpdfError, match="method dkd needs on_train_start, on_step_end"):
        build(teacher=teacher, distiller="dkd")
    with pytest.raises(OpdfError, match="method lgtm needs .*`opdf distill`"):
        build(teacher=teacher, distiller="lgtm")
    with pytest.raises(OpdfError, match="unknown method 'nope'"):
        build(teacher=teacher, distiller="nope")
    with pytest.raises(OpdfError, match="unknown option.* alhpa for kd; valid: temperature"):
        build(teacher=teacher, method_options={"alhpa": 0.5})
    with pytest.raises(OpdfError, match=r"kd.alpha: 2.0 must be in \[0, 1\]"):
        build(teacher=teacher, method_options={"alpha": 2.0})
    with pytest.raises(OpdfError, match="kd_alpha=0.5 and method_options alpha=0.7: give one"):
        build(teacher=teacher, kd_alpha=0.5, method_options={"alpha": 0.7})
    with pytest.raises(OpdfError, match="kd_alpha and kd_temperature are the kd method's"):
        build(teacher=teacher, distiller="adkd", kd_alpha=0.5)
    with pytest.raises(OpdfError, match="need a teacher"):
        build(distiller="adkd")
    smoothing = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True,
                                  label_smoothing_factor=0.1)  # fmt: skip
    with pytest.raises(OpdfError, match="label_smoothing_factor is not applied"):
        OpdfTrainer(model=student, args=smoothing, teacher=teacher, scheme="none")
    other = _tiny_bert(2, seed=2)
    from opdf.distill.kd import KD

    with pytest.raises(OpdfError, match="the distiller's student is not the model"):
        build(distiller=KD(other, teacher, num_labels=2))
    with pytest.raises(OpdfError, match="teacher= is not the distiller's teacher"):
        build(teacher=other, distiller=KD(student, teacher, num_labels=2))
