"""Contract MPO cores back into a matrix, differentiably, in the cheapest order.

The cores form a chain ``[d_0, m_1, d_1], [d_1, m_2, d_2], ...`` (``m_k = i_k j_k``). Contracting a
segment ``a..b`` gives a ``[d_{a-1}, m_a ... m_b, d_b]`` block, and joining two neighbouring blocks
costs ``d_{a-1} M_left d_c M_right d_b`` multiply-adds. A small dynamic programme over the chain
(the classic matrix-chain order, generalised to carry the mode sizes) picks the order; for the
paper's unit-mode MPOs it multiplies the ``d x d`` cores first whenever that is cheaper.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch

__all__ = ["contract", "contraction_order", "contraction_cost"]


def check_chain(cores: Sequence[torch.Tensor]) -> tuple[list[int], list[int]]:
    """Check that ``cores`` form an MPO chain (4-D, neighbouring bonds equal, outer bonds 1);
    return the row and column modes they carry (``core.shape[1]``, ``core.shape[2]``)."""
    if len(cores) == 0:
        raise ValueError("an MPO needs at least one core")
    for k, core in enumerate(cores):
        if core.dim() != 4:
            raise ValueError(
                f"core {k} must be 4-D [d_prev, i, j, d_next], got shape {tuple(core.shape)}"
            )
    for k in range(1, len(cores)):
        if cores[k].shape[0] != cores[k - 1].shape[3]:
            raise ValueError(
                f"bond mismatch between core {k - 1} (right bond {cores[k - 1].shape[3]}) and "
                f"core {k} (left bond {cores[k].shape[0]})"
            )
    if cores[0].shape[0] != 1 or cores[-1].shape[3] != 1:
        raise ValueError(
            f"the outer bonds must be 1, got {cores[0].shape[0]} and {cores[-1].shape[3]}"
        )
    return [int(c.shape[1]) for c in cores], [int(c.shape[2]) for c in cores]


def contract(cores: Sequence[torch.Tensor]) -> torch.Tensor:
    """Contract cores ``[d_{k-1}, i_k, j_k, d_k]`` into the ``(prod i, prod j)`` matrix.

    Differentiable with respect to every core. The row modes are read off ``core.shape[1]`` and the
    column modes off ``core.shape[2]``.
    """
    row_modes, col_modes = check_chain(cores)
    bonds = [cores[0].shape[0]] + [c.shape[3] for c in cores]
    sizes = [i * j for i, j in zip(row_modes, col_modes, strict=True)]
    split = _split_table(tuple(bonds), tuple(sizes))
    blocks = [c.reshape(c.shape[0], sizes[k], c.shape[3]) for k, c in enumerate(cores)]
    chain = _contract_range(blocks, split, 0, len(cores) - 1)  # [1, prod m, 1]
    n = len(cores)
    if n == 1:
        return chain.reshape(row_modes[0], col_modes[0])
    # The joint index runs over (i_1, j_1, i_2, j_2, ...): move all i's before all j's.
    pairs = zip(row_modes, col_modes, strict=True)
    interleaved = chain.reshape([m for pair in pairs for m in pair])
    perm = list(range(0, 2 * n, 2)) + list(range(1, 2 * n, 2))
    return interleaved.permute(perm).reshape(math.prod(row_modes), math.prod(col_modes))


def contraction_order(bonds: Sequence[int], sizes: Sequence[int]) -> str:
    """The chosen parenthesisation as a string, e.g. ``'(0 ((1 2) 3))'``: for reports and tests."""
    split = _split_table(tuple(bonds), tuple(sizes))

    def show(a: int, b: int) -> str:
        if a == b:
            return str(a)
        c = split[a][b]
        return f"({show(a, c)} {show(c + 1, b)})"

    return show(0, len(sizes) - 1)


def contraction_cost(bonds: Sequence[int], sizes: Sequence[int]) -> int:
    """Multiply-adds of the cheapest order (the value the dynamic programme minimises)."""
    return _cost_table(tuple(bonds), tuple(sizes))[0][0][len(sizes) - 1]


def _contract_range(
    blocks: list[torch.Tensor], split: list[list[int]], a: int, b: int
) -> torch.Tensor:
    if a == b:
        return blocks[a]
    c = split[a][b]
    left = _contract_range(blocks, split, a, c)  # [d_a, M_l, d_c]
    right = _contract_range(blocks, split, c + 1, b)  # [d_c, M_r, d_b]
    da, ml, dc = left.shape
    _, mr, db = right.shape
    out = left.reshape(da * ml, dc) @ right.reshape(dc, mr * db)
    return out.reshape(da, ml * mr, db)


@functools.lru_cache(maxsize=256)
def _cost_table(
    bonds: tuple[int, ...], sizes: tuple[int, ...]
) -> tuple[list[list[int]], list[list[int]]]:
    n = len(sizes)
    prefix = [1]
    for s in sizes:
        prefix.append(prefix[-1] * s)

    def span(a: int, b: int) -> int:  # product of sizes[a..b]
        return prefix[b + 1] // prefix[a]

    cost = [[0] * n for _ in range(n)]
    split = [[0] * n for _ in range(n)]
    for length in range(2, n + 1):
        for a in range(0, n - length + 1):
            b = a + length - 1
            best, arg = None, a
            for c in range(a, b):
                here = (
                    cost[a][c]
                    + cost[c + 1][b]
                    + bonds[a] * span(a, c) * bonds[c + 1] * span(c + 1, b) * bonds[b + 1]
                )
                if best is None or here < best:
                    best, arg = here, c
            cost[a][b] = best
            split[a][b] = arg
    return cost, split


def _split_table(bonds: tuple[int, ...], sizes: tuple[int, ...]) -> list[list[int]]:
    return _cost_table(bonds, sizes)[1]
