"""DBKD in isolation: the decision -> pseudo-logit solver against the closed form and independent
integrals, the teacher-query cache (reused, and keyed on what decides the queries), the loss."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import integrate
from scipy.stats import norm

from opdf.distill import dbkd as dbkd_mod
from opdf.distill.dbkd import (
    DBKD,
    binary_gap,
    pseudo_logits,
    solve_pseudo_logits,
    win_probabilities,
)
from opdf.errors import ConfigError


def orthant_by_quad(mu, i, scale=1.0):
    """P(z_i > z_j for all j != i), z ~ N(mu, scale^2 I), by adaptive quadrature."""
    mu = np.asarray(mu, dtype=float)

    def f(t):
        return norm.pdf(t) * np.prod(
            [norm.cdf(t + (mu[i] - mu[j]) / scale) for j in range(len(mu)) if j != i]
        )

    return integrate.quad(f, -np.inf, np.inf, epsabs=1e-12, epsrel=1e-12)[0]


@pytest.mark.parametrize("n", [10, 20])
@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_binary_solver_matches_the_closed_form(n, scale):
    counts = np.array([[k, n - k] for k in range(1, n)])
    p = counts / n
    exact = binary_gap(p[:, 0], scale)  # sqrt(2) scale Phi^-1(p)
    assert exact[n // 2 - 1] == pytest.approx(0.0, abs=1e-12)
    for quadrature in (False, True):  # closed-form P, and the K-class quadrature on 2 classes
        mu = solve_pseudo_logits(p, scale, rounds=200, tol=1e-12, quadrature=quadrature)
        np.testing.assert_allclose(mu[:, 0] - mu[:, 1], exact, atol=1e-8)
        # the official stopping rule (20 rounds, sum |change| <= 1e-3) stops short of it near
        # p = 0 or 1 (why pseudo_logits uses the closed form for 2 classes)
        official = solve_pseudo_logits(p, scale, quadrature=quadrature)
        np.testing.assert_allclose(official[:, 0] - official[:, 1], exact, atol=0.03)
    centred = pseudo_logits(counts, scale)
    np.testing.assert_allclose(centred[:, 0] - centred[:, 1], exact, atol=1e-12)
    np.testing.assert_allclose(centred.sum(1), 0, atol=1e-12)


def test_values_of_the_official_iteration():
    # kd-methods.md: re-derived from the official fixed-point iteration (N = 10)
    gaps = pseudo_logits(np.array([[k, 10 - k] for k in (5, 6, 7, 8, 9, 10)]))
    np.testing.assert_allclose(gaps[:, 0] - gaps[:, 1], [0, 0.358, 0.741, 1.189, 1.810, 3.10],
                               atol=3e-3)  # fmt: skip
    mu = solve_pseudo_logits(np.array([[1.0, 0, 0], [0.8, 0.2, 0]]))
    np.testing.assert_allclose(mu, [[2.52, -0.76, -0.76], [1.618, 0.409, -1.027]], atol=5e-3)
    # symmetric: the 0/10 row mirrors 10/0; a permutation of the counts permutes the logits
    both = pseudo_logits(np.array([[10, 0], [0, 10]]))
    np.testing.assert_allclose(both[0], -both[1])
    c = np.array([[6, 3, 1, 0]])
    perm = [2, 0, 3, 1]
    np.testing.assert_allclose(pseudo_logits(c[:, perm]), pseudo_logits(c)[:, perm], atol=1e-12)


@pytest.mark.parametrize("mu", [[2.52, -0.76, -0.76], [0.3, -1.2, 0.9, 0.0], [4.0, 0.0, -4.0]])
def test_win_probabilities_against_adaptive_quadrature_and_sampling(mu):
    got = win_probabilities(np.array([mu]), 1.3)[0]
    ref = [orthant_by_quad(mu, i, 1.3) for i in range(len(mu))]
    np.testing.assert_allclose(got, ref, atol=1e-10)
    assert got.sum() == pytest.approx(1.0, abs=1e-12)
    z = np.random.default_rng(0).normal(mu, 1.3, size=(200_000, len(mu)))
    freq = np.bincount(z.argmax(1), minlength=len(mu)) / len(z)
    np.testing.assert_allclose(got, freq, atol=4e-3)


def test_multiclass_solution_reproduces_the_decision_distribution():
    for row in ([5, 3, 2], [4, 4, 2], [7, 2, 1], [3, 3, 3, 1]):
        c = np.array([row], dtype=float)
        mu = solve_pseudo_logits(c / c.sum(), rounds=500, tol=1e-13)
        np.testing.assert_allclose(win_probabilities(mu), c / c.sum(), atol=1e-9)


# ------------------------------------------------------------------------------ the method


@pytest.fixture(scope="module")
def tiny_teacher():
    from opdf.models import load_model

    return load_model("tiny-bert", 2, seed=0)


@pytest.fixture
def tiny(tiny_teacher):
    """``(teacher, student, tokenizer)``: a fresh copy of the tiny teacher, 2 of its layers."""
    import copy

    teacher = copy.deepcopy(tiny_teacher[0]).eval()
    return teacher, DBKD.build_student(teacher, [0, 1]), tiny_teacher[1]


def context(texts, labels, tok):
    from opdf.data import TextSplit

    split = TextSplit(list(texts), list(labels))
    return SimpleNamespace(dataset=SimpleNamespace(train=split), tokenizer=tok, max_length=24,
                           config=None, progress=False, total_steps=1,
                           device=torch.device("cpu"))  # fmt: skip


TEXTS = [
    "what a messy cast , really .",
    "what a delightful performance , really .",
    "it is a tedious story with a stupid cast .",
    "the cast is wonderful .",
    "an awful , boring film .",
    "a warm and lovely film about friendship .",
]


def test_queries_are_cached_and_reused_keyed_on_teacher_data_and_perturbation(monkeypatch, tiny):
    calls = []
    real = dbkd_mod.query_decisions

    def counting(*args, **kwargs):
        calls.append(len(args[3]))
        return real(*args, **kwargs)

    monkeypatch.setattr(dbkd_mod, "query_decisions", counting)
    teacher, student, tok = tiny
    ctx = context(TEXTS, [0, 1, 0, 1, 0, 1], tok)
    first = DBKD(student, teacher, DBKD.Options(n_copies=6))
    first.on_train_start(ctx)
    assert calls == [len(TEXTS)] and not first.query_info["cached"]
    path = first.query_info["cache"]
    assert path.startswith(str(dbkd_mod.query_cache_dir()))
    # a second run (new method object, same teacher weights, data and settings) only reads
    student2 = DBKD.build_student(teacher, [0, 1])
    second = DBKD(student2, teacher, DBKD.Options(n_copies=6, kd_alpha=0.2, sigma=3.0))
    second.on_train_start(ctx)
    assert calls == [len(TEXTS)] and second.query_info["cached"]
    assert second.query_info["cache"] == path
    torch.testing.assert_close(second.targets, first.targets)
    # what decides the queries is in the key: perturbation settings, the data, the teacher
    DBKD(student2, teacher, DBKD.Options(n_copies=6, perturb_seed=1)).on_train_start(ctx)
    DBKD(student2, teacher, DBKD.Options(n_copies=6)).on_train_start(
        context(TEXTS[:-1], [0, 1, 0, 1, 0], tok)
    )
    with torch.no_grad():
        teacher.classifier.bias += 0.5
    DBKD(student2, teacher, DBKD.Options(n_copies=6)).on_train_start(ctx)
    assert len(calls) == 4


def test_targets_follow_the_decision_counts(tiny):
    teacher, student, tok = tiny
    d = DBKD(student, teacher, DBKD.Options(n_copies=10))
    decisions = np.array([[0] * 10, [1] * 7 + [0] * 3, [0] * 5 + [1] * 5])
    d.set_decisions(decisions)
    gaps = (d.targets[:, 0] - d.targets[:, 1]).numpy()
    np.testing.assert_allclose(gaps, [3.10, -binary_gap(0.7), 0.0], atol=2e-3)
    assert torch.allclose(d.targets.sum(1), torch.zeros(3), atol=1e-6)


def test_loss_is_ce_plus_kl_to_the_scaled_pseudo_logits(tiny):
    teacher, student, tok = tiny
    opts = DBKD.Options(kd_alpha=0.7, ce_alpha=1.0, temperature=2.0, sigma=1.5)
    d = DBKD(student, teacher, opts).train()
    d.set_decisions(np.array([[0] * 10, [1] * 8 + [0] * 2, [0] * 6 + [1] * 4]))
    enc = tok(["a b c", "d e", "f"], padding=True, return_tensors="pt")
    batch = {**enc, "labels": torch.tensor([0, 1, 1]), "index": torch.tensor([2, 0, 1])}
    torch.manual_seed(0)
    logits, losses = d.forward_train(batch)
    mu = d.targets[batch["index"]]
    p_t = F.softmax(1.5 * mu / 2.0, -1)
    kl = (p_t * (p_t.log() - F.log_softmax(logits / 2.0, -1))).sum(-1).mean() * 4.0
    torch.testing.assert_close(losses["kd"], 0.7 * kl)
    torch.testing.assert_close(losses["ce"], F.cross_entropy(logits, batch["labels"]))
    sum(losses.values()).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert student.classifier.weight.grad.abs().sum() > 0


def test_bad_options_and_regression_are_clear_errors(tiny):
    teacher, student, _ = tiny
    with pytest.raises(ConfigError, match="classification"):
        DBKD(student, teacher, num_labels=1)
    for bad, msg in ((dict(n_copies=0), "n_copies"), (dict(operations=["sr"]), "WordNet"),
                     (dict(insert_words="wordnet"), "valid choices: sentence, corpus"),
                     (dict(temperature=0), "temperature")):  # fmt: skip
        with pytest.raises(ConfigError, match=msg):
            DBKD.Options(**bad).validate()
    assert math.isfinite(float(pseudo_logits(np.array([[10, 0]])).max()))


def test_an_unreadable_cache_entry_is_queried_again(tiny):
    teacher, student, tok = tiny
    ctx = context(TEXTS, [0, 1, 0, 1, 0, 1], tok)
    d = DBKD(student, teacher, DBKD.Options(n_copies=3, perturb_seed=77))
    d.on_train_start(ctx)
    path = d.query_info["cache"]
    with open(path, "wb") as f:
        f.write(b"not a torch file")  # e.g. a disk that filled up mid-write by another tool
    again = DBKD(student, teacher, DBKD.Options(n_copies=3, perturb_seed=77))
    again.on_train_start(ctx)
    assert not again.query_info["cached"]
    torch.testing.assert_close(again.targets, d.targets)
    third = DBKD(student, teacher, DBKD.Options(n_copies=3, perturb_seed=77))
    third.on_train_start(ctx)
    assert third.query_info["cached"]


def test_a_cache_that_cannot_be_written_warns_and_the_run_goes_on(tiny, monkeypatch):
    teacher, student, tok = tiny
    ctx = context(TEXTS, [0, 1, 0, 1, 0, 1], tok)

    def full_disk(path, write):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(dbkd_mod, "atomic_write_bytes", full_disk)
    d = DBKD(student, teacher, DBKD.Options(n_copies=3, perturb_seed=78))
    with pytest.warns(UserWarning, match="could not cache its teacher queries"):
        d.on_train_start(ctx)
    assert not d.query_info["cached"] and d.targets.shape[0] == len(TEXTS)


def test_a_regression_task_is_refused_before_the_teacher_fine_tune(monkeypatch):
    from types import SimpleNamespace

    from opdf.run import runner
    from opdf.run.config import load_config

    def never(*args, **kwargs):
        raise AssertionError("the teacher fine-tune ran before the task check")

    monkeypatch.setattr(runner, "load_data", lambda cfg: SimpleNamespace(num_labels=1))
    monkeypatch.setattr(runner, "finetune_teacher", never)
    with pytest.raises(ConfigError, match="regression task: use kd, theseus or adkd"):
        runner.build(load_config("configs/smoke-dbkd.yaml"))
