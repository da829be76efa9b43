"""DKD's loss against a hand computation; TinyViT's sparse labels rebuilt from the stored top-k."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from opdf.data.views import ImageView
from opdf.data.vision import load_vision_dataset
from opdf.distill import get_method
from opdf.distill.base import TrainContext
from opdf.distill.dkd import dkd_loss, dkd_terms, warmup_factor
from opdf.distill.kd import kd_loss
from opdf.distill.tinyvit import (
    TOPK_FRACTION,
    TopKStore,
    default_topk,
    soft_target_cross_entropy,
    sparse_soft_targets,
    store_key,
    topk_probs,
)
from opdf.models.vision import build_vision_model

# ------------------------------------------------------------------------------------ DKD


def softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def kl(p, q):
    return float(sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True) if pi > 0))


def dkd_by_hand(s_logits, t_logits, targets, temperature):
    """TCKD and NCKD of the DKD paper, written out one sample at a time."""
    tckd, nckd = [], []
    for s, t, y in zip(s_logits, t_logits, targets, strict=True):
        ps, pt = softmax(np.array(s) / temperature), softmax(np.array(t) / temperature)
        tckd.append(kl([pt[y], 1 - pt[y]], [ps[y], 1 - ps[y]]))
        rest = [c for c in range(len(s)) if c != y]
        nckd.append(kl(pt[rest] / pt[rest].sum(), ps[rest] / ps[rest].sum()))
    t2 = temperature**2
    return t2 * float(np.mean(tckd)), t2 * float(np.mean(nckd))


S = [[1.0, 2.0, 0.5, -1.0], [0.2, -0.3, 1.5, 0.0], [3.0, 1.0, 1.0, 2.0]]
T = [[0.5, 3.0, 0.0, -2.0], [1.0, 0.0, 2.5, -1.0], [0.0, 2.0, 1.0, 1.5]]
Y = [1, 2, 0]


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_dkd_terms_equal_a_hand_computation(temperature):
    tckd, nckd = dkd_terms(torch.tensor(S), torch.tensor(T), torch.tensor(Y), temperature)
    hand_t, hand_n = dkd_by_hand(S, T, Y, temperature)
    assert float(tckd) == pytest.approx(hand_t, rel=1e-5)
    assert float(nckd) == pytest.approx(hand_n, rel=1e-5)
    total = dkd_loss(torch.tensor(S), torch.tensor(T), torch.tensor(Y), 1.0, 8.0, temperature)
    assert float(total) == pytest.approx(hand_t + 8 * hand_n, rel=1e-5)


def test_dkd_equals_mdistillers_masking_form():
    """mdistiller masks the target logit with -1000 instead of removing it: the same numbers."""
    s, t, y, temp = torch.tensor(S), torch.tensor(T), torch.tensor(Y), 4.0
    gt = torch.zeros_like(s).scatter_(1, y[:, None], 1)
    ps, pt = torch.softmax(s / temp, 1), torch.softmax(t / temp, 1)
    bs = torch.stack([(ps * gt).sum(1), (ps * (1 - gt)).sum(1)], 1)
    bt = torch.stack([(pt * gt).sum(1), (pt * (1 - gt)).sum(1)], 1)
    tckd = torch.nn.functional.kl_div(bs.log(), bt, reduction="sum") * temp**2 / len(y)
    pt2 = torch.softmax(t / temp - 1000.0 * gt, 1)
    ls2 = torch.log_softmax(s / temp - 1000.0 * gt, 1)
    nckd = torch.nn.functional.kl_div(ls2, pt2, reduction="sum") * temp**2 / len(y)
    ours = dkd_terms(s, t, y, temp)
    torch.testing.assert_close(ours[0], tckd)
    torch.testing.assert_close(ours[1], nckd)


def test_kd_decomposes_into_tckd_and_weighted_nckd():
    """The paper's Eq. (5), per sample: KD = TCKD + (1 - p_t[target]) * NCKD."""
    for s, t, y in zip(S, T, Y, strict=True):
        s1, t1, y1 = torch.tensor([s]), torch.tensor([t]), torch.tensor([y])
        tckd, nckd = dkd_terms(s1, t1, y1, 2.0)
        p_target = torch.softmax(t1 / 2.0, 1)[0, y]
        torch.testing.assert_close(kd_loss(s1, t1, 2.0), tckd + (1 - p_target) * nckd)


def test_dkd_is_stable_for_a_confident_teacher_and_two_classes():
    s = torch.tensor([[0.0, 1.0, 2.0]], requires_grad=True)
    t = torch.tensor([[200.0, -200.0, 0.0]])  # p_target = 1 to the last bit
    tckd, nckd = dkd_terms(s, t, torch.tensor([0]), 1.0)
    (tckd + nckd).backward()
    assert torch.isfinite(tckd) and torch.isfinite(nckd) and torch.isfinite(s.grad).all()
    two = dkd_terms(torch.tensor([[0.3, 0.1]]), torch.tensor([[2.0, 0.0]]), torch.tensor([1]), 4)
    assert float(two[1]) == 0.0  # one non-target class: nothing to match
    hand_t, _ = dkd_by_hand([[0.3, 0.1]], [[2.0, 0.0]], [1], 4.0)
    assert float(two[0]) == pytest.approx(hand_t, rel=1e-5)


