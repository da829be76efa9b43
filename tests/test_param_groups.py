"""One optimizer-group builder (``opdf.lr_scaling.split_groups``) behind the three paths that
build groups: ``opdf.lr_groups``, the runner's optimizer (``opdf.run.optim``) and
``OpdfTrainer(lr_scaling="auto")``. Same membership, rates and decays for the same model."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, TrainingArguments

import opdf
from opdf.errors import OpdfError
from opdf.lr_scaling import core_rates, is_no_decay, lr_groups, split_groups
from opdf.run import optim

LR = 1e-3


def tiny_student(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, num_labels=2)  # fmt: skip
    return opdf.overparameterize(BertForSequenceClassification(config), "mpo", unit_modes=2)


def by_name(model: torch.nn.Module, groups: list[dict], prefix: str = "") -> dict:
    """``{parameter name: (lr, weight_decay, group size)}``; fails on a parameter in two groups."""
    names = {id(p): prefix + n for n, p in model.named_parameters()}
    out: dict = {}
    for g in groups:
        for p in g["params"]:
            name = names[id(p)]
            assert name not in out, f"{name} in two groups"
            out[name] = (g["lr"], g["weight_decay"], len(g["params"]))
    return out


def runner_groups(model, weight_decay: float) -> list[dict]:
    """What the runner's ``build`` makes of a Distiller's default ``param_groups``."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for _, p in named], "names": [f"student.{n}" for n, _ in named]}]
    settings = SimpleNamespace(lr=LR, weight_decay=weight_decay, lr_scaling="auto")
    optimizer, _ = optim.build_optimizer(groups, settings, model, lambda step: 1.0)
    return optimizer.param_groups


def trainer_groups(model, weight_decay: float, tmp_path) -> list[dict]:
    from opdf.integrations.transformers import OpdfTrainer

    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True,
                             learning_rate=LR, weight_decay=weight_decay)  # fmt: skip
    return OpdfTrainer(model=model, args=args, lr_scaling="auto").create_optimizer().param_groups


def expected(model, weight_decay: float) -> dict:
    """The rule, written out: plain weights at (LR, wd), biases and norms at (LR, 0), every core
    alone at its factors of LR and of wd."""
    rates = {r.name: r for r in core_rates(model)}
    out = {}
    for n, _ in model.named_parameters():
        if n in rates:
            r = rates[n]
            out[n] = (LR * r.lr_factor, weight_decay * r.weight_decay_factor, 1)
        else:
            out[n] = (LR, 0.0 if is_no_decay(n) else weight_decay, None)
    return out


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_the_three_paths_build_the_same_groups(weight_decay, tmp_path):
    model = tiny_student()
    want = expected(model, weight_decay)
    assert sum(1 for v in want.values() if v[2] == 1) == 2 * 6 * 4  # 2 layers x 6 weights x 4
    paths = {
        "lr_groups": by_name(model, lr_groups(model, LR, "auto", weight_decay)),
        "runner": by_name(model, runner_groups(model, weight_decay)),
        "OpdfTrainer": by_name(model, trainer_groups(model, weight_decay, tmp_path)),
    }
    for path, got in paths.items():
        assert set(got) == set(want), path  # every trainable parameter, once
        for n, (lr, wd, size) in want.items():
            assert got[n][:2] == pytest.approx((lr, wd), rel=1e-12), (path, n)
            if size is not None:
                assert got[n][2] == size, (path, n)
    assert len({round(v[0] / LR, 6) for v in want.values()}) > 2  # per-core rates, not one


def test_the_layout_is_plain_groups_then_one_group_per_core_in_model_order(tmp_path):
    model = tiny_student()
    cores = [r.name for r in core_rates(model)]
    names = {id(p): n for n, p in model.named_parameters()}
    for groups in (lr_groups(model, LR, "auto", 0.01), runner_groups(model, 0.01),
                   trainer_groups(model, 0.01, tmp_path)):  # fmt: skip
        layout = [[names[id(p)] for p in g["params"]] for g in groups]
        assert layout[2:] == [[c] for c in cores]
        assert all(is_no_decay(n) for n in layout[1]) and not any(map(is_no_decay, layout[0]))
        assert groups[0]["lr"] == LR and groups[0]["weight_decay"] == 0.01  # the logged rate


def test_extra_groups_keep_their_rate_and_keys_and_their_cores_scale_from_it():
    """A method's own groups (LGTM's teacher at ``t_lr``, an over-parameterized teacher whose
    cores align): cores scale from their group's rate; other keys are kept."""
    student, teacher = tiny_student(0), tiny_student(1)
    s_named = list(student.named_parameters())
    t_named = list(teacher.named_parameters())
    groups = [
        {"params": [p for _, p in s_named], "names": [n for n, _ in s_named]},
        {"params": [p for _, p in t_named], "names": [n for n, _ in t_named], "lr": 5e-2,
         "tag": "teacher"},
    ]  # fmt: skip
    rates = core_rates(student) + core_rates(teacher)
    out = split_groups(groups, 0.01, rates, lr=LR)
    t_rates = {id(r.param): r for r in core_rates(teacher)}
    teacher_cores = [g for g in out if id(g["params"][0]) in t_rates and len(g["params"]) == 1]
    assert len(teacher_cores) == len(t_rates)
    for g in teacher_cores:
        r = t_rates[id(g["params"][0])]
        assert g["lr"] == pytest.approx(5e-2 * r.lr_factor) and g["tag"] == "teacher"
        assert g["weight_decay"] == pytest.approx(0.01 * r.weight_decay_factor)
    plain = [g for g in out if len(g["params"]) > 1]
    assert [g.get("lr") for g in plain] == [None, None, 5e-2, 5e-2]  # lr only where given
    assert [g["weight_decay"] for g in plain] == [0.01, 0.0, 0.01, 0.0]


def test_empty_groups_are_kept_only_when_asked_and_a_core_needs_a_rate():
    w = torch.nn.Parameter(torch.zeros(2, 2))
    one = [{"params": [w], "names": ["fc.weight"], "lr": LR}]
    assert len(split_groups(one, 0.1)) == 1
    kept = split_groups(one, 0.1, keep_empty=True)
    assert [len(g["params"]) for g in kept] == [1, 0] and kept[1]["weight_decay"] == 0.0
    assert len(split_groups(one, 0.1, no_decay=None, keep_empty=True)) == 1
    model = tiny_student()
    named = list(model.named_parameters())
    nameless = [{"params": [p for _, p in named]}]  # no names: everything is decayed
    with pytest.raises(OpdfError, match="has no lr"):
        split_groups(nameless, 0.1, core_rates(model))
    with pytest.raises(OpdfError, match="nothing to train"):
        optim.optimizer_groups([{"params": []}], 0.0, LR, method="kd")


def test_the_runner_schedule_warms_up_then_decays_linearly():
    factors = [optim.warmup_decay(s, 0.2, 10) for s in range(11)]
    assert factors[:2] == pytest.approx([1 / 3, 2 / 3])
    assert factors[2:] == pytest.approx([(10 - s) / 8 for s in range(2, 11)])
