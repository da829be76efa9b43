"""The values a few options take, defined once, importable without torch: the config validation,
the CLI's choices and the library (``overparameterize``, ``AlignmentLoss``) all read them here.

Also the rules a single option obeys, declared on its dataclass field (the run config's sections
and every method's ``Options``) instead of written out as ``raise`` statements::

    @dataclass
    class Options:
        temperature: float = positive(4.0)          # > 0
        alpha: float = unit_interval(0.9)           # in [0, 1]
        topk: int | None = at_least(None, 1, allow_none=True)
        scheduler: str = choice("constant", "linear", default="linear")

:func:`check_fields` checks an options object against them (one line naming the key, the value
and the rule); the config loader checks each key as it reads it (:func:`field_problem`).
"""

from __future__ import annotations

import dataclasses
import difflib
import numbers
from collections.abc import Callable, Sequence
from typing import Any

from opdf.errors import ConfigError, OpdfError

#: over-parameterization schemes, from none to the most parameters
SCHEMES = ("none", "svd", "mpo")
#: learning-rate rules for the cores (:mod:`opdf.lr_scaling`, config key ``lr_scaling``)
LR_SCALINGS = ("none", "auto")
#: dotted config keys that do not change what a run computes: a resumed run, or a suite's
#: finished cell, may differ in them (``teacher.cache_outputs`` reads what it would compute)
#: (``log_to`` only changes where the same numbers are written)
NEUTRAL_KEYS = ("teacher.cache_outputs", "log_to")
#: where a run's metric records go (config key ``log_to``): ``metrics.jsonl`` and/or TensorBoard
#: scalars in ``OUTPUT_DIR/tb`` (:mod:`opdf.run.tblog`, ``pip install 'opdf[tb]'``)
LOG_TARGETS = ("jsonl", "tensorboard")
DEFAULT_LOG_TO = ("jsonl",)
#: which MPO cores train (config key ``train_cores``): every one, the central core only
#: (``overparameterize(train_only_central=True)``, MPOP-style) or the auxiliary ones only
TRAIN_CORES = ("all", "central", "auxiliary")
#: where a student cut from the teacher starts (config key ``student.init``): its bottom layers,
#: every k-th from the first (DistilBERT's rule), every k-th ending at the top (the alignment's
#: uniform map k(i+1)-1), or its top layers; k = teacher layers / student layers
STUDENT_INITS = ("bottom", "alternate", "uniform", "top")
#: how each aligned pair's MSE is scaled (config key ``align.normalize``): ``none`` (the paper's
#: mean MSE, whose size depends on the cores' scale: ~4e-3 for MiniLM pairs) or ``teacher`` (the
#: MSE over the teacher core's mean square: a relative error, the same size at any width)
ALIGN_NORMALIZATIONS = ("none", "teacher")
#: where a text student's weights come from (config key ``student.source``): layers of the
#: fine-tuned teacher, the same layers of the teacher's pretrained model before its fine-tune
#: (the DistilBERT practice), or a separately pretrained model (``student.model``)
STUDENT_SOURCES = ("finetuned-teacher", "pretrained-teacher", "model")
#: the student's classification head (``student.head``): the source's, or newly initialised
STUDENT_HEADS = ("copy", "new")
#: the named core selections of the alignment loss (``align.cores``); else a list of indices
CORE_SELECTIONS = ("auxiliary", "all")


def check_core_selection(cores) -> str | list[int]:
    """``cores`` as the alignment loss takes it: one of :data:`CORE_SELECTIONS` or a list of
    integer core indices (their range depends on the core count, checked where it is known)."""
    if isinstance(cores, str):
        if cores in CORE_SELECTIONS:
            return cores
    elif isinstance(cores, Sequence):
        bad = [k for k in cores if not isinstance(k, numbers.Integral) or isinstance(k, bool)]
        if bad:
            raise OpdfError(f"core indices must be integers, got {bad[0]!r}")
        return [int(k) for k in cores]
    raise OpdfError(
        f"cores must be {', '.join(repr(c) for c in CORE_SELECTIONS)} or a list of core indices, "
        f"got {cores!r}"
    )


