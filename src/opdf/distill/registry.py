"""The method registry: ``method: NAME`` in a config -> a :class:`~opdf.distill.Distiller` class.

It sits one step above :mod:`opdf.distill.base` (it imports the base class; the base knows
nothing of it) and below every method file, which imports ``register_method`` from here;
:mod:`opdf.distill` imports the built-in methods, which fills it::

    from opdf.distill import Distiller, register_method

    @register_method("my-kd")
    class MyKD(Distiller):
        ...
"""

from __future__ import annotations

import dataclasses

from opdf.distill.base import Distiller
from opdf.errors import ConfigError

__all__ = ["get_method", "method_names", "methods", "register_method", "unregister_method"]

_METHODS: dict[str, type[Distiller]] = {}


def register_method(name: str):
    """Class decorator: make a :class:`Distiller` subclass available as ``method: name``."""

    def deco(cls: type[Distiller]) -> type[Distiller]:
        if not (isinstance(cls, type) and issubclass(cls, Distiller)):
            raise TypeError(f"@register_method({name!r}) must decorate a Distiller subclass")
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(f"method {name!r} is already registered ({_METHODS[name].__name__})")
        if not dataclasses.is_dataclass(cls.Options):
            raise TypeError(f"{cls.__name__}.Options must be a dataclass")
        cls.name = name
        if not cls.description:
            doc = (cls.__doc__ or "").strip().splitlines()
            cls.description = doc[0] if doc else ""
        _METHODS[name] = cls
        return cls

    return deco


def unregister_method(name: str) -> None:
    """Remove a registered method (tests and notebooks that define throw-away methods)."""
    _METHODS.pop(name, None)


def method_names() -> list[str]:
    return sorted(_METHODS)


def get_method(name: str) -> type[Distiller]:
    if name not in _METHODS:
        raise ConfigError(f"unknown method {name!r}; valid methods: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def methods() -> dict[str, type[Distiller]]:
    return dict(sorted(_METHODS.items()))
