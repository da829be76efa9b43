"""Optional dependencies: each part of opdf that needs one imports it here, on first use, and a
missing one is one error that names the extra to install (``pip install 'opdf[report]'``)."""

from __future__ import annotations

import importlib
from types import ModuleType

from opdf.errors import OpdfError

__all__ = ["EXTRAS", "MissingExtraError", "require"]

#: the package each extra of ``pyproject.toml`` installs for a module opdf imports
EXTRAS = {"matplotlib": "report", "accelerate": "hf"}


class MissingExtraError(OpdfError, ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""


def require(module: str, needed_for: str) -> ModuleType:
    """Import ``module`` (a key of :data:`EXTRAS`, or a submodule of one) for ``needed_for``."""
    top = module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] != top:
            raise  # something inside the installed package is broken: not a missing extra
        extra = EXTRAS[top]
        raise MissingExtraError(
            f"{needed_for} needs {top}, which is not installed: pip install 'opdf[{extra}]'"
        ) from exc
