"""merge / overparameterize on one model never touch another (deep copies, state_dicts, pickles).

torch's parametrize gives a parametrized module a generated class that deep copies share;
removing a parametrization from one copy used to delete ``weight`` from the others' class.
"""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize
from transformers import BertConfig, BertForSequenceClassification

import opdf
from opdf.overparam import mpo_modules


def small(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))


def x(seed: int = 1) -> torch.Tensor:
    return torch.randn(5, 16, generator=torch.Generator().manual_seed(seed))


def trains(model: nn.Module) -> None:
    """One AdamW step: gradients reach every trainable parameter and the output moves."""
    before = model(x()).detach()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss = model(x()).pow(2).mean()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name
    opt.step()
    assert not torch.allclose(model(x()), before)


def test_the_issue_example_merging_a_copy_leaves_the_original_training():
    m = small()
    opdf.overparameterize(m, scheme="mpo", unit_modes=1, targets=["0"])
    want = m(x()).detach()
    merged = opdf.merge(copy.deepcopy(m))
    assert type(merged[0]) is nn.Linear and isinstance(merged[0].weight, nn.Parameter)
    assert torch.allclose(merged(x()), want, atol=1e-6)
    assert torch.equal(m(x()), want)  # raised AttributeError: no attribute 'weight'
    assert len(list(mpo_modules(m))) == 1
    trains(m)
    # and the original still merges afterwards, to its own trained weight
    trained = m(x()).detach()
    opdf.merge(m)
    assert torch.allclose(m(x()), trained, atol=1e-6)
    assert not torch.allclose(merged(x()), trained)


def test_merging_the_original_leaves_its_copies_training():
    m = opdf.overparameterize(small(), scheme="svd", targets=["0", "2"])
    copies = [copy.deepcopy(m) for _ in range(2)]
    opdf.merge(m)
    for c in copies:
        assert len(list(mpo_modules(c))) == 2
        trains(c)
    opdf.merge(copies[0])
    trains(copies[1])


def test_each_copy_gets_its_own_class_and_its_own_cached_weight():
    m = opdf.overparameterize(small(), unit_modes=1, targets=["0"])
    c = copy.deepcopy(m)
    assert type(c[0]) is not type(m[0])
    assert parametrize.type_before_parametrizations(c[0]) is nn.Linear
    with torch.no_grad():
        c[0].parametrizations.weight.original0.mul_(2.0)
    with parametrize.cached():  # torch keys its cache by the module a property was made for
        a, b = m(x()), c(x())
    assert not torch.allclose(a, b)
    assert torch.allclose(b, c(x()))


def test_overparameterize_a_copy_leaves_the_original_alone():
    plain = small()
    want = plain(x()).detach()
    c = opdf.overparameterize(copy.deepcopy(plain), unit_modes=1, targets=["0"])
    assert type(plain[0]) is nn.Linear and "weight" in plain[0]._parameters
    assert torch.equal(plain(x()), want)

    # a copy of an over-parameterized model, merged and over-parameterized again (other targets too)
    m = opdf.overparameterize(small(), unit_modes=1, targets=["0"])
    want = m(x()).detach()
    c = opdf.merge(copy.deepcopy(m))
    opdf.overparameterize(c, scheme="svd", targets=["0", "2"])
    assert len(list(mpo_modules(c))) == 2
    assert [n for n, _, _ in mpo_modules(m)] == ["0"]
    assert type(m[2]) is nn.Linear
    trains(c)
    assert torch.equal(m(x()), want)
    opdf.merge(c)
    trains(m)

    # over-parameterize another layer of a copy while the shared one stays parametrized
    m = opdf.overparameterize(small(), unit_modes=1, targets=["0"])
    c = opdf.overparameterize(copy.deepcopy(m), scheme="svd", targets=["2"])
    assert type(m[2]) is nn.Linear
    opdf.merge(c)
    trains(m)


def test_a_module_with_another_parametrization_is_not_changed_through_its_copy():
    """A user's own parametrization on ``bias``: over-parameterizing ``weight`` of a copy adds a
    property to the class; the original's class must not get it."""

    class Doubled(nn.Module):
        def forward(self, b: torch.Tensor) -> torch.Tensor:
            return 2 * b

    m = small()
    parametrize.register_parametrization(m[0], "bias", Doubled())
    want = m(x()).detach()
    c = opdf.overparameterize(copy.deepcopy(m), unit_modes=1, targets=["0"])
    assert not parametrize.is_parametrized(m[0], "weight")
    assert torch.equal(m(x()), want)
    opdf.merge(c)
    assert parametrize.is_parametrized(c[0], "bias")
    assert torch.equal(m(x()), want)
    assert torch.allclose(c(x()), want, atol=1e-6)


def test_state_dict_round_trips_between_separate_models():
    a = opdf.overparameterize(small(seed=0), unit_modes=1, targets=["0"])
    b = opdf.overparameterize(small(seed=5), unit_modes=1, targets=["0"])
    trains(a)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b.load_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(a(x()), b(x()))
    keys = list(b.state_dict())
    opdf.merge(a)
    assert list(b.state_dict()) == keys  # b kept its cores
    trains(b)
    # a merged state_dict loads into a never-touched model: same keys, same function
    plain = small(seed=9)
    plain.load_state_dict(a.state_dict())
    assert torch.equal(plain(x()), a(x()))


def test_pickling_where_torch_allows_it():
    m = opdf.overparameterize(small(), unit_modes=1, targets=["0"])
    want = m(x()).detach()
    with pytest.raises(RuntimeError, match="only supported through state_dict"):
        pickle.dumps(m)  # torch refuses parametrized modules; nothing is left half-changed
    assert torch.equal(m(x()), want)
    merged = opdf.merge(copy.deepcopy(m))
    again = pickle.loads(pickle.dumps(merged))
    assert type(again[0]) is nn.Linear
    assert torch.allclose(again(x()), want, atol=1e-6)
    trains(m)
    trains(again)


def test_transformers_model_copy_merges_while_the_original_trains():
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=16, num_labels=2)  # fmt: skip
    model = opdf.overparameterize(BertForSequenceClassification(cfg), unit_modes=1)
    ids = torch.randint(0, 50, (3, 8), generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 0])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    snapshots = []
    for _ in range(2):
        model.train()
        model(input_ids=ids, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
        model.eval()
        snap = opdf.merge(copy.deepcopy(model))  # the ordinary way to save or evaluate a snapshot
        with torch.no_grad():
            assert torch.allclose(snap(ids).logits, model(ids).logits, atol=1e-5)
        snapshots.append(snap)
    assert len(list(mpo_modules(model))) == 12
    assert not torch.allclose(snapshots[0](ids).logits, snapshots[1](ids).logits)
