"""AlignmentLoss: pairing, gradients (unlike the published code), zero on equal models, errors."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

import opdf
from opdf.align import uniform_layer_map
from opdf.cli import main as cli_main
from opdf.errors import OpdfError


def bert(
    layers: int, hidden: int = 32, seed: int = 0, frozen: bool = False
) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=100,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=2 * hidden,
        max_position_embeddings=32,
        num_labels=2,
    )
    return BertForSequenceClassification(cfg).requires_grad_(not frozen)


def test_uniform_layer_maps():
    assert uniform_layer_map(12, 6) == {0: 1, 1: 3, 2: 5, 3: 7, 4: 9, 5: 11}
    assert uniform_layer_map(6, 3) == {0: 1, 1: 3, 2: 5}
    assert uniform_layer_map(4, 4) == {0: 0, 1: 1, 2: 2, 3: 3}
    with pytest.raises(OpdfError, match="12 is not a multiple of 5.*layer_map"):
        uniform_layer_map(12, 5)


def test_pairs_follow_the_layer_map_and_roles():
    student = opdf.overparameterize(bert(3, seed=1), unit_modes=3)
    teacher = bert(6, frozen=True)
    align = opdf.AlignmentLoss(student, teacher)
    assert align.layer_map == {0: 1, 1: 3, 2: 5}
    # 3 layers x 6 modules x 4 auxiliary cores (5 cores, central index 2 left free)
    assert len(align.pairs) == 3 * 6 * 4
    first = align.pairs[0]
    assert first == (
        "bert.encoder.layer.0.attention.self.query.parametrizations.weight.original0",
        "bert.encoder.layer.1.attention.self.query.parametrizations.weight.original0",
    )
    assert not any(s.endswith("original2") for s, _ in align.pairs)
    roles = {(s.split(".")[3], s.split(".")[-4]) for s, _ in align.pairs}
    assert ("0", "query") in roles and ("2", "dense") in roles
    for s, t in align.pairs:  # same role on both sides
        assert s.split(".", 4)[-1] == t.split(".", 4)[-1]
    custom = opdf.AlignmentLoss(student, teacher, layer_map={0: 0, 2: 4})
    assert {s.split(".")[3] for s, _ in custom.pairs} == {"0", "2"}
    assert {t.split(".")[3] for _, t in custom.pairs} == {"0", "4"}
    with pytest.raises(OpdfError, match="out of range"):
        opdf.AlignmentLoss(student, teacher, layer_map={0: 9})
    with pytest.raises(OpdfError, match="not a multiple"):
        opdf.AlignmentLoss(student, bert(4, frozen=True))


def test_gradient_reaches_every_auxiliary_core_and_no_central_core():
    student = opdf.overparameterize(bert(2, seed=1), unit_modes=3)
    teacher = bert(4, frozen=True)
    with torch.no_grad():  # move the identity cores off the teacher's, so their MSE is not 0
        for cs in opdf.cores(student).values():
            for c in cs[1:-1]:
                c.add_(0.01 * torch.randn_like(c))
    opdf.AlignmentLoss(student, teacher)().backward()
    for cs in opdf.cores(student).values():
        for k, core in enumerate(cs):
            if k == 2:
                assert core.grad is None
            else:
                assert core.grad is not None and float(core.grad.abs().sum()) > 0
    # the plain teacher was decomposed into frozen buffers: it gets no gradient
    assert all(p.grad is None for p in teacher.parameters())


def test_live_teacher_cores_train_only_when_asked():
    student = opdf.overparameterize(bert(2, seed=1), unit_modes=2)
    teacher = opdf.overparameterize(bert(4), unit_modes=2)
    for p in teacher.parameters():
        p.requires_grad_(False)
    opdf.AlignmentLoss(student, teacher)().backward()
    assert all(p.grad is None for p in teacher.parameters())
    for p in teacher.parameters():  # LGTM trains its teacher
        p.requires_grad_(True)
    with torch.no_grad():  # identity cores equal the student's: move them so their MSE is not 0
        for cs in opdf.cores(teacher).values():
            for c in cs[1:-1]:
                c.add_(0.01 * torch.randn_like(c))
    align = opdf.AlignmentLoss(student, teacher)
    align().backward()
    paired = {t for _, t in align.pairs}
    for name, p in teacher.named_parameters():
        if name in paired:
            assert p.grad is not None and float(p.grad.abs().sum()) > 0, name
        else:  # central cores, unpaired layers, embeddings: untouched
            assert p.grad is None, name
    assert not any(n.endswith("original1") for n in paired)  # 4 cores: central index 1


def test_trainable_plain_teacher_is_refused():
    student = opdf.overparameterize(bert(2, seed=1), unit_modes=1)
    with pytest.raises(OpdfError, match="requires_grad_\\(False\\).*over-parameterize it"):
        opdf.AlignmentLoss(student, bert(4).requires_grad_(True))


def test_mpnet_teacher_pairs_roles_with_a_bert_student():
    from transformers import MPNetConfig, MPNetForSequenceClassification

    torch.manual_seed(0)
    teacher = MPNetForSequenceClassification(
        MPNetConfig(
            vocab_size=100,
            hidden_size=32,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=40,
        )
    ).requires_grad_(False)
    student = opdf.overparameterize(bert(2, seed=1), unit_modes=1)
    align = opdf.AlignmentLoss(student, teacher)
    assert len(align.pairs) == 2 * 6 * 2
    assert (
        "bert.encoder.layer.0.attention.self.query.parametrizations.weight.original0",
        "mpnet.encoder.layer.1.attention.attn.q.parametrizations.weight.original0",
    ) in align.pairs
    assert (
        "bert.encoder.layer.1.attention.output.dense.parametrizations.weight.original2",
        "mpnet.encoder.layer.3.attention.attn.o.parametrizations.weight.original2",
    ) in align.pairs
    assert float(align().detach()) > 0


def test_plain_and_overparameterized_teacher_give_the_same_loss():
    student = opdf.overparameterize(bert(2, seed=1), unit_modes=3)
    plain_teacher = bert(4, frozen=True)
    live_teacher = opdf.overparameterize(copy.deepcopy(plain_teacher), unit_modes=3)
    a = opdf.AlignmentLoss(student, plain_teacher)()
    b = opdf.AlignmentLoss(student, live_teacher)()
    assert torch.allclose(a, b, atol=1e-7)
    assert float(a.detach()) > 0


def test_zero_on_identical_models_and_weight_scales():
    teacher = bert(2)
    student = opdf.overparameterize(copy.deepcopy(teacher), unit_modes=3)
    teacher.requires_grad_(False)
    same = {0: 0, 1: 1}
    loss = opdf.AlignmentLoss(student, teacher, layer_map=same, cores="all")()
    assert float(loss.detach()) == 0.0
    other = opdf.AlignmentLoss(student, bert(2, seed=5, frozen=True), layer_map=same)
    doubled = opdf.AlignmentLoss(student, bert(2, seed=5, frozen=True), layer_map=same, weight=2.0)
    assert torch.allclose(doubled().detach(), 2 * other().detach())


def test_sgd_on_alignment_alone_pulls_aux_cores_to_the_teacher():
    student = opdf.overparameterize(bert(2, seed=1), unit_modes=3)
    align = opdf.AlignmentLoss(student, bert(4, frozen=True))
    params = [c for cs in opdf.cores(student).values() for c in cs]
    # the loss is a mean over elements and pairs, so per-element gradients are ~1/(numel * pairs)
    opt = torch.optim.SGD(params, lr=2000.0)
    start = float(align().detach())
    for _ in range(300):
        opt.zero_grad()
        align().backward()
        opt.step()
    assert float(align().detach()) < 0.1 * start


def test_core_selection():
    student = opdf.overparameterize(bert(2, seed=1), unit_modes=3)
    teacher = bert(4, frozen=True)
    assert len(opdf.AlignmentLoss(student, teacher, cores="all").pairs) == 2 * 6 * 5
    only = opdf.AlignmentLoss(student, teacher, cores=[0, -1]).pairs
    assert {s[-1] for s, _ in only} == {"0", "4"}
    assert opdf.AlignmentLoss(student, teacher, cores=[np.int64(1)]).pairs[0][0][-1] == "1"
    with pytest.raises(OpdfError, match="out of range"):
        opdf.AlignmentLoss(student, teacher, cores=[7])
    with pytest.raises(OpdfError, match="'auxiliary', 'all'"):
        opdf.AlignmentLoss(student, teacher, cores="central")


def test_width_mismatch_is_an_error_unless_partial():
    student = opdf.overparameterize(bert(2, hidden=16, seed=1), unit_modes=1)
    teacher = bert(4, hidden=32, frozen=True)
    with pytest.raises(OpdfError, match=r"no same-shaped teacher cores.*\(16, 16\).*\(32, 32\)"):
        opdf.AlignmentLoss(student, teacher)
    # live teacher: the unit-mode cores of different bond size do not match either
    live = opdf.overparameterize(bert(4, hidden=32), unit_modes=1)
    with pytest.raises(OpdfError, match="allow_partial=True"):
        opdf.AlignmentLoss(student, live)
    partial = opdf.AlignmentLoss(student, live, allow_partial=True)
    shapes = {n: tuple(p.shape) for n, p in live.named_parameters()}
    shapes.update({n: tuple(p.shape) for n, p in student.named_parameters()})
    assert partial.pairs and all(shapes[s] == shapes[t] for s, t in partial.pairs)
    assert not any(s.endswith("original0") for s, _ in partial.pairs)  # first cores differ
    assert float(partial().detach()) >= 0


def test_partial_alignment_counts_skipped_modules():
    student = opdf.overparameterize(bert(2, seed=1), unit_modes=1)
    student = opdf.overparameterize(student, targets=["classifier"], unit_modes=1)
    teacher = bert(4, frozen=True)
    teacher.classifier = torch.nn.Linear(32, 5)  # another head: its cores cannot pair
    with pytest.raises(OpdfError, match="classifier"):
        opdf.AlignmentLoss(student, teacher)
    align = opdf.AlignmentLoss(student, teacher, allow_partial=True)
    assert align.skipped == ["classifier"]
    assert len(align.pairs) == 2 * 6 * 2
    assert float(align().detach()) > 0


def test_student_must_be_overparameterized_and_stay_so():
    with pytest.raises(OpdfError, match="overparameterize"):
        opdf.AlignmentLoss(bert(2), bert(4, frozen=True))
    student = opdf.overparameterize(bert(2), unit_modes=1)
    align = opdf.AlignmentLoss(student, bert(4, frozen=True))
    opdf.merge(student)
    with pytest.raises(OpdfError, match="merged"):
        align()


def test_inspect_prints_the_pairing(capsys):
    assert cli_main(["inspect", "bert-base-6", "--teacher", "bert-base"]) == 0
    out = capsys.readouterr().out
    assert "pairs: 144; skipped modules (no same-shaped teacher cores): 0" in out
    assert (
        "bert.encoder.layer.5.output.dense.parametrizations.weight.original4 <- "
        "bert.encoder.layer.11.output.dense.parametrizations.weight.original4"
    ) in out


def test_teacher_normalized_alignment_is_the_relative_error_at_any_scale():
    """normalize='teacher' divides each pair's MSE by the teacher core's mean square: scaling
    both models' weights by c scales the raw loss (c^2 on the cores' elements squared, per the
    sqrt(S) gauge) but leaves the relative one unchanged."""
    teacher, student = bert(4, seed=1, frozen=True), bert(2, seed=2)
    opdf.overparameterize(student, scheme="mpo", unit_modes=1)
    raw = opdf.AlignmentLoss(student, teacher)
    rel = opdf.AlignmentLoss(student, teacher, normalize="teacher")
    expected = []
    for n, p in enumerate(rel._pairs):
        s = opdf.overparam.cores(student)[p.student][p.index]
        t = getattr(rel, rel._frozen[(p.teacher, n)])
        expected.append(((s - t) ** 2).mean() / (t**2).mean())
    torch.testing.assert_close(rel(), torch.stack(expected).mean())
    assert "normalize=teacher" in repr(rel)
    scaled_t, scaled_s = copy.deepcopy(teacher), bert(2, seed=2)
    with torch.no_grad():
        for m in (scaled_t, scaled_s):
            for name, w in m.named_parameters():
                if name.endswith("weight") and w.dim() == 2:
                    w.mul_(4.0)
    opdf.overparameterize(scaled_s, scheme="mpo", unit_modes=1)
    raw4 = opdf.AlignmentLoss(scaled_s, scaled_t)
    rel4 = opdf.AlignmentLoss(scaled_s, scaled_t, normalize="teacher")
    # the raw loss grows with the weights' scale
    assert float(raw4().detach()) > 3.0 * float(raw().detach())
    torch.testing.assert_close(rel4(), rel(), rtol=1e-4, atol=1e-6)
    with pytest.raises(OpdfError, match="normalize must be one of none, teacher"):
        opdf.AlignmentLoss(student, teacher, normalize="norm")
