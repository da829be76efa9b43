"""LGTM in isolation: the simulated student step, the distillation-influence correction and the
teacher's step, each against an independent computation on tiny models (float64, no dropout)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertForSequenceClassification

from opdf.distill import get_method
from opdf.distill.lgtm import LGTM, simulated_step, soft_loss


def tiny_bert(layers, seed, hidden=16, dropout=0.0):
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=50, hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=2, intermediate_size=2 * hidden, num_labels=3,
                     hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)  # fmt: skip
    cfg._attn_implementation = "eager"  # double backward (one test) has no fused-attention kernel
    return BertForSequenceClassification(cfg).double()


def batch(n=6, length=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(1, 50, (n, length), generator=g),
        "attention_mask": torch.ones(n, length, dtype=torch.long),
        "labels": torch.randint(0, 3, (n,), generator=g),
    }


def lgtm(influence_loss="teacher", **kw):
    opts = LGTM.Options(init_classifier_to_zero=False, influence_loss=influence_loss, **kw)
    return LGTM(tiny_bert(2, 0), tiny_bert(3, 1, hidden=24), opts, num_labels=3)


def inputs(b):
    return {k: v for k, v in b.items() if k != "labels"}


def test_registered_with_the_paper_defaults():
    assert get_method("lgtm") is LGTM
    o = LGTM.Options()
    assert (o.alpha_kd, o.t_alpha_kd, o.temperature, o.t_lr, o.fd_r) == (1.0, 0.4, 1.0, 3e-5, 0.01)


def test_soft_loss_is_lgtm_cal_loss():
    a, b = torch.randn(4, 3), torch.randn(4, 3)
    p_b = F.softmax(b / 2, -1)
    expected = (p_b * (F.log_softmax(b / 2, -1) - F.log_softmax(a / 2, -1))).sum(-1).mean()
    assert torch.allclose(soft_loss(a, b, 2.0), expected, atol=1e-6)


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("max_norm", [None, 1e-3])
def test_simulated_step_is_the_real_step_on_a_copy(max_norm, fused):
    model = tiny_bert(1, 0).float()
    params = list(model.parameters())
    groups = [{"params": params[:5], "weight_decay": 0.1}, {"params": params[5:], "lr": 2e-3}]
    opt = torch.optim.AdamW(groups, lr=1e-3, weight_decay=0.0, fused=fused)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 / (s + 1))  # as the trainer has
    b = batch()
    for _ in range(2):  # some optimizer state, and one parameter with a lagging step count
        opt.zero_grad()
        F.cross_entropy(model(**inputs(b)).logits, b["labels"]).backward()
        params[0].grad = None
        opt.step()
        sched.step()
    opt.zero_grad()
    grads = torch.autograd.grad(F.cross_entropy(model(**inputs(b)).logits, b["labels"]), params)
    before = [p.detach().clone() for p in params]
    state_before = copy.deepcopy(opt.state_dict())
    got = simulated_step(opt, params, [g.clone() for g in grads], max_norm)
    # nothing real moved
    assert all(torch.equal(p, q) for p, q in zip(params, before, strict=True))
    assert str(opt.state_dict()) == str(state_before)
    assert all(p.grad is None for p in params)
    # the real step, as the trainer takes it
    for p, g in zip(params, grads, strict=True):
        p.grad = g
    if max_norm:
        torch.nn.utils.clip_grad_norm_(params, max_norm)
    opt.step()
    assert all(torch.equal(q, p.detach()) for p, q in zip(params, got, strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(params, before, strict=True))


def test_simulated_step_refuses_parameters_outside_the_optimizer():
    from opdf.errors import OpdfError

    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.AdamW([a])
    with pytest.raises(OpdfError, match="1 parameters of the unrolled student"):
        simulated_step(opt, [a, b], [torch.ones(2), torch.ones(2)])


def direct_finite_difference(d, b, vector, r, influence_loss):
    """The official code's step 4: perturb a copy of the student in place, differentiate the full
    loss (CE included) at both points by autograd, subtract."""
    student, teacher = copy.deepcopy(d.student).eval(), copy.deepcopy(d.teacher).eval()
    s_params = [p for p in student.parameters() if p.requires_grad]
    t_params = [p for p in teacher.parameters() if p.requires_grad]
    R = r / torch.cat([v.reshape(-1) for v in vector]).norm()
    o, y = d.options, b["labels"]
    grads = []
    for sign in (1, -1):
        with torch.no_grad():
            for p, v in zip(s_params, vector, strict=True):
                p.add_(sign * R * v)
        t, s = teacher(**inputs(b)).logits, student(**inputs(b)).logits
        if influence_loss == "teacher":  # L_T: soft targets are the student's (detached)
            loss = o.t_alpha_kd * soft_loss(t, s.detach(), o.temperature)
            loss = loss + (1 - o.t_alpha_kd) * F.cross_entropy(t, y)
        else:  # L_S, through the teacher's logits
            loss = o.alpha_kd * soft_loss(s, t, o.temperature)
            loss = loss + (1 - o.alpha_kd) * F.cross_entropy(s, y)
        grads.append(torch.autograd.grad(loss, t_params, allow_unused=True))
        with torch.no_grad():
            for p, v in zip(s_params, vector, strict=True):
                p.sub_(sign * R * v)
    return [
        (torch.zeros_like(p) if gp is None else (gp - gn) / (2 * R))
        for p, gp, gn in zip(t_params, *grads, strict=True)
    ]


def quiz_gradient(student, seed=7):
    q = batch(seed=seed)
    params = [p for p in student.parameters() if p.requires_grad]
    return list(torch.autograd.grad(F.cross_entropy(student(**inputs(q)).logits, q["labels"]),
                                    params))  # fmt: skip


@pytest.mark.parametrize("influence_loss", ["teacher", "student"])
def test_influence_correction_equals_the_direct_finite_difference(influence_loss):
    d = lgtm(influence_loss, alpha_kd=0.7, temperature=2.0)
    b, vector = batch(), quiz_gradient(d.student)
    got = d.influence_correction(b, vector)
    expected = direct_finite_difference(d, b, vector, d.options.fd_r, influence_loss)
    assert len(got) == len(expected)
    scale = max(float(e.abs().max()) for e in expected)
    assert scale > 1e-6  # the test means something
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-9 * scale)


@pytest.mark.parametrize("influence_loss", ["teacher", "student"])
def test_influence_correction_approximates_the_mixed_second_derivative(influence_loss):
    """The finite difference is d/dtheta_T of (dL/dtheta_S . v), here by double backward."""
    d = lgtm(influence_loss)
    b, vector = batch(), quiz_gradient(d.student)
    student, teacher = d.student.eval(), d.teacher.eval()
    s_params = [p for p in student.parameters() if p.requires_grad]
    t_params = [p for p in teacher.parameters() if p.requires_grad]
    t, s = teacher(**inputs(b)).logits, student(**inputs(b)).logits
    loss = d.influence_objective(t, s)
    g_s = torch.autograd.grad(loss, s_params, create_graph=True, allow_unused=True)
    dot = sum((g * v).sum() for g, v in zip(g_s, vector, strict=True) if g is not None)
    exact = torch.autograd.grad(dot, t_params, allow_unused=True)
    exact = [torch.zeros_like(p) if e is None else e for p, e in zip(t_params, exact, strict=True)]
    got = d.influence_correction(b, vector)
    flat_got = torch.cat([g.reshape(-1) for g in got])
    flat_exact = torch.cat([e.reshape(-1) for e in exact])
    assert flat_exact.norm() > 0
    assert (flat_got - flat_exact).norm() / flat_exact.norm() < 1e-3


def test_teacher_step_is_the_official_algorithm():
    """Steps 1-5 against a deep-copy implementation written like the official LGTMTeacher."""
    d = lgtm(alpha_kd=0.8, t_alpha_kd=0.4, fd_r=0.01)
    s_opt = torch.optim.AdamW(d.student.parameters(), lr=1e-3, weight_decay=0.01)
    t_opt = torch.optim.AdamW(d.teacher.parameters(), lr=2e-3)
    b, q = batch(seed=1), batch(seed=2)
    # one real student step first, so the simulated step starts from a non-empty state
    F.cross_entropy(d.student(**inputs(b)).logits, b["labels"]).backward()
    s_opt.step()
    s_opt.zero_grad()

    # --- the reference: copies everywhere
    student, teacher = copy.deepcopy(d.student), copy.deepcopy(d.teacher)
    o, y = d.options, b["labels"]
    t_log, s_log = teacher(**inputs(b)).logits, student(**inputs(b)).logits
    l_s = o.alpha_kd * soft_loss(s_log, t_log.detach(), 1.0) + 0.2 * F.cross_entropy(s_log, y)
    l_t = 0.4 * soft_loss(t_log, s_log.detach(), 1.0) + 0.6 * F.cross_entropy(t_log, y)
    g_s = torch.autograd.grad(l_s, list(student.parameters()))
    g_t = torch.autograd.grad(l_t, list(teacher.parameters()))
    unrolled = copy.deepcopy(student)
    u_opt = torch.optim.AdamW(unrolled.parameters(), lr=1e-3, weight_decay=0.01)
    u_opt.load_state_dict(copy.deepcopy(s_opt.state_dict()))
    for p, g in zip(unrolled.parameters(), g_s, strict=True):
        p.grad = g.clone()
    torch.nn.utils.clip_grad_norm_(list(unrolled.parameters()), 1.0)
    u_opt.step()
    vector = torch.autograd.grad(F.cross_entropy(unrolled(**inputs(q)).logits, q["labels"]),
                                 list(unrolled.parameters()))  # fmt: skip
    implicit = direct_finite_difference(d, b, vector, 0.01, "teacher")
    ref_t_opt = torch.optim.AdamW(teacher.parameters(), lr=2e-3)
    for p, g, ig in zip(teacher.parameters(), g_t, implicit, strict=True):
        p.grad = g - 2e-3 * ig
    torch.nn.utils.clip_grad_norm_(list(teacher.parameters()), 1.0)
    ref_t_opt.step()

    # --- LGTM
    s_before = [p.detach().clone() for p in d.student.parameters()]
    t_before = [p.detach().clone() for p in d.teacher.parameters()]
    s_state = str(s_opt.state_dict())
    logged = d.teacher_step(b, q, s_opt, t_opt, max_grad_norm=1.0)
    assert set(logged) == {"teacher_loss", "quiz_loss", "influence_norm"}
    assert logged["influence_norm"] > 0
    assert all(torch.equal(p, q) for p, q in zip(d.student.parameters(), s_before, strict=True))
    assert str(s_opt.state_dict()) == s_state
    for p, ref in zip(d.teacher.parameters(), teacher.parameters(), strict=True):
        torch.testing.assert_close(p, ref, rtol=1e-9, atol=1e-12)
    assert any(not torch.equal(p, q) for p, q in zip(d.teacher.parameters(), t_before, strict=True))
    assert all(p.grad is None for p in d.teacher.parameters())
    assert not d.teacher.training


@pytest.mark.parametrize("influence_loss", ["student", "teacher"])
def test_student_influence_is_the_derivative_of_the_quiz_loss_through_the_unrolled_step(
    influence_loss,
):
    """``influence_loss: student``: the teacher's gradient is ``g_T + d CE(H; theta'_S) /
    d theta_T`` with ``theta'_S = theta_S - eta_S g_S(theta_T)`` (SGD student optimizer, two
    groups at different rates), against double backward through the unrolled step. The
    official form (``teacher``) is not that derivative: the same check fails for it."""
    from torch.func import functional_call

    d = lgtm(influence_loss, alpha_kd=0.6, temperature=2.0, fd_r=1e-3)
    named = [(n, p) for n, p in d.student.named_parameters()]
    body = [p for n, p in named if n.startswith("bert.encoder")]
    rest = [p for n, p in named if not n.startswith("bert.encoder")]
    s_opt = torch.optim.SGD([{"params": body, "lr": 0.5}, {"params": rest, "lr": 0.2}])
    t_opt = torch.optim.SGD(d.teacher.parameters(), lr=1e-3)
    b, q = batch(seed=1), batch(seed=2)
    o, y = d.options, b["labels"]
    t_params = list(d.teacher.parameters())
    lr_of = {id(p): 0.5 for p in body} | {id(p): 0.2 for p in rest}
    # the exact derivative: quiz loss of the unrolled student as a function of the teacher
    t, s = d.teacher(**inputs(b)).logits, d.student(**inputs(b)).logits
    l_s = o.alpha_kd * soft_loss(s, t, o.temperature) + (1 - o.alpha_kd) * F.cross_entropy(s, y)
    g_s = torch.autograd.grad(l_s, [p for _, p in named], create_graph=True)
    unrolled = {n: p - lr_of[id(p)] * g for (n, p), g in zip(named, g_s, strict=True)}
    quiz = F.cross_entropy(functional_call(d.student, unrolled, (), inputs(q)).logits,
                           q["labels"])  # fmt: skip
    exact = torch.autograd.grad(quiz, t_params)
    s_det = d.student(**inputs(b)).logits.detach()
    t = d.teacher(**inputs(b)).logits
    l_t = o.t_alpha_kd * soft_loss(t, s_det, o.temperature)
    l_t = l_t + (1 - o.t_alpha_kd) * F.cross_entropy(t, y)
    g_t = torch.autograd.grad(l_t, t_params)
    # LGTM's step: the teacher's gradient read back from its SGD update
    before = [p.detach().clone() for p in t_params]
    d.teacher_step(b, q, s_opt, t_opt, max_grad_norm=None)
    grad = [(b0 - p.detach()) / 1e-3 for b0, p in zip(before, t_params, strict=True)]
    got = torch.cat([(g - gt).reshape(-1) for g, gt in zip(grad, g_t, strict=True)])
    want = torch.cat([e.reshape(-1) for e in exact])
    assert want.norm() > 1e-6  # the test means something
    error = float((got - want).norm() / want.norm())
    if influence_loss == "student":
        assert error < 1e-3, error
    else:
        assert error > 0.1, error


def test_forward_train_uses_the_teacher_in_eval_mode_and_without_gradient():
    d = LGTM(tiny_bert(2, 0), tiny_bert(3, 1, dropout=0.5),
             LGTM.Options(init_classifier_to_zero=False, alpha_kd=0.5), num_labels=3)  # fmt: skip
    d.train()
    assert d.student.training and not d.teacher.training
    logits, losses = d.forward_train(batch())
    assert set(losses) == {"kd", "ce"}
    sum(losses.values()).backward()
    assert all(p.grad is None for p in d.teacher.parameters())
    assert any(p.grad is not None for p in d.student.parameters())


def test_zeroed_heads_output_uniform_predictions():
    d = LGTM(tiny_bert(2, 0), tiny_bert(3, 1), LGTM.Options(init_classifier_to_zero=True),
             num_labels=3)  # fmt: skip
    b = batch()
    for model in (d.student, d.teacher):
        assert torch.equal(model(**inputs(b)).logits, torch.zeros(6, 3, dtype=torch.float64))


def test_a_teacher_gradient_that_is_not_finite_stops_before_the_teacher_moves():
    from opdf.errors import DivergedError

    d = lgtm()
    s_opt = torch.optim.AdamW(d.student.parameters(), lr=1e-3)
    t_opt = torch.optim.AdamW(d.teacher.parameters(), lr=1e-3)
    with torch.no_grad():
        d.teacher.classifier.bias.fill_(float("inf"))
    before = {k: v.clone() for k, v in d.teacher.state_dict().items()}
    with pytest.raises(DivergedError, match="teacher's corrected gradient is not finite"):
        d.teacher_step(batch(seed=1), batch(seed=2), s_opt, t_opt, max_grad_norm=1.0)
    after = d.teacher.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    assert not t_opt.state  # no step taken