def test_dkd_warmup_follows_mdistiller():
    assert warmup_factor(0, 10, 20) == 1 / 20  # epoch 1 of 20
    assert warmup_factor(9, 10, 20) == 1 / 20
    assert warmup_factor(10, 10, 20) == 2 / 20
    assert warmup_factor(199, 10, 20) == 1.0 and warmup_factor(5000, 10, 20) == 1.0
    assert warmup_factor(0, 10, 0) == 1.0  # no ramp


def test_dkd_method_losses_and_warmup_in_training():
    torch.manual_seed(0)
    student = build_vision_model("resnet8", 4, 1, 8, seed=0)
    teacher = build_vision_model("resnet14", 4, 1, 8, seed=1)
    dkd = get_method("dkd")(student, teacher, get_method("dkd").Options(warmup=4), num_labels=4)
    dkd.on_train_start(SimpleNamespace(steps_per_epoch=5))
    batch = {"pixel_values": torch.randn(6, 1, 8, 8), "labels": torch.tensor([0, 1, 2, 3, 0, 1])}
    dkd.step = 7  # epoch 2 of a 4-epoch warm-up
    logits, losses = dkd.forward_train(batch)
    assert set(losses) == {"ce", "tckd", "nckd"}
    with torch.no_grad():
        t_logits = teacher(batch["pixel_values"])
    tckd, nckd = dkd_terms(logits, t_logits, batch["labels"], 4.0)
    torch.testing.assert_close(losses["tckd"], 0.5 * tckd)
    torch.testing.assert_close(losses["nckd"], 0.5 * 8.0 * nckd)
    sum(losses.values()).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert dkd.on_step_end(7) == {"dkd_warmup": 0.5}  # the step just taken: dkd.step


# ------------------------------------------------------------------------------------ TinyViT


def test_sparse_soft_targets_rebuild_the_stored_top_k_exactly():
    torch.manual_seed(0)
    logits = torch.randn(5, 10) * 3
    values, indices = topk_probs(logits, 3)
    assert values.dtype == torch.float16 and indices.dtype == torch.int16
    probs = torch.softmax(logits, -1)
    assert torch.equal(indices.long(), probs.topk(3).indices)
    assert torch.equal(values, probs.topk(3).values.half())
    dense = sparse_soft_targets(values, indices, 10)
    for b in range(5):
        stored = dict(zip(indices[b].tolist(), values[b].float().tolist(), strict=True))
        rest = (1.0 - sum(stored.values())) / 7
        for c in range(10):  # stored classes bit for bit; the rest share the remaining mass
            assert dense[b, c].item() == (stored[c] if c in stored else pytest.approx(rest, 1e-6))
    torch.testing.assert_close(dense.sum(-1), torch.ones(5))
    full = sparse_soft_targets(*topk_probs(logits, 10), 10)  # k = C: the stored values only
    torch.testing.assert_close(full, probs, atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="4 stored classes for 3 classes"):
        sparse_soft_targets(values[:, :1].repeat(1, 4), indices[:, :1].repeat(1, 4), 3)


def test_soft_target_cross_entropy():
    logits = torch.tensor([[1.0, 2.0, 0.0]])
    target = torch.tensor([[0.2, 0.7, 0.1]])
    logp = torch.log_softmax(logits, -1)[0]
    expected = -(0.2 * logp[0] + 0.7 * logp[1] + 0.1 * logp[2])
    torch.testing.assert_close(soft_target_cross_entropy(logits, target), expected)


def tiny_setup():
    ds = load_vision_dataset("digits", max_train_samples=120)
    teacher = build_vision_model("resnet8", 10, 1, 8, seed=0).eval().requires_grad_(False)
    return ds, teacher, ImageView(ds, "train", seed=5)


def test_store_replays_the_augmented_view_whatever_the_batch():
    ds, teacher, data = tiny_setup()
    store = TopKStore.build(teacher, data, epochs=2, k=3, batch_size=32, progress=False)
    assert store.values.shape == (2, 120, 3) and store.k == 3 and store.epochs == 2
    idx = [117, 3, 64, 9, 40]  # a training batch in another order and size
    batch = data.batch(idx, epoch=1)
    with torch.no_grad():
        probs = torch.softmax(teacher(batch["pixel_values"]), -1)
    values, indices = store.lookup(batch["epoch"], batch["index"])
    rebuilt = sparse_soft_targets(values, indices, 10)
    top = probs.topk(3)
    torch.testing.assert_close(values.float(), top.values, atol=1e-3, rtol=0)
    assert torch.equal(indices.long(), top.indices)
    mass = (1 - top.values.sum(-1, keepdim=True)) / 7
    expect = mass.expand(-1, 10).clone().scatter_(1, top.indices, top.values)
    torch.testing.assert_close(rebuilt, expect, atol=2e-3, rtol=0)
    # the epoch-0 view is another augmentation of the same images
    assert not torch.equal(store.values[0, idx], store.values[1, idx])
    with pytest.raises(Exception, match="no stored teacher outputs for epoch"):
        store.lookup(torch.tensor([2]), torch.tensor([0]))


