"""Exact (or truncated) MPO decomposition in a symmetric canonical gauge with a sign rule.

Gauge. Cores are defined only up to an invertible matrix on each bond. We fix the *symmetric
canonical form*: at every bond ``k`` the left block ``A_k`` (cores ``1..k`` contracted, reshaped to
``rows x d_k``) and the right block ``B_k`` satisfy ``A_k^T A_k = B_k B_k^T = diag(sigma_k)``, the
singular values of the bond-``k`` unfolding. So ``A_k = U sqrt(S)`` and ``B_k = sqrt(S) V^T``.

Sign rule. That form still leaves one sign per singular vector. Each left singular factor computed
by an SVD (the columns of ``U``) is flipped so that the sum of its entries is positive; a column
whose sum is near zero (below ``sqrt(eps)``, relative) is flipped so that its largest-magnitude
entry is positive. The rule depends on the singular vectors only, so equal matrices give equal
cores, and a slightly perturbed matrix gives nearly the same cores, wherever the singular values
are distinct (inside a degenerate singular subspace no sign rule can fix the basis). Without it,
two similar matrices give cores with about half their signs flipped, and any teacher-student
alignment of cores is noise.

Unit modes. A unit mode (``i_k = j_k = 1``) between two real factors leaves the bond unfolding
unchanged, so both its bonds carry the same singular values and its core is *exactly* the identity.
In the paper's common case (two real factors with unit modes between) the whole decomposition is a
single SVD of the rearranged ``(i_1 j_1) x (i_n j_n)`` matrix. A unit mode at either end of the
chain faces the trivial outer bond and carries the scalar ``sqrt(||W||_F)`` instead.

Truncation. ``max_bond`` keeps the largest singular values at each bond (sequential truncated SVDs).
With one real bond the error is exactly the norm of the discarded singular values; with several it
is bounded by the root sum of squares of the per-bond errors. The canonical property holds exactly
only for the untruncated decomposition.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from opdf.mpo.operator import MPO
from opdf.mpo.shapes import check_max_bond, validate_modes

__all__ = ["decompose", "as_matrix", "apply_sign_rule"]


def as_matrix(weight: torch.Tensor) -> torch.Tensor:
    """A 2-D view of a weight: Linear ``(out, in)`` as is, Conv2d ``(out, in, kh, kw)`` as
    ``(out, in * kh * kw)``."""
    if not isinstance(weight, torch.Tensor):
        raise ValueError(f"expected a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() == 2:
        return weight
    if weight.dim() == 4:
        return weight.reshape(weight.shape[0], -1)
    raise ValueError(
        f"only 2-D (Linear) and 4-D (Conv2d) weights can be decomposed, got a {weight.dim()}-D "
        f"tensor of shape {tuple(weight.shape)}"
    )


def decompose(
    matrix: torch.Tensor,
    row_modes: Sequence[int],
    col_modes: Sequence[int],
    max_bond: int | None = None,
) -> MPO:
    """Decompose ``matrix`` into MPO cores ``[d_{k-1}, i_k, j_k, d_k]``.

    Parameters
    ----------
    matrix
        A 2-D weight ``(out, in)``, or a 4-D Conv2d kernel, handled as ``(out, in*kh*kw)``.
    row_modes, col_modes
        Factorisations of the rows and columns, one pair per core (``opdf.mpo.mpo_shapes``).
    max_bond
        Keep at most this many singular values per bond; ``None`` (default) is exact.

    Returns
    -------
    MPO
        Contiguous cores in the input's dtype and device, computed in float64, in the symmetric
        canonical gauge with the sign rule described in this module's docstring.
    """
    weight_shape = tuple(matrix.shape) if isinstance(matrix, torch.Tensor) else None
    mat = as_matrix(matrix)
    if mat.numel() == 0:
        raise ValueError(f"cannot decompose an empty weight of shape {weight_shape}")
    rows, cols = mat.shape
    row_modes, col_modes = validate_modes(rows, cols, row_modes, col_modes)
    if max_bond is not None:
        check_max_bond(max_bond)
    if not mat.is_floating_point():
        raise ValueError(f"expected a floating-point weight, got dtype {mat.dtype}")
    sizes = [i * j for i, j in zip(row_modes, col_modes, strict=True)]
    if len(sizes) >= 2 and all(s == 1 for s in sizes[1:-1]) and sizes[0] > 1 and sizes[-1] > 1:
        cores = _two_factor_cores(mat, row_modes, col_modes, max_bond)
    else:
        work = mat.detach().to(torch.float64)
        cores = [c.to(mat.dtype) for c in _sequential_cores(work, row_modes, col_modes, max_bond)]
    # LAPACK hands back column-major factors; stored as they come, the cores would be strided
    # parameters, which the fused optimizers walk about 2x slower (measured: 0.23 s vs 0.10 s per
    # AdamW step for the 162M parameters of a 6-layer L=3 student).
    cores = [c.contiguous() for c in cores]
    return MPO(
        cores=cores,
        row_modes=row_modes,
        col_modes=col_modes,
        weight_shape=weight_shape if len(weight_shape) == 4 else None,
    )


def apply_sign_rule(u: torch.Tensor, vt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip singular-vector pairs so that each column of ``u`` sums to a positive number.

    Columns whose sum is near zero use the sign of their largest-magnitude entry.
    ``vt``'s rows are flipped with them, so ``u @ diag(s) @ vt`` is unchanged.
    """
    sign = _sign_vector(u)
    return u * sign, vt * sign.unsqueeze(1)


