"""opdf: knowledge distillation with an over-parameterized (MPO) student.

During training each chosen weight matrix is a matrix product operator (MPO) with more parameters
than the matrix; after training the cores are merged back, so the deployed student is exactly as
small and fast as before (Zhan et al., NeurIPS 2024, arXiv 2411.06448).

Three calls cover the method::

    opdf.overparameterize(student, scheme="mpo", unit_modes=3)
    align = opdf.AlignmentLoss(student, teacher)  # once, before training
    loss = task_loss + align()                    # every step
    opdf.merge(student)

``opdf.lr_groups(student, lr, scaling="auto")`` gives the optimizer per-core learning rates under
which one step moves each merged weight as far as it moves a plain weight.
"""

# Everything here loads on first use (PEP 562): `import opdf` and `opdf --help` stay free of
# torch, and of importlib.metadata (a fifth of a bare `opdf --help`) until the version is asked.
_LAZY = {
    "AlignmentLoss": "opdf.align",
    "accumulate": "opdf.overparam",
    "cores": "opdf.overparam",
    "lr_groups": "opdf.lr_scaling",
    "merge": "opdf.overparam",
    "overparameterize": "opdf.overparam",
    "param_report": "opdf.overparam",
}

__all__ = [
    "__version__",
    "AlignmentLoss",
    "accumulate",
    "cores",
    "lr_groups",
    "merge",
    "overparameterize",
    "param_report",
]


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("opdf")
    except metadata.PackageNotFoundError:  # pragma: no cover - a source tree not installed
        return "0+unknown"


def __getattr__(name: str):
    import importlib

    if name == "__version__":
        globals()[name] = version = _version()
        return version
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    try:  # a submodule not imported yet: opdf.overparam, opdf.mpo, ...
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | {"__version__"})
