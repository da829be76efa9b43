"""The values a few options take, defined once, importable without torch: the config validation,
the CLI's choices and the library (``overparameterize``, ``AlignmentLoss``) all read them here."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

from opdf.errors import OpdfError

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