def _sign_vector(u: torch.Tensor) -> torch.Tensor:
    """+1/-1 per column of ``u``: the sign of its sum, else of its largest-magnitude entry."""
    sums = u.sum(dim=0)
    idx = u.abs().argmax(dim=0)
    peak = u.gather(0, idx.unsqueeze(0)).squeeze(0)
    # A sum near zero (e.g. a matrix whose rows sum to zero) has no reliable sign: any tiny
    # perturbation would flip it. Below sqrt(eps) (1.5e-8 in float64) the largest entry decides.
    tol = math.sqrt(torch.finfo(u.dtype).eps) * math.sqrt(u.shape[0]) * u.abs().amax(dim=0)
    sign = torch.where(sums.abs() > tol, torch.sign(sums), torch.sign(peak))
    return torch.where(sign == 0, torch.ones_like(sign), sign)


def _interleave(work: torch.Tensor, row_modes: list[int], col_modes: list[int]) -> torch.Tensor:
    """``(I, J)`` -> ``(i_1, .., i_n, j_1, .., j_n)`` -> interleaved ``(i_1 j_1, .., i_n j_n)``."""
    n = len(row_modes)
    t = work.reshape(row_modes + col_modes)
    perm = [p for k in range(n) for p in (k, n + k)]
    return t.permute(perm).reshape([i * j for i, j in zip(row_modes, col_modes, strict=True)])


def _svd(mat: torch.Tensor, max_bond: int | None):
    u, s, vt = torch.linalg.svd(mat, full_matrices=False)
    if max_bond is not None and s.numel() > max_bond:
        u, s, vt = u[:, :max_bond], s[:max_bond], vt[:max_bond]
    u, vt = apply_sign_rule(u, vt)
    return u, s, vt


