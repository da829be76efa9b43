"""Mode shapes, bond dimensions and parameter counts of an MPO, computed without any tensor.

An MPO of an ``(I, J)`` matrix factors the rows as ``I = i_1 ... i_n`` and the columns as
``J = j_1 ... j_n``. Core ``k`` has shape ``[d_{k-1}, i_k, j_k, d_k]`` with ``d_0 = d_n = 1``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = [
    "balanced_factors",
    "mpo_shapes",
    "validate_modes",
    "full_bond_dims",
    "bond_dims",
    "count_params",
    "central_index",
    "check_max_bond",
]


def balanced_factors(size: int) -> tuple[int, int]:
    """Split ``size`` into ``(a, b)``, ``a * b = size``, ``a >= b``, ``b`` as large as possible.

    768 -> (32, 24), 3072 -> (64, 48), 384 -> (24, 16). A prime ``p`` gives ``(p, 1)``.
    """
    _check_size("size", size)
    b = math.isqrt(size)
    while size % b:
        b -= 1
    return size // b, b


def mpo_shapes(rows: int, cols: int, unit_modes: int = 0) -> tuple[list[int], list[int]]:
    """Row and column modes of the paper's scheme: two balanced factors with unit modes between.

    ``mpo_shapes(768, 768, 3) == ([32, 1, 1, 1, 24], [32, 1, 1, 1, 24])``. With ``unit_modes=0``
    this is the two-core "SVD" baseline of the paper.
    """
    _check_size("rows", rows)
    _check_size("cols", cols)
    if not isinstance(unit_modes, int) or isinstance(unit_modes, bool) or unit_modes < 0:
        raise ValueError(f"unit_modes must be an integer >= 0, got {unit_modes!r}")
    r1, r2 = balanced_factors(rows)
    c1, c2 = balanced_factors(cols)
    ones = [1] * unit_modes
    return [r1, *ones, r2], [c1, *ones, c2]


def validate_modes(
    rows: int, cols: int, row_modes: Sequence[int], col_modes: Sequence[int]
) -> tuple[list[int], list[int]]:
    """Check that the modes factor an ``(rows, cols)`` matrix; return them as int lists."""
    row_modes = [int(m) for m in row_modes]
    col_modes = [int(m) for m in col_modes]
    if not row_modes or len(row_modes) != len(col_modes):
        raise ValueError(
            "row_modes and col_modes must be non-empty and of equal length (one pair per core), "
            f"got {len(row_modes)} row modes {row_modes} and {len(col_modes)} column modes "
            f"{col_modes}"
        )
    bad = [m for m in row_modes + col_modes if m < 1]
    if bad:
        raise ValueError(f"every mode must be >= 1, got {bad} in {row_modes} x {col_modes}")
    if math.prod(row_modes) != rows:
        raise ValueError(
            f"row modes {row_modes} multiply to {math.prod(row_modes)}, but the matrix has "
            f"{rows} rows (out_features)"
        )
    if math.prod(col_modes) != cols:
        raise ValueError(
            f"column modes {col_modes} multiply to {math.prod(col_modes)}, but the matrix has "
            f"{cols} columns (in_features)"
        )
    return row_modes, col_modes


def full_bond_dims(row_modes: Sequence[int], col_modes: Sequence[int]) -> list[int]:
    """Untruncated bonds ``d_k = min(prod_{m<=k} i_m j_m, prod_{m>k} i_m j_m)`` (paper Eq. 3)."""
    sizes = [i * j for i, j in zip(row_modes, col_modes, strict=True)]
    total = math.prod(sizes)
    dims, left = [1], 1
    for s in sizes[:-1]:
        left *= s
        dims.append(min(left, total // left))
    dims.append(1)
    return dims


def bond_dims(
    row_modes: Sequence[int], col_modes: Sequence[int], max_bond: int | None = None
) -> list[int]:
    """Bond dimensions after optional truncation to ``max_bond``."""
    dims = full_bond_dims(row_modes, col_modes)
    if max_bond is None:
        return dims
    check_max_bond(max_bond)
    return [1] + [min(d, max_bond) for d in dims[1:-1]] + [1]


def count_params(
    row_modes: Sequence[int], col_modes: Sequence[int], max_bond: int | None = None
) -> int:
    """Number of entries in all cores: ``sum_k d_{k-1} i_k j_k d_k``."""
    dims = bond_dims(row_modes, col_modes, max_bond)
    return sum(
        dims[k] * i * j * dims[k + 1]
        for k, (i, j) in enumerate(zip(row_modes, col_modes, strict=True))
    )


def central_index(num_cores: int) -> int:
    """Index of the central core, ``(n - 1) // 2``, as in the published code."""
    if num_cores < 1:
        raise ValueError(f"an MPO has at least one core, got {num_cores}")
    return (num_cores - 1) // 2


def _check_size(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_max_bond(max_bond: int) -> None:
    """``max_bond`` is an integer >= 1 (``None``, exact, is handled by the callers)."""
    if not isinstance(max_bond, int) or isinstance(max_bond, bool) or max_bond < 1:
        raise ValueError(f"max_bond must be an integer >= 1 (or None for exact), got {max_bond!r}")
