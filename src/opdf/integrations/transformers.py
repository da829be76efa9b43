"""OPDF inside ``transformers.Trainer``: an existing Trainer script gains it in a few lines.

::

    from opdf.integrations.transformers import OpdfTrainer

    trainer = OpdfTrainer(
        model=student, args=TrainingArguments(...), train_dataset=..., eval_dataset=...,
        teacher=teacher,            # frozen; KD loss and the alignment target
        scheme="mpo", unit_modes=3, align_weight=100.0, kd_alpha=0.9, kd_temperature=4.0,
    )
    trainer.train()                 # or train(resume_from_checkpoint=True)
    # OUTPUT_DIR/merged: the merged student, loaded by stock transformers

What it changes, and nothing else (launchers, accelerate, DDP, logging, evaluation and the
checkpoint rotation are the Trainer's own):

- ``__init__`` over-parameterizes ``model`` in place (:func:`opdf.overparameterize`) before the
  Trainer sees it, so the optimizer it builds trains the cores; the teacher is frozen.
- ``compute_loss`` (training only) is the distillation method's ``forward_train`` terms (the
  ``kd`` method by default, the CLI's own: ``(1 - kd_alpha) * task + kd_alpha * T^2 KL(teacher ||
  student)``, MSE to the teacher's prediction for a one-output regression model) ``+
  align_weight * L_Aux``; without a teacher, the model's own loss ``+ L_Aux``; evaluation keeps
  the model's own loss. The terms are logged as ``opdf_task``, ``opdf_kd``, ``opdf_align`` (and
  any other term a method names).
- Gradient accumulation contracts each weight once per optimizer step (:func:`opdf.accumulate`
  with :meth:`~opdf.overparam.Accumulation.carry`, which composes with DDP's ``no_sync``: the
  Trainer's last, synced micro-batch carries every core gradient into the one all-reduce).
- Checkpoints (``checkpoint-N/``) hold the cores, so ``train(resume_from_checkpoint=...)`` resumes
  exactly; loading one checks that every core was found (the Trainer itself loads non-strictly).
- When ``train`` returns the model is merged in place (plain ``nn.Linear`` weights again) and
  saved with its tokenizer to ``merged_dir`` (default ``OUTPUT_DIR/merged``); a later
  ``trainer.save_model()`` writes the merged model too. Build a new trainer to train again.
- ``lr_scaling="auto"``: ``create_optimizer`` gives every MPO core its own rate and decay
  (:mod:`opdf.lr_scaling`), so one step moves each merged weight like a plain one and
  ``args.learning_rate`` need not be re-tuned when ``unit_modes`` changes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

import opdf
from opdf.choices import LR_SCALINGS
from opdf.distill import Distiller
from opdf.distill.base import MODEL_INPUTS
from opdf.errors import OpdfError
from opdf.extras import require
from opdf.integrations.methods import build_distiller, num_labels_of
from opdf.lr_scaling import core_rates, split_groups
from opdf.overparam import core_index, low_precision_contraction, mpo_modules

# transformers.Trainer cannot be built without accelerate; and where transformers found it at
# its own import and it is gone since, importing Trainer fails with transformers' own error:
# check first, so that a missing accelerate is always the one error naming the extra
require("accelerate", "opdf.integrations.transformers (transformers.Trainer)")

from transformers import Trainer  # noqa: E402 - after the check above
from transformers.trainer_pt_utils import nested_gather  # noqa: E402

__all__ = ["AUTO_OPTIMS", "OpdfTrainer"]

#: the runner's term names -> the names OpdfTrainer logs (``opdf_task``, as it always has)
TERM_NAMES = {"ce": "task"}

#: ``TrainingArguments.optim`` values that ``lr_scaling="auto"`` accepts: torch-style AdamW,
#: whose per-entry, sign-like step is what the rule assumes (SGD, Adafactor, Lion, ... are not)
AUTO_OPTIMS = (
    "adamw_torch",
    "adamw_torch_fused",
    "adamw_torch_xla",
    "adamw_torch_npu_fused",
    "adamw_anyprecision",
    "adamw_torch_4bit",
    "adamw_torch_8bit",
)


class OpdfTrainer(Trainer):
    """A :class:`transformers.Trainer` that trains ``model`` as an over-parameterized student.

    Parameters (besides the Trainer's own, passed through)
    ------------------------------------------------------
    teacher
        A frozen teacher (same inputs as the student): the distiller's (KD's) target and,
        when ``align_weight > 0``, the model whose cores the student's are pulled toward.
    scheme, unit_modes, targets, shapes, freeze_central
        As in :func:`opdf.overparameterize` (``scheme="none"`` trains the plain model: KD only).
        A model that is over-parameterized already is used as it is.
    align_weight, align_cores, layer_map, allow_partial
        The alignment loss, :class:`opdf.AlignmentLoss` (0 switches it off).
    distiller, method_options
        The distillation method (with a teacher): a registered method's name (default ``"kd"``)
        built over ``model`` and ``teacher`` with ``method_options`` (its ``Options`` fields,
        e.g. ``{"alpha": 0.9, "temperature": 4.0}``, the config's ``kd:`` section), or a
        :class:`opdf.distill.Distiller` built over ``model``. Only its ``forward_train`` runs:
        methods that need the runner's other hooks (``dkd``, ``theseus``, ``lgtm``, ...) are
        refused; train those with ``opdf distill``.
    kd_alpha, kd_temperature
        The ``kd`` method's ``alpha`` and ``temperature`` (default 0.9 and 4.0; the task loss
        gets ``1 - kd_alpha``); ignored without teacher.
    merged_dir
        Where the merged student goes when ``train`` ends (default ``OUTPUT_DIR/merged``);
        ``False``: merge in place but save nothing.
    one_contraction_per_step
        Under gradient accumulation, contract once per optimizer step (default True; off under
        DeepSpeed, FSDP and ``sync_each_batch``, where each micro-batch contracts).
    bf16_contraction
        With ``TrainingArguments(bf16=True)``: the training forwards contract the cores under the
        Trainer's bf16 autocast (the CLI's ``precision: bf16-contraction``: on a CPU with AMX
        its OPDF step ran 1.77x faster than float32, 1.37x with a float32 contraction;
        ``benchmarks/results/precision-steps.md``); evaluation and the merge stay float32.
        Refused under the one-per-step contraction of gradient accumulation, which is float32
        by design (``one_contraction_per_step=False`` lets each micro-batch contract in bf16).
    lr_scaling
        ``"none"`` (default): one rate for every parameter, as the Trainer builds it. ``"auto"``:
        per-core rates and decays from :func:`opdf.lr_groups`'s rule (needs an AdamW ``optim``,
        :data:`AUTO_OPTIMS`, or an ``optimizer_cls_and_kwargs`` whose class is an Adam).
    """

    loss_is_scaled_for_ga = False  # our loss is a per-micro-batch mean: the Trainer divides it

    def __init__(
        self,
        model: nn.Module | None = None,
        args=None,
        *,
        teacher: nn.Module | None = None,
        scheme: str = "mpo",
        unit_modes: int = 3,
        targets: Sequence[str] | str | None = None,
        shapes: Mapping | None = None,
        freeze_central: bool = False,
        align_weight: float = 0.0,
        align_cores: str | Sequence[int] = "auxiliary",
        layer_map: Mapping[int, int] | None = None,
        allow_partial: bool = False,
        kd_alpha: float | None = None,
        kd_temperature: float | None = None,
        merged_dir: str | os.PathLike | bool | None = None,
        one_contraction_per_step: bool = True,
        bf16_contraction: bool = False,
        lr_scaling: str = "none",
        distiller: str | Distiller = "kd",
        method_options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        _check_arguments(model, kwargs, teacher, scheme, align_weight, lr_scaling)
        _check_distiller_has_teacher(distiller, method_options, teacher)
        _prepare_student(model, scheme=scheme, unit_modes=unit_modes, targets=targets,
                         shapes=shapes, freeze_central=freeze_central)  # fmt: skip
        options = _kd_options(distiller, method_options, kd_alpha, kd_temperature)
        if isinstance(distiller, Distiller):
            teacher = _same_teacher(distiller, teacher)
        _freeze_teacher(model, teacher)
        self.teacher = teacher
        self.distiller = None  # no teacher: the model's own loss
        if teacher is not None:
            self.distiller = build_distiller(distiller, model, teacher, options)
            _check_task_loss(model, kwargs, args)
        opts = getattr(self.distiller, "options", None)
        self.kd_alpha = float(getattr(opts, "alpha", 0.0))  # the KD weight (0 without KD)
        self.kd_temperature = float(getattr(opts, "temperature", kd_temperature or 4.0))
        self.align = None
        if align_weight > 0:
            self.align = opdf.AlignmentLoss(
                model, teacher, layer_map=layer_map, cores=align_cores, weight=align_weight,
                allow_partial=allow_partial,
            )  # fmt: skip
        self.merged_dir = merged_dir
        self.one_contraction_per_step = one_contraction_per_step
        self.bf16_contraction = bool(bf16_contraction)
        self._reset_step_state()
        self.merged = False
        self.lr_scaling = lr_scaling
        super().__init__(model=model, args=args, **kwargs)
        if lr_scaling == "auto":
            self._check_auto_optimizer()
        if self.bf16_contraction:
            self._check_bf16_contraction()

    def _check_bf16_contraction(self) -> None:
        """``bf16_contraction=True`` where it would change nothing (or break) is an error."""
        if not any(True for _ in mpo_modules(self.model)):
            raise OpdfError("bf16_contraction=True needs an over-parameterized student "
                            "(scheme svd/mpo): a plain model has no contraction")  # fmt: skip
        if not self.args.bf16:
            raise OpdfError(
                "bf16_contraction=True contracts the cores under the Trainer's bf16 autocast: "
                "set TrainingArguments(bf16=True) (without it every contraction is float32)"
            )
        if self._accumulating():
            raise OpdfError(
                "bf16_contraction=True with gradient_accumulation_steps="
                f"{self.args.gradient_accumulation_steps}: the one contraction per optimizer "
                "step (opdf.accumulate) is float32 by design; pass one_contraction_per_step="
                "False to contract each micro-batch in bf16, or drop bf16_contraction"
            )
        args = self.args  # activation_checkpointing: the name gradient_checkpointing has in v6
        if getattr(args, "activation_checkpointing", False) or getattr(
            args, "gradient_checkpointing", False
        ):
            raise OpdfError(
                "bf16_contraction=True with activation (gradient) checkpointing: the recomputed "
                "forwards run in the backward, outside the step's bf16-contraction switch, so "
                "they would contract in float32 what the forward contracted in bf16; drop one"
            )

    def _reset_step_state(self) -> None:
        """Per-step bookkeeping: the open accumulation block and the loss terms to log."""
        self._acc_block = None  # the open opdf.accumulate() of the current optimizer step
        self._acc = None
        self._carry: torch.Tensor | None = None
        self._terms: dict[str, torch.Tensor] = {}
        self._n_terms = 0

    # ------------------------------------------------------------------ optimizer
    def _check_auto_optimizer(self) -> None:
        """The rule models Adam's per-entry step: refuse optimizers it says nothing about, and
        set-ups where the Trainer never calls ``create_optimizer`` (the rule would be ignored)."""
        if getattr(self.args, "deepspeed", None) or getattr(self, "is_deepspeed_enabled", False):
            raise OpdfError(
                "lr_scaling='auto' is not supported under DeepSpeed (its config may build the "
                "optimizer, bypassing the per-core groups); use lr_scaling='none'"
            )
        if self.optimizer is not None:
            raise OpdfError(
                "lr_scaling='auto' builds the optimizer's per-core groups itself; drop "
                "optimizers=(...) or use lr_scaling='none'"
            )
        if self.optimizer_cls_and_kwargs is not None:
            cls = self.optimizer_cls_and_kwargs[0]
            if not (isinstance(cls, type) and issubclass(cls, torch.optim.Adam)):
                raise OpdfError(
                    f"lr_scaling='auto' is derived for Adam/AdamW; optimizer_cls_and_kwargs has "
                    f"{getattr(cls, '__name__', cls)!r} (use lr_scaling='none')"
                )
            return
        optim = getattr(self.args.optim, "value", self.args.optim)
        if optim not in AUTO_OPTIMS:
            raise OpdfError(
                f"lr_scaling='auto' is derived for Adam's per-entry step; optim={optim!r} is "
                f"not one: choose one of {', '.join(AUTO_OPTIMS)} (or lr_scaling='none')"
            )

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        """``lr_scaling="auto"``: the Trainer's optimizer class and arguments over per-core
        groups; ``"none"``: the Trainer's own.

        Groups: the plain parameters at ``args.learning_rate`` split by the Trainer's
        decay/no-decay names (first, so the logged learning rate is the plain one), then one
        group per trainable core at its rate and decay (:func:`opdf.lr_scaling.core_rates`). The
        scheduler multiplies each group's own initial rate, so the ratios hold all run long; a
        resumed run takes every group's rate from the saved optimizer state.
        """
        if self.lr_scaling != "auto" or self.optimizer is not None:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        groups = self._auto_groups(opt_model)
        if self.optimizer_cls_and_kwargs is not None:
            cls, kwargs = self.optimizer_cls_and_kwargs
        else:
            cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        self.optimizer = cls(groups, **kwargs)
        return self.optimizer

    def _auto_groups(self, opt_model: nn.Module) -> list[dict]:
        """:func:`opdf.lr_scaling.split_groups` with the Trainer's decay names; cores matched by
        identity, so a wrapped ``opt_model`` (DDP) finds the same ones."""
        lr, wd = self.args.learning_rate, self.args.weight_decay
        decay_names = set(self.get_decay_parameter_names(opt_model))
        rates = core_rates(self.model)
        named = [(n, p) for n, p in opt_model.named_parameters() if p.requires_grad]
        held = {id(p) for _, p in named}
        missing = [r for r in rates if id(r.param) not in held]
        if missing:
            raise OpdfError(
                "lr_scaling='auto': the optimizer's model does not hold the MPO cores as "
                f"parameters (e.g. {missing[0].name}; FSDP flattens them); "
                "use lr_scaling='none'"
            )
        group = {"params": [p for _, p in named], "names": [n for n, _ in named], "lr": lr}
        # both plain groups even when empty: the first is the rate the Trainer logs, and a
        # checkpoint's optimizer state loads only into the layout it was saved from
        return split_groups([group], wd, rates, no_decay=lambda n: n not in decay_names,
                            keep_empty=True)  # fmt: skip

    # ------------------------------------------------------------------ training
    def train(self, *args, **kwargs):
        """``Trainer.train``, then merge the model in place and save it to ``merged_dir``."""
        if self.merged:
            raise OpdfError(
                "this OpdfTrainer's model was merged when its train() ended; build a new "
                "OpdfTrainer (from the merged model) to train again"
            )
        if self.teacher is not None:
            self.teacher.to(self.args.device)
        try:
            output = super().train(*args, **kwargs)
        finally:
            self._close_accumulation(None)
        self.merge_and_save()
        return output

    def merge_and_save(self) -> str | None:
        """Merge the (unwrapped) model in place; rank 0 saves it with its tokenizer."""
        opdf.merge(self.model)
        self.merged = True
        if self.merged_dir is False:
            return None
        out = os.fspath(self.merged_dir or os.path.join(self.args.output_dir, "merged"))
        self.save_model(out)
        return out

    def _accumulating(self) -> bool:
        from accelerate.utils import DistributedType

        if not self.one_contraction_per_step or self.args.gradient_accumulation_steps <= 1:
            return False
        acc = self.accelerator
        if acc.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP,
                                    DistributedType.XLA):  # fmt: skip
            return False
        if acc.gradient_state.plugin_kwargs.get("sync_each_batch", False):
            return False
        return any(True for _ in mpo_modules(self.model))

    def _close_accumulation(self, exc: BaseException | None) -> None:
        block, self._acc_block, self._acc, self._carry = self._acc_block, None, None, None
        if block is not None:
            block.__exit__(type(exc) if exc else None, exc, exc.__traceback__ if exc else None)

    def training_step(self, model, inputs, num_items_in_batch=None):
        """One micro-batch; under accumulation, the first opens the step's single contraction
        and the last (the one the Trainer syncs) carries every core gradient through it."""
        if not self._accumulating():
            return super().training_step(model, inputs, num_items_in_batch)
        if self._acc_block is None:
            self._acc_block = opdf.accumulate(self.model)
            self._acc = self._acc_block.__enter__()
        last = self.accelerator.gradient_state.sync_gradients
        if last:
            self._carry = self._acc.carry()
        try:
            loss = super().training_step(model, inputs, num_items_in_batch)
        except BaseException as exc:
            self._close_accumulation(exc)  # finished micro-batches keep their gradient
            raise
        if last:
            self._close_accumulation(None)
        return loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The method's terms (+ alignment) while training; the model's own loss otherwise."""
        if not model.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        low = low_precision_contraction() if self.bf16_contraction else contextlib.nullcontext()
        with low:  # the forwards only: the backward replays what they recorded
            if self.distiller is not None:
                terms, outputs = self._method_terms(model, inputs)
            else:
                terms, outputs = self._task_terms(model, inputs)
        if self.align is not None:
            terms["align"] = self.align()
        if not terms:
            raise OpdfError(
                "no loss to train on: the batch has no labels and no teacher was given "
                "(pass teacher=..., or include labels)"
            )
        loss = sum(terms.values())
        if self._carry is not None:  # a zero whose gradient is the earlier micro-batches'
            loss = loss + self._carry * self.current_gradient_accumulation_steps
            self._carry = None
        for k, v in terms.items():
            self._terms[k] = self._terms.get(k, 0.0) + v.detach().float()
        self._n_terms += 1
        return (loss, outputs) if return_outputs else loss

    def _task_terms(self, model, inputs) -> tuple[dict[str, torch.Tensor], Any]:
        """No teacher: the model's own loss (the Trainer's: label smoothing, ``problem_type``)."""
        if "labels" not in inputs:
            return {}, model(**inputs)
        task, outputs = super().compute_loss(model, inputs, return_outputs=True)
        return {"task": task}, outputs

    def _method_terms(self, model, inputs) -> tuple[dict[str, torch.Tensor], Any]:
        """The distiller's ``forward_train`` on the batch, through ``model`` (the Trainer's
        wrapped model under DDP, whose forward syncs the gradients); the teacher's forward
        under the same autocast. The method's ``ce`` term is logged as ``opdf_task``."""
        image = "pixel_values" in inputs and not set(inputs) & set(MODEL_INPUTS)
        extra = sorted(set(inputs) - {"labels", *(("pixel_values",) if image else MODEL_INPUTS)})
        if extra:
            raise OpdfError(
                f"the batch has {', '.join(extra)}: the distiller reads "
                f"{', '.join(MODEL_INPUTS)} and labels (text classifiers), or pixel_values and "
                "labels (image classifiers); give the Trainer such batches, or no teacher"
            )
        d = self.distiller
        d.step = self.state.global_step
        try:
            with self.accelerator.autocast(), _as_student(d, model):
                logits, losses = d.forward_train(inputs)
        except KeyError as exc:
            if exc.args != ("labels",):
                raise
            raise OpdfError(
                f"the batch has no labels, which {d.name}'s task term needs: include labels, "
                "or (kd) set kd_alpha=1.0 to distil from the teacher alone"
            ) from None
        return {TERM_NAMES.get(k, k): v for k, v in losses.items()}, {"logits": logits}

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the mean loss terms since the last training log (averaged over processes)."""
        if "loss" in logs and self._n_terms:
            for k, v in self._terms.items():
                mean = nested_gather(v / self._n_terms, self.args.parallel_mode).mean()
                logs[f"opdf_{k}"] = round(float(mean), 6)
            self._terms, self._n_terms = {}, 0
        super().log(logs, start_time)

    # ------------------------------------------------------------------ checkpoints
    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None):
        """The Trainer loads weights non-strictly; a checkpoint without the cores (e.g. one of a
        plain model) would silently resume from the decomposition, so check them."""
        target = model if model is not None else self.model
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        keys = _checkpoint_keys(resume_from_checkpoint)
        if keys is not None:
            missing = [n for n in _core_names(target) if n not in keys]
            if missing:
                raise OpdfError(
                    f"{resume_from_checkpoint} has no over-parameterized cores for this model "
                    f"(e.g. {missing[0]}): it was not written by an OpdfTrainer with the same "
                    "scheme, unit_modes and targets"
                )


def _check_arguments(model, kwargs: dict, teacher, scheme: str, align_weight: float,
                     lr_scaling: str) -> None:  # fmt: skip
    """The arguments OpdfTrainer refuses, before it touches the model."""
    if model is None or kwargs.get("model_init") is not None:
        raise OpdfError(
            "OpdfTrainer needs model=...: it over-parameterizes that model once, before "
            "training (model_init, which rebuilds the model per trial, is not supported)"
        )
    if lr_scaling not in LR_SCALINGS:
        raise OpdfError(f"lr_scaling must be one of: {', '.join(LR_SCALINGS)}; got {lr_scaling!r}")
    if align_weight < 0:
        raise OpdfError(f"align_weight must be >= 0, got {align_weight!r}")
    if align_weight > 0 and teacher is None:
        raise OpdfError("align_weight > 0 needs a teacher= whose cores the student aligns to")
    if align_weight > 0 and scheme == "none":
        raise OpdfError("align_weight > 0 needs an over-parameterized student: scheme svd/mpo")
    if not any(p.requires_grad for p in model.parameters()):
        raise OpdfError(
            "the model has no parameter that requires grad (a copy of a frozen teacher?); "
            "call model.requires_grad_(True) before building the OpdfTrainer"
        )


def _check_distiller_has_teacher(distiller, method_options, teacher) -> None:
    """A method named or configured without a teacher to distil from is refused."""
    if (
        teacher is None
        and not isinstance(distiller, Distiller)
        and (distiller != "kd" or method_options is not None)
    ):
        raise OpdfError(f"distiller={distiller!r} and method_options need a teacher=")


def _prepare_student(model: nn.Module, **overparam: Any) -> None:
    """Over-parameterize ``model`` in place; a model that is already is used as it is."""
    if not any(True for _ in mpo_modules(model)):
        opdf.overparameterize(model, **overparam)


def _kd_options(distiller, method_options, kd_alpha: float | None,
                kd_temperature: float | None) -> Mapping[str, Any] | None:  # fmt: skip
    """``method_options`` with ``kd_alpha`` / ``kd_temperature`` (the config's ``kd.alpha`` and
    ``kd.temperature``) folded in: they are the ``kd`` method's options and no other's."""
    if kd_alpha is not None and not 0.0 <= kd_alpha <= 1.0:
        raise OpdfError(f"kd_alpha must be in [0, 1], got {kd_alpha!r}")
    if kd_temperature is not None and not kd_temperature > 0:
        raise OpdfError(f"kd_temperature must be > 0, got {kd_temperature!r}")
    given = {k: v for k, v in (("alpha", kd_alpha), ("temperature", kd_temperature))
             if v is not None}  # fmt: skip
    if not given:
        return method_options
    if distiller != "kd" or dataclasses.is_dataclass(method_options):
        raise OpdfError(
            "kd_alpha and kd_temperature are the kd method's options: with distiller="
            f"{getattr(distiller, 'name', distiller)!r} or an Options instance, set them in "
            "method_options (or on the distiller)"
        )
    options = dict(method_options or {})
    for key, value in given.items():
        if key in options and options[key] != value:
            raise OpdfError(f"kd_{key}={value!r} and method_options {key}={options[key]!r}: "
                            "give one")  # fmt: skip
        options[key] = value
    return options


def _same_teacher(distiller: Distiller, teacher: nn.Module | None) -> nn.Module | None:
    """A built distiller brings its teacher; a ``teacher=`` beside it must be that one."""
    if teacher is not None and teacher is not distiller.teacher:
        raise OpdfError("teacher= is not the distiller's teacher: give one of them")
    return distiller.teacher


def _freeze_teacher(model: nn.Module, teacher: nn.Module | None) -> None:
    """Same labels as the student (when both say), eval mode, no gradient."""
    if teacher is None:
        return
    labels = num_labels_of(model, teacher)
    if None not in labels and labels[0] != labels[1]:
        raise OpdfError(_label_mismatch(*labels))
    teacher.eval()
    teacher.requires_grad_(False)


def _check_task_loss(model: nn.Module, kwargs: dict, args) -> None:
    """With a teacher the method computes the task loss (cross-entropy, MSE for one output), not
    the model: refuse what would otherwise be silently dropped."""
    if getattr(args, "label_smoothing_factor", 0.0):
        raise OpdfError("label_smoothing_factor is not applied to the distiller's task loss; "
                        "set it to 0 (or train without a teacher)")  # fmt: skip
    if kwargs.get("compute_loss_func") is not None:
        raise OpdfError("compute_loss_func is not used: with a teacher the distiller computes "
                        "the loss; drop it (or train without a teacher)")  # fmt: skip
    problem = getattr(getattr(model, "config", None), "problem_type", None)
    if problem == "multi_label_classification":
        raise OpdfError("problem_type multi_label_classification: the distiller's task loss is "
                        "cross-entropy (MSE for one output); train without a teacher")  # fmt: skip


@contextlib.contextmanager
def _as_student(distiller: Distiller, model: nn.Module):
    """The distiller's student is ``model`` for one forward (the wrapped model under DDP)."""
    own = distiller.student
    if model is own:
        yield
        return
    distiller.student = model
    try:
        yield
    finally:
        distiller.student = own


def _label_mismatch(student: int, teacher: int) -> str:
    return (
        f"the student has {student} output(s) (num_labels) and the teacher {teacher}: KD needs "
        "the same labels; build both with the task's num_labels"
    )


def _core_names(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_parameters() if core_index(n) is not None]


def _checkpoint_keys(folder: str) -> set[str] | None:
    """Tensor names stored in a checkpoint folder (safetensors, single file or sharded)."""
    import json

    from safetensors import safe_open

    single = os.path.join(folder, "model.safetensors")
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(single):
        with safe_open(single, framework="pt") as f:
            return set(f.keys())
    if os.path.isfile(index):
        with open(index) as f:
            return set(json.load(f)["weight_map"])
    return None
