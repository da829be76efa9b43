"""A nested dataclass from a YAML mapping, checked: what ``config.yaml`` and a method's options
section become. Every unknown key, wrong type and non-finite number is one ConfigError naming the
dotted key (with a close match for a typo); each field's declared rules
(:func:`opdf.choices.field_problem`) are applied on the way."""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Any, Union

from opdf.choices import field_problem
from opdf.errors import ConfigError

__all__ = ["build_dataclass"]


def _type_name(tp) -> str:
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        (inner,) = typing.get_args(tp) or (Any,)
        plural = {int: "integers", float: "numbers", str: "strings"}.get(inner)
        return f"a list of {plural or _type_name(inner)}"
    if origin is dict:
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


class _Mismatch(Exception):
    pass


def _coerce(value, tp, where: str):
    """Check ``value`` against type ``tp``; return it converted (int -> float, nested dataclass)."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return _coerce_union(value, typing.get_args(tp), where)
    if value is None:
        raise _Mismatch
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise _Mismatch
        return build_dataclass(tp, value, where)
    if origin is list:
        if not isinstance(value, list | tuple):
            raise _Mismatch
        (inner,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise _Mismatch
        args = typing.get_args(tp)
        if args:
            return {
                _coerce(k, args[0], where): _coerce(v, args[1], where) for k, v in value.items()
            }
        return dict(value)
    return _coerce_scalar(value, tp)


def _coerce_union(value, args: tuple, where: str):
    """The first member of ``X | Y | None`` that ``value`` fits; a member's own ConfigError (a
    nested mapping with a bad key) wins over "fits none"."""
    if value is None:
        if type(None) in args:
            return None
        raise _Mismatch
    errors = []
    for a in args:
        if a is type(None):
            continue
        try:
            return _coerce(value, a, where)
        except _Mismatch:
            continue
        except ConfigError as e:
            errors.append(e)
    if errors:
        raise errors[0]
    raise _Mismatch


def _coerce_scalar(value, tp):
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise _Mismatch
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads 5e-5 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise _Mismatch from None
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    return value


def build_dataclass(cls, data: dict, where: str = ""):
    """Build dataclass ``cls`` from ``data``; ConfigError on any unknown key or bad value."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "method_options"}
    unknown = [k for k in data if k not in fields]
    if unknown:
        k = unknown[0]
        prefix = f"{where}." if where else ""
        close = difflib.get_close_matches(str(k), list(fields), n=1)
        hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
        raise ConfigError(
            f"unknown config key {prefix}{k}{hint}; valid keys"
            f"{' in ' + where if where else ''}: {', '.join(fields)}"
        )
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            continue
        key = f"{where}.{name}" if where else name
        given = data[name]
        try:
            value = _coerce(given, hints[name], key)
        except _Mismatch:
            hint = ""
            if isinstance(given, str) and "," in given and "list" in _type_name(hints[name]):
                hint = f" (write a list in brackets: [{given}])"
            raise ConfigError(
                f"config key {key!r}: {given!r} is not {_type_name(hints[name])}{hint}"
            ) from None
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"config key {key!r}: {given!r} is not a finite number")
        problem = field_problem(value, f.metadata)
        if problem is not None:  # the value as the user wrote it: -1, not the coerced -1.0
            raise ConfigError(f"config key {key!r}: {given!r} {problem}")
        kwargs[name] = value
    return cls(**kwargs)
