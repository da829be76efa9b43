"""The runner: configs, the training loop, checkpoints, teacher fine-tuning.

>>> from opdf.run import load_config, run_distill
>>> cfg = load_config("configs/smoke-kd.yaml", ["output_dir=/tmp/x"])
>>> summary = run_distill(cfg)  # doctest: +SKIP

The names below load on first use (PEP 562), so that importing one light module of this package
(``opdf.run.lock``, ``opdf.run.owner``) does not pay for the training stack.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "RunConfig": "opdf.run.config",
    "config_from_dict": "opdf.run.config",
    "load_config": "opdf.run.config",
    "build": "opdf.run.runner",
    "finetune_teacher": "opdf.run.runner",
    "run_distill": "opdf.run.runner",
    "Trainer": "opdf.run.trainer",
    "TrainSettings": "opdf.run.trainer",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
