"""Methods in isolation: registry, KD loss, Theseus replacement and schedulers (no training run)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertForSequenceClassification

from opdf.distill import Distiller, get_method, method_names, methods, register_method
from opdf.distill.kd import KD, kd_loss
from opdf.distill.theseus import (
    ConstantReplacementScheduler,
    LinearReplacementScheduler,
    Theseus,
)
from opdf.errors import ConfigError


def tiny_bert(layers=4, seed=0):
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=layers,
                     num_attention_heads=2, intermediate_size=32, num_labels=2)  # fmt: skip
    return BertForSequenceClassification(cfg).eval()


def batch(n=4, length=7, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(1, 100, (n, length), generator=g),
        "attention_mask": torch.ones(n, length, dtype=torch.long),
        "labels": torch.randint(0, 2, (n,), generator=g),
    }


def test_registry_lists_builtins_and_rejects_bad_classes():
    assert {"kd", "theseus"} <= set(method_names())
    assert get_method("kd") is KD and methods()["theseus"] is Theseus
    with pytest.raises(ConfigError, match="valid methods: .*kd"):
        get_method("nope")
    with pytest.raises(TypeError):
        register_method("bad")(object)


def test_a_new_method_plugs_in_without_touching_the_runner(capsys):
    @register_method("test-ce-only")
    class CEOnly(Distiller):
        """Cross-entropy only (a test method)."""

        @dataclass
        class Options:
            scale: float = 1.0

        def forward_train(self, batch):
            logits = self.student(input_ids=batch["input_ids"]).logits
            return logits, {"ce": self.options.scale * F.cross_entropy(logits, batch["labels"])}

    from opdf.cli import main
    from opdf.run.config import config_from_dict

    try:
        assert main(["methods"]) == 0
        assert "test-ce-only  Cross-entropy only (a test method)." in capsys.readouterr().out
        cfg = config_from_dict({"method": "test-ce-only", "test-ce-only": {"scale": 2},
                                "data": {"name": "rt-polarity"}})  # fmt: skip
        assert cfg.method_options.scale == 2.0
        d = CEOnly(tiny_bert(2), tiny_bert(4), cfg.method_options)
        _, losses = d.forward_train(batch())
        assert set(losses) == {"ce"}
    finally:
        from opdf.distill import unregister_method

        unregister_method("test-ce-only")


def test_kd_loss_formula():
    s, t = torch.randn(5, 3), torch.randn(5, 3)
    T = 4.0
    p_t = F.softmax(t / T, -1)
    expected = (p_t * (p_t.log() - F.log_softmax(s / T, -1))).sum(-1).mean() * T**2
    assert torch.allclose(kd_loss(s, t, T), expected, atol=1e-6)
    assert kd_loss(t, t, T).abs() < 1e-6


def test_kd_forward_weights_and_frozen_teacher():
    teacher = tiny_bert(4)
    student = KD.build_student(teacher)
    opts = KD.Options(temperature=2.0, alpha=0.25)
    d = KD(student, teacher, opts).train()
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    b = batch()
    logits, losses = d.forward_train(b)
    with torch.no_grad():
        t_logits = teacher(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    assert torch.allclose(losses["ce"], 0.75 * F.cross_entropy(logits, b["labels"]))
    assert torch.allclose(losses["kd"], 0.25 * kd_loss(logits, t_logits, 2.0))
    sum(losses.values()).backward()
    assert all(p.grad is None for p in teacher.parameters())
    independent = KD.Options(ce_weight=1.0, kd_weight=3.0)
    assert independent.weights() == (1.0, 3.0)


def test_replacement_schedulers():
    const = ConstantReplacementScheduler(0.5, steps_for_replacing=10)
    assert [const.rate(t) for t in (0, 9, 10, 100)] == [0.5, 0.5, 1.0, 1.0]
    lin = LinearReplacementScheduler(0.3, 0.1)
    assert lin.rate(0) == pytest.approx(0.3)  # b applies before the first step
    assert lin.rate(3) == pytest.approx(0.6)
    assert lin.rate(7) == 1.0 and lin.rate(1000) == 1.0
    assert lin.steps_to_successor() == 7


def test_theseus_replacement_forward():
    teacher = tiny_bert(4)
    student = Theseus.build_student(teacher)  # bottom 2 layers
    d = Theseus(student, teacher, Theseus.Options(scheduler="linear", replacing_rate=0.0,
                                                  linear_k=0.5))  # fmt: skip
    d.eval()  # no dropout: compare functions exactly
    b = batch()
    inputs = {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]}
    with torch.no_grad():
        t_logits = teacher(**inputs).logits
        s_logits = student(**inputs).logits
        d.step = 0  # p = 0: every module runs its predecessor layers = the teacher
        p0, _ = d.forward_train(b)
        d.step = 2  # p = 1: every module runs its successor = the student
        p1, _ = d.forward_train(b)
    assert torch.allclose(p0, t_logits, atol=1e-6)
    assert torch.allclose(p1, s_logits, atol=1e-6)
    assert not torch.allclose(t_logits, s_logits)
    # the swap is undone: the student is a plain 2-layer model again
    assert len(student.bert.encoder.layer) == 2
    assert d.on_step_end(0) == {"replacing_rate": 0.5}  # after step 0: the rate of step 1


def test_theseus_trains_only_successor_layers():
    teacher = tiny_bert(4)
    student = Theseus.build_student(teacher)
    d = Theseus(student, teacher, Theseus.Options())
    names = [n for g in d.param_groups() for n in g["names"]]
    assert names and all(n.startswith("student.bert.encoder.layer.") for n in names)
    d.train()
    d.step = 10**6  # successor only
    _, losses = d.forward_train(batch())
    losses["ce"].backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is None for p in student.bert.embeddings.parameters())
    assert all(p.grad is None for p in student.classifier.parameters())
    assert all(p.grad is not None for p in student.bert.encoder.layer.parameters())


def test_theseus_needs_a_divisible_layer_count():
    teacher = tiny_bert(4)
    student = Theseus.build_student(teacher, layers=[0, 1, 2])
    with pytest.raises(ConfigError, match="multiple of"):
        Theseus(student, teacher, Theseus.Options())


def test_theseus_linear_schedule_sized_to_the_run():
    from types import SimpleNamespace

    teacher = tiny_bert(4)
    opts = Theseus.Options(scheduler="linear", replacing_rate=0.3, linear_k=None, replace_until=0.5)
    d = Theseus(Theseus.build_student(teacher), teacher, opts)
    d.on_train_start(SimpleNamespace(total_steps=100))
    assert d.rate(0) == pytest.approx(0.3)
    assert d.rate(49) < 1.0 and d.rate(50) == 1.0 and d.rate(100) == 1.0


@pytest.mark.parametrize(
    "options, warns",
    [
        (dict(scheduler="constant", steps_for_replacing=100), True),  # p = 1 only after the run
        (dict(scheduler="constant", steps_for_replacing=60), False),
        (dict(scheduler="linear", linear_k=0.001), True),  # reaches 1 at step 700
        (dict(scheduler="linear", replace_until=1.0), True),  # reaches 1 at the very end
        (dict(scheduler="linear", replace_until=0.5), False),
    ],
)
def test_theseus_warns_when_the_successor_never_trains_alone(options, warns, recwarn):
    from types import SimpleNamespace

    teacher = tiny_bert(4)
    d = Theseus(Theseus.build_student(teacher), teacher, Theseus.Options(**options))
    d.on_train_start(SimpleNamespace(total_steps=100))
    messages = [str(w.message) for w in recwarn if "never train alone" in str(w.message)]
    assert bool(messages) == warns
