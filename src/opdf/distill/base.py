"""The :class:`Distiller` interface every method implements.

A method is one small class (mdistiller style), registered with ``register_method`` from
:mod:`opdf.distill.registry` (which imports this module, never the reverse)::

    @register_method("kd")
    class KD(Distiller):
        '''Hinton KD: (1 - alpha) CE + alpha T^2 KL.'''
        @dataclass
        class Options:            # the config section named after the method
            temperature: float = 4.0
        def forward_train(self, batch):
            ...
            return logits, {"ce": ce, "kd": kd}

The runner owns everything else: data, over-parameterization (``overparam``), the alignment loss
(``align``), optimizer, schedule, gradient accumulation, evaluation, checkpoints and the merged
export. It only talks to a method through these hooks, so methods that need more plug in by
overriding them:

* :meth:`Distiller.build_student`: what the student starts from (teacher layers by default);
  :attr:`Distiller.default_student_source` and :meth:`Distiller.check_student_start`: where its
  weights may come from (``student.source``, ``student.head``), the method paper's start by
  default.
* :meth:`Distiller.param_groups`: what the main optimizer trains, with per-group learning rates.
* :meth:`Distiller.configure_optimizers`: the optimizers by name; ``"main"`` is stepped by the
  trainer, others (LGTM's teacher optimizer) by the method; all are checkpointed.
* :meth:`Distiller.trainable_modules`: what checkpoints save (the teacher too when it trains);
  :meth:`Distiller.extra_state` for anything else a resume needs.
* :meth:`Distiller.on_train_start`: access to the run context (datasets, a batch iterator over any
  split, total steps), e.g. LGTM's quiz batches from dev.
* :meth:`Distiller.before_step`: before each step of the main optimizer, with the step's batch: a
  method whose teacher trains takes the teacher's step here, so that the student's step sees the
  updated teacher (LGTM); may return scalars to log.
* :meth:`Distiller.teacher_overparameterized`: whether the runner over-parameterizes the teacher
  with the student's scheme (a trainable teacher under the alignment loss, whose live cores the
  loss then reads).
* :meth:`Distiller.on_step_end`: after each optimizer step; may return scalars to log (Theseus
  logs its replacement rate here). A method may take its own optimizers' steps here.
* :meth:`Distiller.teacher_outputs`: what a frozen teacher computes on a batch, read from the
  on-disk cache when the run has one (``teacher.cache_outputs``; :meth:`teacher_logits` uses it).
* :meth:`Distiller.forward_train` is free to call ``torch.autograd.grad(..., create_graph=True)``
  (AD-KD's attributions) or to use only the teacher's decisions (DBKD).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from opdf.errors import ConfigError
from opdf.models import student_from_teacher

#: ``(optimizer, LR schedule or None)``, and what makes one: ``build(groups, lr=None)``
OptimizerAndSchedule = tuple[torch.optim.Optimizer, "torch.optim.lr_scheduler.LRScheduler | None"]
OptimizerBuilder = Callable[..., OptimizerAndSchedule]

#: named tensors, e.g. a teacher's outputs on one batch
Outputs = dict[str, torch.Tensor]

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def model_inputs(batch: dict) -> dict:
    """The keys of a collated batch that a transformers model takes (labels and index dropped)."""
    return {k: v for k, v in batch.items() if k in MODEL_INPUTS}


def model_logits(model: nn.Module, batch: dict) -> torch.Tensor:
    """Logits of ``model`` on ``batch``: an image batch (``pixel_values``) goes to a plain torch
    classifier that returns logits; a text batch to a transformers model (``.logits``)."""
    if "pixel_values" in batch:  # opdf's vision models return logits; a transformers one, .logits
        out = model(batch["pixel_values"])
        return out if isinstance(out, torch.Tensor) else out.logits
    return model(**model_inputs(batch)).logits


def task_loss(logits: torch.Tensor, labels: torch.Tensor, num_labels: int) -> torch.Tensor:
    """Cross-entropy, or MSE for regression (``num_labels == 1``)."""
    if num_labels == 1:
        return F.mse_loss(logits.view(-1), labels.float().view(-1))
    return F.cross_entropy(logits, labels)


@dataclass
class TrainContext:
    """What the runner shares with a method in :meth:`Distiller.on_train_start`."""

    dataset: Any  # opdf.data.TextDataset or opdf.data.ImageDataset
    batches: Callable[[str, int, int], Iterable[dict]]  # (split, batch_size, seed) -> batches
    total_steps: int
    device: torch.device
    config: Any = None  # opdf.run.config.RunConfig
    steps_per_epoch: int = 1  # optimizer steps per pass over the training split
    train_view: Any = None  # the training split as the trainer batches it (opdf.data.views)
    eval_batch_size: int = 128
    cache_dir: Path | None = None  # where a method may keep reusable files (the opdf cache)
    progress: bool | None = None  # tqdm bars: None = auto, False = off
    tokenizer: Any = None  # the run's tokenizer (DBKD tokenizes its perturbed copies with it)
    max_length: int | None = None  # the run's data.max_length
    seed: int = 0  # the run's seed (e.g. for shuffling a method's own batches)
    batch_size: int = 32  # the training batch (per optimizer step)
    max_grad_norm: float | None = None  # the trainer's clipping of the main optimizer's gradients


class Distiller(nn.Module):
    """Base class of a distillation method. ``student`` trains; ``teacher`` is frozen by default.

    Parameters
    ----------
    student, teacher : nn.Module
        transformers sequence classifiers (``teacher`` may be None for ``needs_teacher=False``).
    options : dataclass instance
        The method's :class:`Options`, already validated.
    num_labels : int
        1 for regression.
    """

    #: registry name, set by :func:`register_method`
    name: ClassVar[str] = ""
    #: one line for ``opdf methods``; defaults to the first docstring line
    description: ClassVar[str] = ""
    #: False for a method whose teacher trains with the student (e.g. LGTM)
    teacher_frozen: ClassVar[bool] = True
    # False for methods that build the student from the teacher's own layers (BERT-of-Theseus)
    accepts_student_model: ClassVar[bool] = True
    #: where a text student comes from when the config names no ``student.source`` (and no
    #: ``student.model``): the start of the method's paper (:data:`opdf.choices.STUDENT_SOURCES`)
    default_student_source: ClassVar[str] = "finetuned-teacher"
    #: the sources the method accepts, and why it refuses the others (for the error message)
    student_sources: ClassVar[tuple[str, ...]] = ("finetuned-teacher", "pretrained-teacher",
                                                  "model")  # fmt: skip
    student_source_reason: ClassVar[str] = ""
    needs_teacher: ClassVar[bool] = True
    #: False when a step may leave trainable parameters out of its graph (Theseus): under DDP
    #: the runner then asks it to find them every step (``find_unused_parameters``)
    every_parameter_used: ClassVar[bool] = True
    #: the kinds of data the method works on ("text": transformers batches, "image": pixel_values)
    data_kinds: ClassVar[tuple[str, ...]] = ("text",)
    #: set by ``forward_train`` when its loss has no trainable path by design (Theseus drawing the
    #: predecessor for every module): the trainer then does not count the step as training nothing
    no_gradient_expected: bool = False
    #: the frozen teacher's outputs per batch on disk (:mod:`opdf.distill.teacher_cache`); set
    #: by the runner when ``teacher.cache_outputs`` is on
    teacher_cache: Any = None

    @dataclass
    class Options:
        """Method options (the config section named after the method)."""

    def __init__(self, student: nn.Module, teacher: nn.Module | None, options=None, *,
                 num_labels: int = 2):  # fmt: skip
        super().__init__()
        self.student = student
        self.teacher = teacher
        self.options = options if options is not None else self.Options()
        self.num_labels = num_labels
        self.step = 0  # optimizer steps taken so far; set by the runner before each step
        if teacher is not None and self.teacher_frozen:
            teacher.eval()
            teacher.requires_grad_(False)

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def build_student(cls, teacher: nn.Module, layers=None) -> nn.Module:
        """The student before training: teacher ``layers`` (default: the bottom half)."""
        return student_from_teacher(teacher, layers)

    @classmethod
    def check_student_start(cls, config) -> None:
        """Refuse a student start (``student.source``, ``student.head``, both resolved) that the
        method cannot take (raise ``ConfigError``, one line naming the fix). Default: the
        sources in :attr:`student_sources`."""
        source = config.student.source
        if source not in cls.student_sources:
            why = f" ({cls.student_source_reason})" if cls.student_source_reason else ""
            raise ConfigError(
                f"{cls.name}: student.source: {source} is not allowed{why}; use student.source: "
                f"{' or '.join(cls.student_sources)} (default {cls.default_student_source})"
            )

    @classmethod
    def check_task(cls, num_labels: int, config) -> None:
        """Refuse a task the method cannot train (raise ``ConfigError``). The runner calls it on
        the loaded data before the (minutes-long) teacher fine-tune. Default: any task."""

    # -- training -----------------------------------------------------------------------------
    def forward_train(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Student logits and the named loss terms for one (micro-)batch; the runner sums the
        terms (adding ``align`` when on) and backpropagates."""
        raise NotImplementedError

    @torch.no_grad()
    def forward_eval(self, batch: dict) -> torch.Tensor:
        """Logits of the deployed student (evaluation and export use the student alone)."""
        return model_logits(self.student, batch)

    def teacher_outputs(self, kind: str, batch: dict, compute: Callable[[], Outputs]) -> Outputs:
        """A frozen teacher's ``kind`` outputs on ``batch``, as ``compute()`` gives them: from
        :attr:`teacher_cache` when the run caches them (``teacher.cache_outputs``), else
        computed. ``kind`` must name everything besides the teacher and the batch that shapes
        them (e.g. AD-KD's ``ig_steps`` and ``topk``)."""
        if self.teacher_cache is None:
            return compute()
        return self.teacher_cache.get(kind, batch, compute)

    @torch.no_grad()
    def teacher_logits(self, batch: dict) -> torch.Tensor:
        return self.teacher_outputs(
            "logits", batch, lambda: {"logits": model_logits(self.teacher, batch)}
        )["logits"]

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None and self.teacher_frozen:
            self.teacher.eval()  # a frozen teacher never runs dropout
        return self

    def param_groups(self) -> list[dict]:
        """Optimizer groups: ``{"params": [...], "names": [...]}`` plus optional ``lr``,
        ``weight_decay``. Default: every student parameter that requires grad."""
        named = [(n, p) for n, p in self.student.named_parameters() if p.requires_grad]
        return [{"params": [p for _, p in named], "names": [f"student.{n}" for n, _ in named]}]

    def configure_optimizers(self, build: OptimizerBuilder) -> dict[str, OptimizerAndSchedule]:
        """The optimizers and their LR schedules, by name. The trainer steps ``"main"`` after
        each backward (clipping its parameters first); any other is the method's own to step,
        e.g. in :meth:`on_step_end` (LGTM's teacher). Every one is checkpointed and restored.
        ``build(groups, lr=None)`` makes the run's optimizer (AdamW, no decay on biases and
        norms) and warmup/decay schedule over ``param_groups``-style groups. Default: one
        ``"main"`` over :meth:`param_groups`."""
        return {"main": build(self.param_groups())}

    @classmethod
    def teacher_overparameterized(cls, config) -> bool:
        """Whether the runner over-parameterizes the teacher with the student's scheme. A frozen
        teacher stays plain (fast forwards; the alignment loss decomposes it once into frozen
        cores); a trainable one must be when the alignment loss is on, so that the loss aligns
        its live cores."""
        return not cls.teacher_frozen and config.overparam != "none" and config.align.weight > 0

    def trainable_modules(self) -> dict[str, nn.Module]:
        """Modules whose state a checkpoint must hold to resume exactly."""
        mods = {"student": self.student}
        if self.teacher is not None and not self.teacher_frozen:
            mods["teacher"] = self.teacher
        return mods

    def on_train_start(self, context: TrainContext) -> None:
        """Called once before the first step (and again when a run resumes)."""

    def before_step(self, batch: dict, step: int) -> dict[str, float]:
        """Called before optimizer step ``step`` of the main optimizer, with its whole batch on
        the device; returns scalars to log. Default: nothing.

        Every hook counts steps the same way: ``step`` is 0-based, the number of optimizer
        steps done before this one, the same as :attr:`step` while the step runs
        (``before_step(batch, s)``, ``forward_train``, ``on_step_end(s)`` all see ``s``)."""
        return {}

    def on_step_end(self, step: int) -> dict[str, float]:
        """Called after optimizer step ``step`` (0-based: the step just taken, the same index
        its ``before_step`` got); returns scalars to log."""
        return {}

    def extra_state(self) -> dict:
        """Method state beyond module weights that a checkpoint must hold (default: none)."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def export_student(self) -> nn.Module:
        """The model to merge and save at the end (the student, for every method so far)."""
        return self.student
