"""Distillation methods: one small file each, one registry (``@register_method``).

>>> from opdf.distill import get_method, method_names
>>> method_names()                                     # doctest: +SKIP
['kd', 'theseus']
"""

from opdf.distill.base import (
    Distiller,
    TrainContext,
    get_method,
    method_names,
    methods,
    model_inputs,
    register_method,
    task_loss,
)

__all__ = [
    "Distiller",
    "TrainContext",
    "get_method",
    "method_names",
    "methods",
    "model_inputs",
    "register_method",
    "task_loss",
]