def _two_factor_cores(
    mat: torch.Tensor,
    row_modes: list[int],
    col_modes: list[int],
    max_bond: int | None,
) -> list[torch.Tensor]:
    """The paper's case: one SVD of the rearranged matrix; inner unit-mode cores are identities.

    Written for speed: one float64 copy of the weight, and the sign and ``sqrt(S)`` applied in
    the same pass that builds the outer cores (this runs 72 times for a BERT-base).
    """
    out_dtype = mat.dtype
    i1, j1, i_n, j_n = row_modes[0], col_modes[0], row_modes[-1], col_modes[-1]
    # W (I, J) -> (i1, i_n, j1, j_n) -> (i1, j1, i_n, j_n) -> R (i1 j1, i_n j_n)
    rearranged = (
        mat.detach().reshape(i1, i_n, j1, j_n).permute(0, 2, 1, 3).to(torch.float64)
    ).reshape(i1 * j1, i_n * j_n)
    u, s, vt = torch.linalg.svd(rearranged, full_matrices=False)
    if max_bond is not None and s.numel() > max_bond:
        u, s, vt = u[:, :max_bond], s[:max_bond], vt[:max_bond]
    scale = _sign_vector(u) * s.sqrt()
    d = s.numel()
    first = (u * scale).to(out_dtype).reshape(1, i1, j1, d)
    last = (scale.unsqueeze(1) * vt).to(out_dtype).reshape(d, i_n, j_n, 1)
    middle = [
        torch.eye(d, dtype=out_dtype, device=mat.device).reshape(d, 1, 1, d)
        for _ in range(len(row_modes) - 2)
    ]
    return [first, *middle, last]


def _sequential_cores(
    work: torch.Tensor, row_modes: list[int], col_modes: list[int], max_bond: int | None
) -> list[torch.Tensor]:
    """General shapes: left-to-right SVDs, then the symmetric gauge ``S^-1/2 Q S^1/2``."""
    sizes = [i * j for i, j in zip(row_modes, col_modes, strict=True)]
    n = len(sizes)
    if n == 1:
        return [work.reshape(1, row_modes[0], col_modes[0], 1).clone()]
    tensor = _interleave(work, row_modes, col_modes)
    isometries: list[torch.Tensor | None] = []  # Q_k as [d_{k-1}, m_k, d_k]; None = identity
    spectra: list[torch.Tensor] = [torch.ones(1, dtype=work.dtype, device=work.device)]
    s_prev, vt_prev = None, tensor.reshape(1, -1)
    for k in range(n - 1):
        d_prev = 1 if s_prev is None else s_prev.numel()
        if k > 0 and sizes[k] == 1:
            # Interior unit mode: the remainder S V^T is already its own SVD.
            isometries.append(None)
            spectra.append(s_prev)
            vt_prev = vt_prev.reshape(d_prev, -1)
            continue
        carry = vt_prev if s_prev is None else s_prev.unsqueeze(1) * vt_prev
        u, s, vt = _svd(carry.reshape(d_prev * sizes[k], -1), max_bond)
        isometries.append(u.reshape(d_prev, sizes[k], s.numel()))
        spectra.append(s)
        s_prev, vt_prev = s, vt
    cores = []
    for k, q in enumerate(isometries):
        if q is None:  # S^-1/2 I S^1/2 is exactly I; build it so, free of rounding
            d = spectra[k].numel()
            cores.append(torch.eye(d, dtype=work.dtype, device=work.device).reshape(d, 1, 1, d))
            continue
        left = _pinv_sqrt(spectra[k])
        right = spectra[k + 1].sqrt()
        core = left[:, None, None] * q * right[None, None, :]
        cores.append(core.reshape(q.shape[0], row_modes[k], col_modes[k], q.shape[2]))
    last = (s_prev.sqrt().unsqueeze(1) * vt_prev.reshape(s_prev.numel(), -1)).reshape(
        s_prev.numel(), row_modes[-1], col_modes[-1], 1
    )
    cores.append(last)
    return cores


def _pinv_sqrt(s: torch.Tensor) -> torch.Tensor:
    """``s^{-1/2}`` with singular values at round-off level mapped to 0 (their rows are unused)."""
    tol = s.max() * max(s.numel(), 1) * torch.finfo(s.dtype).eps if s.numel() else 0.0
    safe = torch.where(s > tol, s, torch.ones_like(s))
    return torch.where(s > tol, safe.rsqrt(), torch.zeros_like(s))
