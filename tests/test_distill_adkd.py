"""AD-KD in isolation: attribution maps against an independent autograd computation, integrated
gradients' completeness, the double-backprop gradient against finite differences, the loss."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertForSequenceClassification

from opdf.distill.adkd import ADKD, attribution_loss, attribution_map
from opdf.errors import ConfigError


def tiny_bert(layers=4, labels=2, hidden=16, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=100, hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=2, intermediate_size=32, num_labels=labels)  # fmt: skip
    return BertForSequenceClassification(cfg).to(dtype).eval()


def batch(n=4, length=7, labels=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, length, dtype=torch.long)
    mask[0, 4:] = 0  # one padded example
    return {
        "input_ids": torch.randint(1, 100, (n, length), generator=g) * mask,
        "attention_mask": mask,
        "labels": torch.randint(0, labels, (n,), generator=g),
    }


def pair(labels=2, dtype=torch.float32, **opts):
    teacher = tiny_bert(4, labels, dtype=dtype)
    with torch.no_grad():  # a teacher that differs from the student's layers
        for p in teacher.bert.encoder.layer[3].parameters():
            p.add_(0.1 * torch.randn_like(p))
    student = ADKD.build_student(teacher, [0, 1])
    d = ADKD(student, teacher, ADKD.Options(**opts), num_labels=labels)
    return d.eval(), teacher, student  # eval: no dropout, so everything is deterministic


def reference_maps(model, b, topk=None, views=None):
    """Attribution maps by plain autograd on ``hidden_states[0]`` (no hooks)."""
    model = copy.deepcopy(model).requires_grad_(True)  # frozen or not: e needs a gradient
    out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                output_hidden_states=True)  # fmt: skip
    e = out.hidden_states[0]
    if views is None:
        fs = [F.cross_entropy(out.logits, b["labels"])]
    else:
        fs = [-F.log_softmax(out.logits, -1)[:, c].mean() for c in range(views)]
    maps = []
    for f in fs:
        (g,) = torch.autograd.grad(f, e, retain_graph=True)
        ig = (g * e).detach().abs()
        if topk is not None:
            ig = ig.topk(topk, dim=-1).values
        maps.append(F.normalize(ig.norm(dim=-1), dim=1))
    return maps


@pytest.mark.parametrize("topk", [None, 11])
def test_attribution_maps_match_plain_autograd(topk):
    d, teacher, student = pair(topk=topk)
    b = batch()
    inputs = {k: b[k] for k in ("input_ids", "attention_mask")}
    _, (t_ig,) = d.attributions(teacher, inputs, b["labels"], create_graph=False)
    _, (s_ig,) = d.attributions(student, inputs, b["labels"], create_graph=True)
    (t_ref,) = reference_maps(teacher, b, topk)
    (s_ref,) = reference_maps(student, b)
    torch.testing.assert_close(attribution_map(t_ig, topk), t_ref)
    torch.testing.assert_close(attribution_map(s_ig), s_ref)
    assert (attribution_map(t_ig, topk)[0, 4:] == 0).all()  # padding: no gradient, no score
    assert not torch.allclose(t_ref, s_ref)
    assert all(p.grad is None for p in teacher.parameters()) and not teacher.training


def test_multi_view_has_one_map_per_class():
    d, teacher, student = pair(labels=3)
    assert d.multi_view
    b = batch(labels=3)
    inputs = {k: b[k] for k in ("input_ids", "attention_mask")}
    _, t_igs = d.attributions(teacher, inputs, b["labels"], create_graph=False)
    _, s_igs = d.attributions(student, inputs, b["labels"], create_graph=True)
    assert len(t_igs) == len(s_igs) == 3
    t_ref, s_ref = reference_maps(teacher, b, views=3), reference_maps(student, b, views=3)
    for ig, ref in zip(t_igs, t_ref, strict=True):
        torch.testing.assert_close(attribution_map(ig), ref)
    for ig, ref in zip(s_igs, s_ref, strict=True):
        torch.testing.assert_close(attribution_map(ig), ref)
    _, losses = d.forward_train(b)
    expected = sum(attribution_loss(t, s) for t, s in zip(t_ref, s_ref, strict=True))
    torch.testing.assert_close(losses["attr"], expected)
    # two classes: one view with the task loss (both class views give the same normalised map)
    two, _, _ = pair(labels=2)
    assert not two.multi_view and pair(labels=2, multi_view=True)[0].multi_view


def test_integrated_gradients_are_the_riemann_sum_over_scaled_embeddings():
    # IG(e) = e * (1/m) sum_k dF/d(k/m e), recomputed here with output_hidden_states and a hook
    m = 3
    d, teacher, student = pair(ig_steps=m)
    b = batch()
    inputs = {k: b[k] for k in ("input_ids", "attention_mask")}
    for model, create_graph in ((teacher, False), (student, True)):
        ref = copy.deepcopy(model).requires_grad_(True)
        grads, e = [], None
        for k in range(1, m + 1):
            h = ref.bert.embeddings.register_forward_hook(lambda mod, a, out, s=k / m: out * s)
            try:
                out = ref(**inputs, output_hidden_states=True)
            finally:
                h.remove()
            scaled = out.hidden_states[0]
            grads.append(torch.autograd.grad(F.cross_entropy(out.logits, b["labels"]), scaled)[0])
            e = scaled.detach()  # k = m: the unscaled embedding output
        expected = e * torch.stack(grads).mean(0)
        _, (ig,) = d.attributions(model, inputs, b["labels"], create_graph=create_graph)
        torch.testing.assert_close(ig.detach(), expected)
        one, _, _ = pair(ig_steps=1)
        _, (gxi,) = one.attributions(model, inputs, b["labels"], create_graph=create_graph)
        torch.testing.assert_close(gxi.detach(), e * grads[-1])  # 1 step: gradient x input
        assert not torch.allclose(gxi.detach(), ig.detach())


def test_attribution_loss_gradient_reaches_student_embeddings_by_double_backprop():
    d, teacher, student = pair(dtype=torch.float64, alpha=0.0, beta=1.0)
    b = batch()

    def attr_loss():
        return d.forward_train(b)[1]["attr"]

    student.zero_grad()
    attr_loss().backward()
    emb = student.bert.embeddings.word_embeddings.weight
    cls = student.classifier.weight  # reached only through the gradient: second order
    assert emb.grad[b["input_ids"][1]].abs().sum() > 0 and cls.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())
    h = 1e-6
    for param, idx in ((emb, (int(b["input_ids"][1, 2]), 3)), (cls, (1, 5))):
        with torch.no_grad():
            old = param[idx].item()
            param[idx] = old + h
            up = attr_loss().item()
            param[idx] = old - h
            down = attr_loss().item()
            param[idx] = old
        assert param.grad[idx].item() == pytest.approx((up - down) / (2 * h), rel=1e-4, abs=1e-9)


def test_total_loss_is_alpha_kd_plus_ce_plus_beta_attribution():
    d, teacher, student = pair(alpha=0.8, temperature=2.0, beta=3.0)
    b = batch()
    logits, losses = d.forward_train(b)
    assert set(losses) == {"ce", "kd", "attr"}
    with torch.no_grad():
        t = teacher(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        s = student(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    torch.testing.assert_close(logits, s)
    kd = -(F.softmax(t / 2, -1) * F.log_softmax(s / 2, -1)).sum(-1).mean()
    torch.testing.assert_close(losses["kd"], 0.8 * kd)
    torch.testing.assert_close(losses["ce"], 0.2 * F.cross_entropy(s, b["labels"]))
    (t_ref,), (s_ref,) = reference_maps(teacher, b), reference_maps(student, b)
    torch.testing.assert_close(losses["attr"], 3.0 * attribution_loss(t_ref, s_ref))
    plain, _, _ = pair(beta=0.0)
    assert set(plain.forward_train(b)[1]) == {"ce", "kd"}


def test_annealed_temperature_and_bad_settings():
    from types import SimpleNamespace

    d, _, _ = pair(temperature=4.0, anneal=True)
    ctx = SimpleNamespace(steps_per_epoch=10, total_steps=30)
    d.on_train_start(ctx)  # 10 steps per epoch, 3 epochs: T = 4, 2.5, 1
    assert [d.temperature(s) for s in (0, 9, 10, 25, 29)] == [4.0, 4.0, 2.5, 1.0, 1.0]
    teacher = tiny_bert(4)
    with pytest.raises(ConfigError, match="same hidden size"):
        ADKD(tiny_bert(2, hidden=32), teacher)
    with pytest.raises(ConfigError, match="exceeds the hidden size 16"):
        ADKD(ADKD.build_student(teacher), teacher, ADKD.Options(topk=17))
    with pytest.raises(ConfigError, match="ig_steps"):
        ADKD.Options(ig_steps=0).validate()


def test_a_student_model_of_another_width_is_refused_before_the_teacher_fine_tune(
    monkeypatch, tmp_path
):
    from types import SimpleNamespace

    from opdf.run import runner
    from opdf.run.config import load_config

    narrow = tmp_path / "narrow-bert"
    tiny_bert(2, hidden=32).save_pretrained(narrow)  # tiny-bert, the teacher, is 64 wide

    def never(*args, **kwargs):
        raise AssertionError("the teacher fine-tune ran before the width check")

    monkeypatch.setattr(runner, "load_data", lambda cfg: SimpleNamespace(num_labels=2))
    monkeypatch.setattr(runner, "finetune_teacher", never)
    cfg = load_config("configs/smoke-adkd.yaml", [f"student.model={narrow}", "student.layers=null"])
    with pytest.raises(ConfigError, match=r"same hidden size \(teacher.model 'tiny-bert': 64, "):
        runner.build(cfg)
    # the same width passes the check (and reaches the fine-tune)
    wide = tmp_path / "wide-bert"
    tiny_bert(2, hidden=64).save_pretrained(wide)
    with pytest.raises(AssertionError, match="fine-tune ran"):
        runner.build(
            load_config("configs/smoke-adkd.yaml", [f"student.model={wide}", "student.layers=null"])
        )
