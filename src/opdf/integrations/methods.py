"""The distillation method an integration trains with: a :class:`opdf.distill.Distiller`, built
through the method registry from a name, or given built.

An integration calls only the method's ``forward_train`` (the engine owns the loop, the optimizer
and the schedule), so methods that need the runner's other hooks (a warm-up by step, a teacher
that trains, batches of their own) are refused by name, with the command that runs them.
No engine is imported here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from torch import nn

from opdf.distill import Distiller, get_method
from opdf.errors import ConfigError, OpdfError

__all__ = ["RUNNER_HOOKS", "build_distiller", "check_forward_only", "num_labels_of"]

#: the Distiller hooks only the runner calls: a method that overrides one needs ``opdf distill``
RUNNER_HOOKS = ("on_train_start", "before_step", "on_step_end", "configure_optimizers",
                "param_groups", "extra_state")  # fmt: skip


def num_labels_of(*models: nn.Module | None) -> list[int | None]:
    """``config.num_labels`` of each model (None for a model without one)."""
    return [getattr(getattr(m, "config", None), "num_labels", None) for m in models]


def check_forward_only(cls: type[Distiller]) -> None:
    """Refuse a method whose training needs more than ``forward_train`` and a frozen teacher."""
    name = cls.name or cls.__name__
    hooks = [h for h in RUNNER_HOOKS if getattr(cls, h) is not getattr(Distiller, h)]
    if hooks or not cls.teacher_frozen:
        why = ", ".join(hooks) if hooks else "a teacher that trains"
        raise OpdfError(
            f"method {name} needs {why}, which an integration does not run (it calls "
            f"forward_train only); train {name} with `opdf distill`, or use distiller='kd'"
        )


def _options(cls: type[Distiller], options: Mapping[str, Any] | None):
    """``cls.Options`` from a mapping (unknown keys named), validated without a run config."""
    if options is not None and dataclasses.is_dataclass(options):
        opts = options
    else:
        fields = [f.name for f in dataclasses.fields(cls.Options)]
        unknown = sorted(set(options or {}) - set(fields))
        if unknown:
            raise OpdfError(
                f"method_options: unknown option(s) {', '.join(unknown)} for {cls.name}; "
                f"valid: {', '.join(fields) or '(none)'}"
            )
        opts = cls.Options(**dict(options or {}))
    validate = getattr(opts, "validate", None)
    if validate is not None:
        try:
            validate(None)
        except ConfigError as exc:
            raise OpdfError(f"method_options: {exc}") from None
    return opts


def build_distiller(
    method: str | Distiller,
    student: nn.Module,
    teacher: nn.Module | None,
    options: Mapping[str, Any] | None = None,
) -> Distiller:
    """The method ``student`` trains with: ``method`` itself when built (its student must be
    ``student``), else the registry's class of that name over ``student`` and ``teacher`` with
    ``options`` (a mapping of the method's ``Options`` fields, or an ``Options`` instance).
    The number of labels (1: regression) is read from the models' ``config.num_labels``."""
    if isinstance(method, Distiller):
        if method.student is not student:
            raise OpdfError("the distiller's student is not the model= being trained; build "
                            "it over the same model (or pass the method's name)")  # fmt: skip
        if options is not None:
            raise OpdfError("method_options go with a method name; a built distiller has its own")
        check_forward_only(type(method))
        return method
    if not isinstance(method, str):
        raise OpdfError(f"distiller must be a method name or a Distiller, got {method!r}")
    cls = get_method(method)
    check_forward_only(cls)
    if cls.needs_teacher and teacher is None:
        raise OpdfError(f"method {method} needs a teacher=")
    labels = [n for n in num_labels_of(student, teacher) if n is not None]
    if not labels:
        raise OpdfError(
            "neither the model nor the teacher has config.num_labels (1 for regression): pass "
            f"distiller={cls.__name__}(model, teacher, num_labels=N), built yourself"
        )
    return cls(student, teacher, _options(cls, options), num_labels=labels[0])
