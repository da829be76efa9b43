"""The ``MPO`` container: cores plus the modes they factor, and what can be read off them."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from opdf.mpo.contract import check_chain, contract
from opdf.mpo.shapes import central_index

__all__ = ["MPO"]


@dataclass
class MPO:
    """A matrix product operator: ``cores[k]`` has shape ``[d_{k-1}, i_k, j_k, d_k]``.

    ``row_modes`` factor the rows (``out_features`` of an ``nn.Linear`` weight), ``col_modes`` the
    columns (``in_features``; ``in * kh * kw`` for a Conv2d). ``weight_shape`` is the shape of the
    weight that was decomposed, so a Conv2d kernel can be restored with :meth:`to_weight`.
    """

    cores: list[torch.Tensor]
    row_modes: list[int]
    col_modes: list[int]
    weight_shape: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        """Validate on construction (as tensorly's ``TTMatrix``), so that :attr:`shape`,
        :attr:`bond_dims` and the cores can never disagree."""
        self.cores = list(self.cores)
        rows, cols = check_chain(self.cores)
        self.row_modes = [int(m) for m in self.row_modes]
        self.col_modes = [int(m) for m in self.col_modes]
        if (self.row_modes, self.col_modes) != (rows, cols):
            raise ValueError(
                f"the cores carry row modes {rows} and column modes {cols}, but the MPO was "
                f"given row_modes={self.row_modes} and col_modes={self.col_modes}"
            )
        if self.weight_shape is not None:
            self.weight_shape = tuple(int(s) for s in self.weight_shape)
            if math.prod(self.weight_shape) != math.prod(rows) * math.prod(cols):
                raise ValueError(
                    f"weight_shape {self.weight_shape} does not hold the {math.prod(rows)} x "
                    f"{math.prod(cols)} matrix of the cores"
                )

    @property
    def num_cores(self) -> int:
        return len(self.cores)

    @property
    def bond_dims(self) -> list[int]:
        """``[d_0, d_1, ..., d_n]``, starting and ending with 1."""
        return [self.cores[0].shape[0]] + [int(c.shape[3]) for c in self.cores]

    @property
    def num_params(self) -> int:
        return sum(c.numel() for c in self.cores)

    @property
    def central_index(self) -> int:
        """``(n - 1) // 2``; every other core is auxiliary."""
        return central_index(self.num_cores)

    @property
    def auxiliary_indices(self) -> list[int]:
        return [k for k in range(self.num_cores) if k != self.central_index]

    @property
    def shape(self) -> tuple[int, int]:
        rows = 1
        cols = 1
        for i, j in zip(self.row_modes, self.col_modes, strict=True):
            rows *= i
            cols *= j
        return rows, cols

    def to_matrix(self) -> torch.Tensor:
        """Contract the cores into the 2-D matrix."""
        return contract(self.cores)

    def to_weight(self) -> torch.Tensor:
        """The matrix reshaped to the decomposed weight's shape (e.g. a 4-D Conv2d kernel)."""
        matrix = self.to_matrix()
        return matrix if self.weight_shape is None else matrix.reshape(self.weight_shape)
