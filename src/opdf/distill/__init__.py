"""Distillation methods: one small file each, one registry (``@register_method``).

Importing this package registers the built-in methods (each file registers itself, as
torchdistill's ``losses/__init__.py`` does). Floors inside: ``base`` (the interface) <
``registry`` < each method file < this package.

>>> from opdf.distill import get_method, method_names
>>> method_names()                                     # doctest: +SKIP
['adkd', 'dbkd', 'dkd', 'kd', 'lgtm', 'theseus', 'tinyvit']
"""

from opdf.distill.base import Distiller, TrainContext, model_inputs, task_loss
from opdf.distill.finetune import FineTune
from opdf.distill.registry import (
    get_method,
    method_names,
    methods,
    register_method,
    unregister_method,
)

# the built-in methods (registration side effect)
from opdf.distill import adkd, dbkd, dkd, kd, lgtm, theseus, tinyvit  # noqa: E402, F401  isort: skip

__all__ = [
    "Distiller",
    "FineTune",
    "TrainContext",
    "get_method",
    "method_names",
    "methods",
    "model_inputs",
    "register_method",
    "task_loss",
    "unregister_method",
]
