"""Exactness, gauge, sign rule, counts and errors of opdf.mpo."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opdf.mpo import (
    MPO,
    balanced_factors,
    bond_dims,
    contract,
    contraction_cost,
    contraction_order,
    count_params,
    decompose,
    full_bond_dims,
    mpo_shapes,
)


def _rel_err(mpo: MPO, matrix: torch.Tensor) -> float:
    ref = matrix.reshape(matrix.shape[0], -1).double()
    return float((mpo.to_matrix().double() - ref).norm() / ref.norm())


@st.composite
def modes_and_matrix(draw):
    n = draw(st.integers(2, 7))
    row = [draw(st.integers(1, 7)) for _ in range(n)]
    col = [draw(st.integers(1, 7)) for _ in range(n)]
    # keep matrices small enough for fast SVDs
    while math.prod(row) * math.prod(col) > 40_000:
        k = max(range(n), key=lambda i: row[i] * col[i])
        row[k], col[k] = max(1, row[k] // 2), max(1, col[k] // 2)
    seed = draw(st.integers(0, 2**31 - 1))
    return row, col, seed


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(modes_and_matrix())
def test_exact_float64_and_float32(case):
    row, col, seed = case
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(math.prod(row), math.prod(col), generator=gen, dtype=torch.float64)
    mpo = decompose(w, row, col)
    assert mpo.bond_dims == full_bond_dims(row, col)
    assert mpo.num_params == count_params(row, col)
    assert all(c.dtype == torch.float64 for c in mpo.cores)
    assert _rel_err(mpo, w) <= 1e-12
    mpo32 = decompose(w.float(), row, col)
    assert all(c.dtype == torch.float32 for c in mpo32.cores)
    assert _rel_err(mpo32, w.float()) <= 1e-6


@pytest.mark.parametrize(
    ("rows", "cols", "unit_modes", "params"),
    [
        (768, 768, 3, 1_916_928),
        (3072, 768, 3, 7_667_712),
        (768, 768, 0, 921_600),
        (3072, 768, 0, 3_686_400),
        (768, 3072, 3, 7_667_712),
    ],
)
def test_paper_counts(rows, cols, unit_modes, params):
    row, col = mpo_shapes(rows, cols, unit_modes)
    assert count_params(row, col) == params
    w = torch.randn(rows, cols)
    mpo = decompose(w, row, col)
    assert mpo.num_params == params
    assert _rel_err(mpo, w) <= 1e-6


def test_shapes_of_the_paper():
    assert mpo_shapes(768, 768, 3) == ([32, 1, 1, 1, 24], [32, 1, 1, 1, 24])
    assert mpo_shapes(3072, 768, 3) == ([64, 1, 1, 1, 48], [32, 1, 1, 1, 24])
    assert mpo_shapes(768, 3072, 0) == ([32, 24], [64, 48])
    assert balanced_factors(384) == (24, 16)
    assert balanced_factors(13) == (13, 1)
    assert balanced_factors(1) == (1, 1)
    assert mpo_shapes(13, 1, 2) == ([13, 1, 1, 1], [1, 1, 1, 1])


@pytest.mark.parametrize(("rows", "cols"), [(13, 7), (1, 9), (2, 1), (1, 1), (17, 17)])
def test_awkward_sizes_still_work(rows, cols):
    w = torch.randn(rows, cols, dtype=torch.float64)
    row, col = mpo_shapes(rows, cols, 2)
    mpo = decompose(w, row, col)
    assert _rel_err(mpo, w) <= 1e-12


def _left_block(cores, k):
    """Cores 0..k contracted: (rows, d_k), rows in interleaved (i1 j1 ... ik jk) order."""
    block = cores[0].reshape(-1, cores[0].shape[-1])
    for c in cores[1 : k + 1]:
        block = (block @ c.reshape(c.shape[0], -1)).reshape(-1, c.shape[-1])
    return block


def _right_block(cores, k):
    """Cores k+1..n-1 contracted: (d_k, cols)."""
    block = cores[-1].reshape(cores[-1].shape[0], -1)
    for c in reversed(cores[k + 1 : -1]):
        block = (c.reshape(-1, c.shape[-1]) @ block).reshape(c.shape[0], -1)
    return block


@pytest.mark.parametrize(
    ("row", "col"),
    [([4, 1, 1, 6], [3, 1, 1, 5]), ([2, 3, 2], [3, 2, 2]), ([2, 1, 3, 1, 2], [2, 2, 1, 3, 1])],
)
def test_symmetric_canonical_form(row, col):
    w = torch.randn(math.prod(row), math.prod(col), dtype=torch.float64)
    mpo = decompose(w, row, col)
    sizes = [i * j for i, j in zip(row, col, strict=True)]
    interleaved = w.reshape(row + col).permute(
        [p for k in range(len(row)) for p in (k, len(row) + k)]
    )
    for k in range(len(row) - 1):
        a = _left_block(mpo.cores, k)
        b = _right_block(mpo.cores, k)
        sigma = torch.linalg.svdvals(interleaved.reshape(math.prod(sizes[: k + 1]), -1))
        sigma = sigma[: a.shape[1]]
        assert torch.allclose(a.T @ a, torch.diag(sigma), atol=1e-10)
        assert torch.allclose(b @ b.T, torch.diag(sigma), atol=1e-10)


def test_unit_mode_cores_are_exact_identities():
    w = torch.randn(3072, 768)
    mpo = decompose(w, *mpo_shapes(3072, 768, 3))
    assert mpo.central_index == 2
    for core in mpo.cores[1:-1]:
        d = core.shape[0]
        assert torch.equal(core.reshape(d, d), torch.eye(d))
    # general path, unit modes in the interior next to real factors
    w = torch.randn(12, 30, dtype=torch.float64)
    mpo = decompose(w, [2, 1, 6, 1], [3, 1, 10, 1])
    d = mpo.cores[1].shape[0]
    assert torch.equal(mpo.cores[1].reshape(d, d), torch.eye(d, dtype=torch.float64))


def test_sign_rule_is_deterministic_and_stable():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(48, 40, generator=gen, dtype=torch.float64)
    row, col = [8, 1, 6], [8, 1, 5]
    a, b = decompose(w, row, col), decompose(w.clone(), row, col)
    for x, y in zip(a.cores, b.cores, strict=True):
        assert torch.equal(x, y)
    # the rule itself: every left singular factor sums to a positive number
    first = a.cores[0].reshape(-1, a.cores[0].shape[-1])
    assert bool((first.sum(0) > 0).all())
    # a slightly perturbed matrix gives nearly the same cores: no flipped signs
    noisy = w + 1e-9 * torch.randn(w.shape, generator=gen, dtype=torch.float64)
    c = decompose(noisy, row, col)
    for x, y in zip(a.cores, c.cores, strict=True):
        assert float((x - y).abs().max()) < 1e-5
    # the same holds through the general (sequential) path
    g1, g2 = decompose(w, [2, 4, 6], [5, 2, 4]), decompose(noisy, [2, 4, 6], [5, 2, 4])
    for x, y in zip(g1.cores, g2.cores, strict=True):
        assert float((x - y).abs().max()) < 1e-5


@pytest.mark.parametrize("max_bond", [1, 5, 17])
def test_truncation_error_equals_discarded_singular_values(max_bond):
    w = torch.randn(24, 30, dtype=torch.float64)
    row, col = [6, 1, 4], [5, 1, 6]
    mpo = decompose(w, row, col, max_bond=max_bond)
    assert mpo.bond_dims == bond_dims(row, col, max_bond)
    rearranged = w.reshape(6, 4, 5, 6).permute(0, 2, 1, 3).reshape(30, 24)
    sigma = torch.linalg.svdvals(rearranged)
    expected = float(sigma[max_bond:].pow(2).sum().sqrt())
    err = float((mpo.to_matrix() - w).norm())
    assert err == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_truncation_bound_with_several_bonds():
    w = torch.randn(24, 30, dtype=torch.float64)
    exact = decompose(w, [2, 3, 4], [3, 2, 5])
    trunc = decompose(w, [2, 3, 4], [3, 2, 5], max_bond=4)
    assert max(trunc.bond_dims) <= 4
    assert exact.num_params > trunc.num_params
    assert float((trunc.to_matrix() - w).norm()) < float(w.norm())


def test_conv2d_weight_is_a_matrix():
    w = torch.randn(16, 8, 3, 3)
    row, col = mpo_shapes(16, 8 * 9, 1)
    mpo = decompose(w, row, col)
    assert mpo.weight_shape == (16, 8, 3, 3)
    assert torch.allclose(mpo.to_weight(), w, atol=1e-5)


def test_dtype_and_device_follow_input_and_input_is_untouched():
    w = torch.randn(12, 10)
    before = w.clone()
    mpo = decompose(w, [4, 3], [5, 2])
    assert torch.equal(w, before)
    assert all(c.dtype == w.dtype and c.device == w.device for c in mpo.cores)


@pytest.mark.parametrize(
    "row_modes, col_modes", [([4, 1, 1, 3], [5, 1, 1, 2]), ([4, 3], [5, 2]), ([2, 3, 2], [5, 1, 2])]
)
def test_cores_are_contiguous(row_modes, col_modes):
    # LAPACK returns column-major factors; strided cores made fused AdamW ~2x slower.
    mpo = decompose(torch.randn(12, 10), row_modes, col_modes)
    assert all(c.is_contiguous() for c in mpo.cores)


def test_contract_is_differentiable_and_matches_naive_order():
    torch.manual_seed(0)
    mpo = decompose(torch.randn(96, 40, dtype=torch.float64), [4, 1, 1, 24], [8, 1, 1, 5])
    cores = [c.clone().requires_grad_(True) for c in mpo.cores]
    w = contract(cores)
    naive = cores[0].reshape(-1, cores[0].shape[-1])
    for c in cores[1:]:
        naive = naive @ c.reshape(c.shape[0], -1)
    naive = naive.reshape(4, 8, 24, 5).permute(0, 2, 1, 3).reshape(96, 40)
    assert torch.allclose(w, naive)
    w.square().sum().backward()
    assert all(c.grad is not None and c.grad.abs().sum() > 0 for c in cores)


def test_contraction_order_for_the_paper_ffn_shape():
    # 3072x768 at L=3: cores [2048 x d], three d x d, [d x 1152], d = 1152. Right to left costs
    # 3 d^3 + 2048 d^2 multiply-adds; left to right would cost 4 * 2048 * d^2.
    d = 1152
    bonds, sizes = [1, d, d, d, d, 1], [2048, 1, 1, 1, 1152]
    assert contraction_order(bonds, sizes) == "(0 (1 (2 (3 4))))"
    assert contraction_cost(bonds, sizes) == 3 * d**3 + 2048 * d**2
    assert contraction_cost(bonds, sizes) < 4 * 2048 * d**2


def test_sign_rule_is_stable_when_column_sums_vanish():
    # rows of the rearranged matrix sum to zero, so every left singular vector sums to ~1e-16:
    # the rule must fall back to the largest entry instead of following rounding noise
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(36, 20, generator=gen, dtype=torch.float64)
    r = x - x.mean(dim=0, keepdim=True)  # (i1 j1 = 36) x (i2 j2 = 20), columns sum to zero
    w = r.reshape(6, 6, 4, 5).permute(0, 2, 1, 3).reshape(24, 30)
    noisy = w + 1e-12 * torch.randn(w.shape, generator=gen, dtype=torch.float64)
    a, b = decompose(w, [6, 1, 4], [6, 1, 5]), decompose(noisy, [6, 1, 4], [6, 1, 5])
    assert torch.allclose(a.to_matrix(), w, atol=1e-12)
    for x_core, y_core in zip(a.cores, b.cores, strict=True):
        assert float((x_core - y_core).abs().max()) < 1e-6


def test_contraction_order_multiplies_small_bond_cores_first():
    # [1024 x 64][64 x 64][64 x 64][64 x 576]: multiplying the square cores first is cheaper
    bonds, sizes = [1, 64, 64, 64, 1], [1024, 1, 1, 576]
    order = contraction_order(bonds, sizes)
    naive = 1024 * 64 * 64 * 2 + 1024 * 64 * 576
    assert contraction_cost(bonds, sizes) < naive
    assert order != "(((0 1) 2) 3)"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((torch.randn(12, 10), [4, 4], [5, 2]), "multiply to 16"),
        ((torch.randn(12, 10), [4, 3], [5, 3]), "multiply to 15"),
        ((torch.randn(12, 10), [4, 3], [10]), "equal length"),
        ((torch.randn(12, 10), [12, 1], [0, 10]), ">= 1"),
        ((torch.randn(3, 4, 5), [3], [20]), "3-D"),
        ((torch.randn(12, 10), [4, 3], [5, 2], 0), "max_bond"),
    ],
)
def test_bad_input_names_the_numbers(args, message):
    with pytest.raises(ValueError, match=message):
        decompose(*args)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_mpo_shapes_rejects_bad_sizes(bad):
    with pytest.raises(ValueError):
        mpo_shapes(bad, 10)
    with pytest.raises(ValueError):
        mpo_shapes(10, 10, unit_modes=-1 if bad == 0 else bad)


def test_cross_check_with_tensorly():
    tl = pytest.importorskip("tensorly")
    from tensorly.decomposition import tensor_train_matrix

    tl.set_backend("pytorch")
    try:
        row, col = [2, 3, 4], [3, 2, 2]
        w = torch.randn(24, 12, dtype=torch.float64)
        ours = decompose(w, row, col)
        # tensorly's TT-matrix takes a tensor of shape (i1..in, j1..jn)
        tensor = w.reshape(row + col)
        theirs = tensor_train_matrix(tensor, rank=ours.bond_dims)
        rebuilt = tl.tt_matrix_to_tensor(theirs).reshape(24, 12)
        assert torch.allclose(rebuilt, w, atol=1e-10)
        assert torch.allclose(ours.to_matrix(), rebuilt, atol=1e-10)
        assert [int(f.shape[0]) for f in theirs] + [1] == ours.bond_dims
        assert [tuple(f.shape) for f in theirs] == [tuple(c.shape) for c in ours.cores]
    finally:
        tl.set_backend("numpy")


def test_mpo_validates_on_construction():
    from opdf.mpo import MPO

    good = decompose(torch.randn(12, 6, dtype=torch.float64), [3, 4], [2, 3])
    again = MPO(good.cores, (3, 4), (2, 3))  # modes given as tuples are kept as int lists
    assert again.shape == (12, 6) and again.bond_dims == good.bond_dims == [1, 6, 1]
    assert again.row_modes == [3, 4]
    with pytest.raises(ValueError, match=r"carry row modes \[3, 4\].*row_modes=\[4, 3\]"):
        MPO(good.cores, [4, 3], [2, 3])
    with pytest.raises(ValueError, match="bond mismatch between core 0"):
        MPO([good.cores[0], good.cores[1][:5]], [3, 4], [2, 3])
    with pytest.raises(ValueError, match="outer bonds must be 1"):
        MPO([good.cores[0]], [3], [2])
    with pytest.raises(ValueError, match="4-D"):
        MPO([torch.ones(1, 3, 1)], [3], [1])
    with pytest.raises(ValueError, match="at least one core"):
        MPO([], [], [])
    with pytest.raises(ValueError, match=r"weight_shape \(12, 5\)"):
        MPO(good.cores, [3, 4], [2, 3], weight_shape=(12, 5))
