"""opdf: knowledge distillation with an over-parameterized (MPO) student.

During training each chosen weight matrix is a matrix product operator (MPO) with more parameters
than the matrix; after training the cores are merged back, so the deployed student is exactly as
small and fast as before (Zhan et al., NeurIPS 2024, arXiv 2411.06448).

Three calls cover the method::

    opdf.overparameterize(student, scheme="mpo", unit_modes=3)
    align = opdf.AlignmentLoss(student, teacher)  # once, before training
    loss = task_loss + align()                    # every step
    opdf.merge(student)
"""

__version__ = "0.1.0"

from opdf.align import AlignmentLoss  # noqa: E402
from opdf.overparam import (  # noqa: E402
    accumulate,
    cores,
    merge,
    overparameterize,
    param_report,
)

__all__ = [
    "__version__",
    "AlignmentLoss",
    "accumulate",
    "cores",
    "merge",
    "overparameterize",
    "param_report",
]
