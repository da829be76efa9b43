"""Pure tensor math of matrix product operators: shapes, decomposition, contraction, counts.

Nothing here knows about ``nn.Module`` or training; :mod:`opdf.overparam` builds on it.
"""

from opdf.mpo.contract import contract, contraction_cost, contraction_order
from opdf.mpo.decompose import apply_sign_rule, as_matrix, decompose
from opdf.mpo.operator import MPO
from opdf.mpo.shapes import (
    balanced_factors,
    bond_dims,
    central_index,
    check_max_bond,
    count_params,
    full_bond_dims,
    mpo_shapes,
    validate_modes,
)

__all__ = [
    "MPO",
    "apply_sign_rule",
    "as_matrix",
    "balanced_factors",
    "bond_dims",
    "central_index",
    "check_max_bond",
    "contract",
    "contraction_cost",
    "contraction_order",
    "count_params",
    "decompose",
    "full_bond_dims",
    "mpo_shapes",
    "validate_modes",
]