def test_store_key_covers_teacher_seed_and_k():
    ds, teacher, data = tiny_setup()
    key = store_key(teacher, data, 2, 3)
    assert key == store_key(teacher, ImageView(ds, "train", seed=5), 2, 3)
    other_seed = ImageView(ds, "train", seed=6)
    assert len({key, store_key(teacher, other_seed, 2, 3), store_key(teacher, data, 2, 4),
                store_key(teacher, data, 3, 3)}) == 4  # fmt: skip
    other = build_vision_model("resnet8", 10, 1, 8, seed=1)
    assert store_key(other, data, 2, 3) != key
    no_aug = load_vision_dataset("digits", max_train_samples=120, augment=False)
    assert store_key(teacher, ImageView(no_aug, "train", seed=5), 2, 3) != key


def test_tinyvit_method_trains_on_soft_labels_only(tmp_path):
    ds, teacher, data = tiny_setup()
    cls = get_method("tinyvit")
    student = build_vision_model("vit-d2", 10, 1, 8, seed=2)
    method = cls(student, teacher, cls.Options(topk=3), num_labels=10)
    ctx = TrainContext(ds, None, total_steps=8, device=torch.device("cpu"), steps_per_epoch=4,
                       train_view=data, eval_batch_size=64, cache_dir=tmp_path,
                       progress=False)  # fmt: skip
    method.on_train_start(ctx)
    assert method.store.epochs == 2 and len(list(tmp_path.glob("teacher-topk/*.pt"))) == 1
    again = cls(student, teacher, cls.Options(topk=3), num_labels=10)
    again.on_train_start(ctx)  # from the cache file
    assert torch.equal(again.store.values, method.store.values)
    batch = data.batch([4, 8, 15], epoch=1)
    batch["labels"] = torch.tensor([9, 9, 9])  # labels are never used
    logits, losses = method.forward_train(batch)
    assert list(losses) == ["soft_ce"]
    values, indices = method.store.lookup(batch["epoch"], batch["index"])
    expected = soft_target_cross_entropy(logits, sparse_soft_targets(values, indices, 10))
    torch.testing.assert_close(losses["soft_ce"], expected)
    losses["soft_ce"].backward()
    assert all(p.grad is None for p in teacher.parameters())
    with pytest.raises(Exception, match="exceeds the 10 classes"):
        cls(student, teacher, cls.Options(topk=11), num_labels=10).on_train_start(ctx)


def test_tinyvit_default_k_is_the_official_share_of_the_classes(tmp_path):
    # TinyViT keeps about 10 of ImageNet-1k's 1,000 classes (100 of 21,841 for ImageNet-21k)
    assert TOPK_FRACTION == 0.01
    assert default_topk(1000) == 10 and default_topk(21841) == 218 and default_topk(200) == 2
    assert default_topk(10) == 1 and default_topk(100) == 1 and default_topk(1) == 1  # >= 1
    assert default_topk(150) == 2 and default_topk(149) == 1 and default_topk(250) == 3  # half up
    for c in (1, 2, 10, 50, 1000, 21841):
        assert 1 <= default_topk(c) <= c and default_topk(c) / c <= max(TOPK_FRACTION, 1 / c)
    ds, teacher, data = tiny_setup()
    cls = get_method("tinyvit")
    assert cls.Options().topk is None  # the rule, unless a config names K
    student = build_vision_model("vit-d2", 10, 1, 8, seed=2)
    ctx = TrainContext(ds, None, total_steps=4, device=torch.device("cpu"), steps_per_epoch=4,
                       train_view=data, eval_batch_size=64, cache_dir=None,
                       progress=False)  # fmt: skip
    by_rule = cls(student, teacher, cls.Options(), num_labels=10)
    by_rule.on_train_start(ctx)
    assert by_rule.topk == 1 and by_rule.store.k == 1  # Fashion-MNIST's 10 classes: K = 1
    explicit = cls(student, teacher, cls.Options(topk=3), num_labels=10)
    explicit.on_train_start(ctx)
    assert explicit.topk == 3 and explicit.store.k == 3
    with pytest.raises(Exception, match="tinyvit.topk: 0 must be >= 1 or null"):
        cls.Options(topk=0).validate(None)
