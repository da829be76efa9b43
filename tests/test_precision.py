"""bf16: what autocast does to the MPO contraction (opdf keeps it in float32) and what a bf16
contraction would cost in accuracy (the error bound the docs state)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import opdf
from opdf.mpo import contract, decompose, mpo_shapes
from opdf.overparam import (
    contract_weight,
    contraction_follows_autocast,
    cores,
    low_precision_contraction,
)

BF16 = {"device_type": "cpu", "dtype": torch.bfloat16}
# benchmarks/results/bf16.md: a bf16 contraction of BERT-base-width and MiniLM weights at L=3 is
# off by 4.3-4.4e-3 (relative Frobenius), ~2.6x the error of rounding the exact weight to bf16.
BF16_CONTRACTION_BOUND = 1e-2


def trained_like_cores(rows: int = 192, cols: int = 96, unit_modes: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w = 0.02 * torch.randn(rows, cols, generator=g)
    r, c = mpo_shapes(rows, cols, unit_modes)
    cs = decompose(w, r, c).cores
    for k in range(1, len(cs) - 1):  # a trained chain is no longer exactly the identity
        cs[k] = cs[k] + 1e-3 * torch.randn(cs[k].shape, generator=g)
    return cs


def rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.double() - ref).norm() / ref.norm())


def test_a_bf16_contraction_stays_within_the_stated_error_and_opdf_does_not_use_it():
    cs = trained_like_cores()
    ref = contract([c.double() for c in cs])
    with torch.autocast(**BF16):
        in_bf16 = contract(cs)  # the bare contraction obeys autocast: every matmul in bf16
        policy = contract_weight(cs, ref.shape)  # opdf's path switches autocast off
    assert in_bf16.dtype == torch.bfloat16
    err = rel(in_bf16, ref)
    assert rel(ref.to(torch.bfloat16), ref) < err < BF16_CONTRACTION_BOUND
    assert policy.dtype == torch.float32
    assert torch.equal(policy, contract(cs).reshape(ref.shape))  # bit-equal to no autocast
    assert rel(policy, ref) < 1e-6


def test_under_autocast_the_parametrized_weight_and_the_merge_are_float32():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(48, 96), nn.ReLU(), nn.Linear(96, 48), nn.Linear(48, 2))
    opdf.overparameterize(model, unit_modes=2)
    x = torch.randn(5, 48)
    fp32_weight = model[0].weight.detach().clone()
    with torch.autocast(**BF16):
        w = model[0].weight
        out = model(x)
    assert w.dtype == torch.float32 and torch.equal(w.detach(), fp32_weight)
    assert out.dtype == torch.bfloat16  # the linear layers themselves do run in bf16
    # gradients reach the float32 cores through the float32 contraction
    out.float().sum().backward()
    assert all(c.grad is not None and c.grad.dtype == torch.float32 for c in cores(model)["0"])
    with torch.autocast(**BF16):
        opdf.merge(model)  # merging inside an autocast region changes nothing either
    assert model[0].weight.dtype == torch.float32
    assert torch.equal(model[0].weight.detach(), fp32_weight)


def test_the_opt_in_bf16_contraction_trains_in_bf16_and_still_merges_in_float32():
    """``low_precision_contraction`` (``precision: bf16-contraction``): the training weight is
    contracted under autocast, within the stated error; the merge inside it stays float32."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(48, 96), nn.ReLU(), nn.Linear(96, 48), nn.Linear(48, 2))
    opdf.overparameterize(model, unit_modes=2)
    fp32_weight = model[0].weight.detach().clone()
    x = torch.randn(5, 48)
    with torch.autocast(**BF16), low_precision_contraction():
        assert contraction_follows_autocast()
        w = model[0].weight
        model(x).float().sum().backward()
        assert w.dtype == torch.bfloat16
        assert 0 < rel(w.detach(), fp32_weight.double()) < BF16_CONTRACTION_BOUND
        assert all(c.grad is not None and c.grad.dtype == torch.float32
                   for c in cores(model)["0"])  # fmt: skip
        opdf.merge(model)
    assert not contraction_follows_autocast()  # reset on exit
    assert model[0].weight.dtype == torch.float32
    assert torch.equal(model[0].weight.detach(), fp32_weight)


def test_accumulate_under_autocast_contracts_in_float32():
    torch.manual_seed(0)
    model = opdf.overparameterize(nn.Sequential(nn.Linear(32, 64), nn.Linear(64, 2)), unit_modes=1)
    plain = model[0].weight.detach().clone()
    with torch.autocast(**BF16), opdf.accumulate(model):
        assert model[0].weight.dtype == torch.float32
        assert torch.equal(model[0].weight.detach(), plain)


def test_cores_stored_in_bf16_are_contracted_in_float32():
    """A model cast to bf16 as a whole: the contraction upcasts, the weight comes back in bf16."""
    torch.manual_seed(0)
    model = opdf.overparameterize(nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 2)), unit_modes=2)
    model.to(torch.bfloat16)
    cs = [c.detach() for c in cores(model)["0"]]
    w = model[0].weight
    assert w.dtype == torch.bfloat16
    expected = contract([c.float() for c in cs]).to(torch.bfloat16)
    assert torch.equal(w.detach(), expected)
    assert rel(w.detach(), contract([c.double() for c in cs])) < BF16_CONTRACTION_BOUND / 2


@pytest.mark.parametrize("precision", ["bf16", "bf16-contraction"])
def test_a_bf16_run_trains_under_autocast_and_saves_the_float32_merge(
    tmp_path, contraction_modes, precision
):
    from safetensors.torch import load_file

    from opdf.run import load_config, run_distill
    from opdf.run.runner import merge_checkpoint

    seen = contraction_modes

    out = tmp_path / "bf16"
    args = ["max_steps=4", "eval_every=2", "checkpoint_every=2", f"precision={precision}",
            f"output_dir={out}"]  # fmt: skip
    summary = run_distill(load_config("configs/smoke-kd.yaml", args), progress=False)
    assert summary["precision"] == precision
    # bf16-contraction: the training forwards contract under autocast, evaluations never do
    assert seen == ({(True, True), (False, False)} if precision == "bf16-contraction"
                    else {(True, False), (False, False)})  # fmt: skip
    saved = load_file(str(out / "student" / "model.safetensors"))
    assert {w.dtype for w in saved.values()} == {torch.float32}
    # the saved student is the float32 merge of the best checkpoint's cores, bit for bit
    again = load_file(str(merge_checkpoint(out, which="best") / "model.safetensors"))
    assert saved.keys() == again.keys()
    assert all(torch.equal(saved[k], again[k]) for k in saved)
