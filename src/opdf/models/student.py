"""Students made of chosen teacher layers (what BERT-of-Theseus, LGTM and DBKD start from), and
their classification head (copied with the layers, or new: :func:`new_head`)."""

from __future__ import annotations

import copy
from collections.abc import Sequence

from torch import nn

from opdf.choices import STUDENT_INITS
from opdf.errors import OpdfError
from opdf.overparam import encoder_layers


def find_layer_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The ``ModuleList`` of encoder layers: ``(dotted name, list)``, found by
    :func:`opdf.overparam.encoder_layers`; an :class:`OpdfError` if the model has none."""
    found = encoder_layers(model)
    if found is None:
        raise OpdfError(
            f"{type(model).__name__}: found no ModuleList of encoder layers (repeated blocks "
            "holding nn.Linear, e.g. bert.encoder.layer)"
        )
    return found


def default_student_layers(n_teacher: int) -> list[int]:
    """The bottom half: 12 -> [0..5], 6 -> [0, 1, 2]."""
    return list(range(max(1, n_teacher // 2)))


def init_layers(
    init: str | Sequence[int], n_teacher: int, n_student: int | None = None
) -> list[int]:
    """The teacher layers a student of ``n_student`` layers (default: half the teacher) starts
    from under ``init`` (one of :data:`opdf.choices.STUDENT_INITS`, or an explicit list).

    With ``k = n_teacher / n_student`` (6 -> 3: k = 2): ``bottom`` [0, 1, 2]; ``alternate``
    ``floor(k i)`` = [0, 2, 4] (DistilBERT's every other layer); ``uniform`` ``ceil(k (i + 1)) - 1``
    = [1, 3, 5], the layers the alignment's uniform map pairs the student with; ``top`` [3, 4, 5].
    Why it matters: a student cut from spread-out layers starts closer to the teacher's function
    than one cut from its bottom layers, and is the baseline practitioners actually train.
    """
    if n_teacher < 1:
        raise OpdfError(f"the teacher has {n_teacher} layers: nothing to start a student from")
    if not isinstance(init, str):
        chosen = [int(i) for i in init]
        if n_student is not None and len(chosen) != n_student:
            raise OpdfError(
                f"student init {chosen} keeps {len(chosen)} layers, but the student has {n_student}"
            )
        return chosen
    if init not in STUDENT_INITS:
        raise OpdfError(
            f"unknown student init {init!r}; valid: {', '.join(STUDENT_INITS)}, or a list of "
            "teacher layer indices"
        )
    n = len(default_student_layers(n_teacher)) if n_student is None else int(n_student)
    if not 1 <= n <= n_teacher:
        raise OpdfError(
            f"a student of {n} layers cannot be cut from a teacher of {n_teacher}: choose 1.."
            f"{n_teacher} layers"
        )
    if init == "bottom":
        return list(range(n))
    if init == "top":
        return list(range(n_teacher - n, n_teacher))
    if init == "alternate":  # floor(i N / n), exact integer arithmetic
        return [(i * n_teacher) // n for i in range(n)]
    return [-(-((i + 1) * n_teacher) // n) - 1 for i in range(n)]  # uniform: ceil((i+1) N/n) - 1


def student_from_teacher(teacher: nn.Module, layers: Sequence[int] | None = None) -> nn.Module:
    """A new model (deep copy) keeping only teacher encoder ``layers``, in the given order.

    Same width; embeddings, pooler and classification head are copied;
    ``config.num_hidden_layers`` is updated so ``save_pretrained``/``from_pretrained`` round-trip.
    The chosen teacher indices are recorded in ``config.opdf_teacher_layers``. Default: the bottom
    half of the layers. The teacher is not modified.
    """
    name, teacher_layers = find_layer_list(teacher)
    n = len(teacher_layers)
    chosen = default_student_layers(n) if layers is None else [int(i) for i in layers]
    if not chosen:
        raise OpdfError("layers is empty: keep at least one teacher layer")
    bad = [i for i in chosen if not 0 <= i < n]
    if bad:
        raise OpdfError(f"layers {bad} out of range: the teacher has {n} layers (0..{n - 1})")
    if len(set(chosen)) != len(chosen):
        raise OpdfError(f"layers {chosen} repeat an index; each teacher layer can be kept once")

    student = copy.deepcopy(teacher)
    old = student.get_submodule(name)
    student.set_submodule(name, nn.ModuleList([old[i] for i in chosen]))
    for new_idx, layer in enumerate(student.get_submodule(name)):
        for mod in layer.modules():  # cache bookkeeping in attention (BERT's layer_idx)
            if isinstance(getattr(mod, "layer_idx", None), int):
                mod.layer_idx = new_idx
    config = student.config
    config.num_hidden_layers = len(chosen)
    config.opdf_teacher_layers = list(chosen)
    return student


def head_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The classification head: the top-level modules of a transformers classifier outside its
    encoder (``base_model_prefix``, e.g. BERT's ``classifier``; the pooler is the encoder's)."""
    prefix = getattr(model, "base_model_prefix", "")
    head = {name: m for name, m in model.named_children()
            if name != prefix and any(True for _ in m.parameters())}  # fmt: skip
    if not prefix or not hasattr(model, prefix) or not head:
        raise OpdfError(f"{type(model).__name__}: no encoder + classification head to tell apart")
    return head


def new_head(model: nn.Module, seed: int) -> nn.Module:
    """Initialise ``model``'s classification head afresh (in place), as transformers initialises
    a missing head, from ``seed`` without touching the global RNG: ``student.head: new``."""
    import torch

    init = getattr(model, "_init_weights", None)
    if init is None:
        raise OpdfError(f"{type(model).__name__} has no transformers weight initialisation")
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for module in head_modules(model).values():
            for p in module.parameters():  # transformers skips tensors it marked as loaded
                p._is_hf_initialized = False
            module.apply(init)
    return model


# the config fields transformers encoders read their dropout rates from
DROPOUT_FIELDS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout",
                  "dropout", "attention_dropout", "seq_classif_dropout")  # fmt: skip


def set_dropout(model: nn.Module, p: float) -> nn.Module:
    """Set every ``nn.Dropout`` of ``model`` to rate ``p`` (in place), and the config's dropout
    fields to match, so that a saved config says what the model trained with."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = float(p)
    config = getattr(model, "config", None)
    for name in DROPOUT_FIELDS:
        if config is not None and getattr(config, name, None) is not None:
            setattr(config, name, float(p))
    return model