# ------------------------------------------------------------------------ rules on one option


def choice(*values, why: str = "", **kw):
    """A field whose value is one of ``values`` (``default=`` or ``default_factory=`` in ``kw``)."""
    return dataclasses.field(metadata={"choices": values, "why": why}, **kw)


def positive(default, *, allow_zero: bool = False, allow_none: bool = False, why: str = ""):
    """A field whose value is ``> 0`` (``>= 0`` with ``allow_zero``); ``None`` passes (for an
    optional field: say so in the message with ``allow_none``)."""
    return dataclasses.field(
        default=default,
        metadata={"min": 0, "strict": not allow_zero, "none": allow_none, "why": why},
    )


def at_least(default, low, *, allow_none: bool = False, why: str = ""):
    """A field whose value is ``>= low`` (counts: ``at_least(10, 1)``); ``None`` passes."""
    return dataclasses.field(
        default=default, metadata={"min": low, "strict": False, "none": allow_none, "why": why}
    )


def in_range(default, low, high, *, low_open: bool = False, high_open: bool = False,
             why: str = ""):  # fmt: skip
    """A field whose value lies between ``low`` and ``high`` (closed ends unless ``*_open``)."""
    meta = {"min": low, "strict": low_open, "max": high, "max_strict": high_open, "why": why}
    return dataclasses.field(default=default, metadata=meta)


def unit_interval(default, *, why: str = ""):
    """A field whose value is in ``[0, 1]`` (a weight or a probability)."""
    return in_range(default, 0, 1, why=why)


def each_of(*values, default_factory: Callable[[], list], why: str = ""):
    """A field whose value is a non-empty list of items from ``values``."""
    return dataclasses.field(default_factory=default_factory, metadata={"each": values, "why": why})


def suggest(value, valid) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``valid`` to ``value``, or ``""``."""
    close = difflib.get_close_matches(str(value), [str(v) for v in valid], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _range_rule(meta: dict) -> str:
    low = meta["min"]
    if "max" not in meta:
        return f"> {low}" if meta["strict"] else f">= {low}"
    left = "(" if meta["strict"] else "["
    right = ")" if meta.get("max_strict") else "]"
    return f"in {left}{low}, {meta['max']}{right}"


def field_problem(value, meta: dict) -> str | None:
    """What ``value`` breaks of the rule in a field's ``meta`` (``"must be > 0"``), or None."""
    why = f" ({meta['why']})" if meta.get("why") else ""
    if "choices" in meta and value not in meta["choices"]:
        valid = ", ".join(map(str, meta["choices"]))
        return f"is not valid{suggest(value, meta['choices'])}; valid choices: {valid}{why}"
    if "each" in meta and value is not None:
        bad = not value or any(v not in meta["each"] for v in value)
        if bad:
            return f"is not valid; give a non-empty list of {', '.join(meta['each'])}{why}"
    if "min" in meta and value is not None:
        low, high = meta["min"], meta.get("max")
        bad = value <= low if meta["strict"] else value < low
        if high is not None:
            bad = bad or (value >= high if meta.get("max_strict") else value > high)
        if bad:
            return f"must be {_range_rule(meta)}{' or null' if meta.get('none') else ''}{why}"
    return None


def check_field(what: str, value, meta: dict) -> None:
    """Raise :class:`ConfigError` ``"<what>: <value> must be ..."`` when ``value`` breaks the
    rule declared in a field's ``meta`` (``what`` names the key, e.g. ``"config key 'lr'"``)."""
    problem = field_problem(value, meta)
    if problem is not None:
        raise ConfigError(f"{what}: {value!r} {problem}")


def check_fields(options: Any, section: str) -> None:
    """Check every field of a dataclass ``options`` against the rule declared on it; the
    message names the key as ``<section>.<field>`` (a method's config section)."""
    for f in dataclasses.fields(options):
        if f.metadata:
            check_field(f"{section}.{f.name}", getattr(options, f.name), f.metadata)
