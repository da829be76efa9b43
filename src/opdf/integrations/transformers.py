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
- ``compute_loss`` (training only) is ``(1 - kd_alpha) * task + kd_alpha * T^2 KL(teacher ||
  student) + align_weight * L_Aux`` (a one-output regression model: MSE to the teacher's
  prediction in place of the KL, as the ``kd`` method; :func:`opdf.distill.kd.soft_loss`);
  evaluation keeps the model's own loss. The terms are logged
  as ``opdf_task``, ``opdf_kd``, ``opdf_align``.
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

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from transformers import Trainer
from transformers.trainer_pt_utils import nested_gather

import opdf
from opdf.choices import LR_SCALINGS
from opdf.distill.kd import soft_loss
from opdf.errors import OpdfError
from opdf.extras import require
from opdf.lr_scaling import core_rates, split_groups
from opdf.overparam import mpo_modules

# transformers.Trainer imports without accelerate but cannot be built without it: say so now
require("accelerate", "opdf.integrations.transformers (transformers.Trainer)")

__all__ = ["AUTO_OPTIMS", "OpdfTrainer"]

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
        A frozen teacher (same inputs as the student): the KD target when ``kd_alpha > 0`` and,
        when ``align_weight > 0``, the model whose cores the student's are pulled toward.
    scheme, unit_modes, targets, shapes, freeze_central
        As in :func:`opdf.overparameterize` (``scheme="none"`` trains the plain model: KD only).
        A model that is over-parameterized already is used as it is.
    align_weight, align_cores, layer_map, allow_partial
        The alignment loss, :class:`opdf.AlignmentLoss` (0 switches it off).
    kd_alpha, kd_temperature
        KD weight (the task loss gets ``1 - kd_alpha``) and temperature; ignored without teacher.
    merged_dir
        Where the merged student goes when ``train`` ends (default ``OUTPUT_DIR/merged``);
        ``False``: merge in place but save nothing.
    one_contraction_per_step
        Under gradient accumulation, contract once per optimizer step (default True; off under
        DeepSpeed, FSDP and ``sync_each_batch``, where each micro-batch contracts).
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
        kd_alpha: float = 0.9,
        kd_temperature: float = 4.0,
        merged_dir: str | os.PathLike | bool | None = None,
        one_contraction_per_step: bool = True,
        lr_scaling: str = "none",
        **kwargs: Any,
    ) -> None:
        if model is None or kwargs.get("model_init") is not None:
            raise OpdfError(
                "OpdfTrainer needs model=...: it over-parameterizes that model once, before "
                "training (model_init, which rebuilds the model per trial, is not supported)"
            )
        if not 0.0 <= kd_alpha <= 1.0:
            raise OpdfError(f"kd_alpha must be in [0, 1], got {kd_alpha!r}")
        if kd_temperature <= 0:
            raise OpdfError(f"kd_temperature must be > 0, got {kd_temperature!r}")
        if lr_scaling not in LR_SCALINGS:
            raise OpdfError(
                f"lr_scaling must be one of: {', '.join(LR_SCALINGS)}; got {lr_scaling!r}"
            )
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
        if not any(True for _ in mpo_modules(model)):
            opdf.overparameterize(model, scheme=scheme, unit_modes=unit_modes, targets=targets,
                                  shapes=shapes, freeze_central=freeze_central)  # fmt: skip
        if teacher is not None:
            labels = [getattr(getattr(m, "config", None), "num_labels", None)
                      for m in (model, teacher)]  # fmt: skip
            if None not in labels and labels[0] != labels[1]:
                raise OpdfError(_label_mismatch(*labels))
            teacher.eval()
            teacher.requires_grad_(False)
        self.teacher = teacher
        self.kd_alpha = float(kd_alpha) if teacher is not None else 0.0
        self.kd_temperature = float(kd_temperature)
        self.align = None
        if align_weight > 0:
            self.align = opdf.AlignmentLoss(
                model, teacher, layer_map=layer_map, cores=align_cores, weight=align_weight,
                allow_partial=allow_partial,
            )  # fmt: skip
        self.merged_dir = merged_dir
        self.one_contraction_per_step = one_contraction_per_step
        self._acc_block = None  # the open opdf.accumulate() of the current optimizer step
        self._acc = None
        self._carry: torch.Tensor | None = None
        self._terms: dict[str, torch.Tensor] = {}
        self._n_terms = 0
        self.merged = False
        self.lr_scaling = lr_scaling
        super().__init__(model=model, args=args, **kwargs)
        if lr_scaling == "auto":
            self._check_auto_optimizer()

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
        """Task (+ KD) (+ alignment) loss while training; the model's own loss otherwise."""
        if not model.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        has_labels = "labels" in inputs
        if has_labels and self.kd_alpha < 1.0:
            task, outputs = super().compute_loss(model, inputs, return_outputs=True)
        else:
            outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
            task = None
        terms: dict[str, torch.Tensor] = {}
        if task is not None:
            terms["task"] = task if self.teacher is None else (1.0 - self.kd_alpha) * task
        if self.teacher is not None and self.kd_alpha > 0:
            teacher_inputs = {k: v for k, v in inputs.items() if k != "labels"}
            with torch.no_grad(), self.accelerator.autocast():
                t_logits = self.teacher(**teacher_inputs).logits
            logits = outputs["logits"] if isinstance(outputs, Mapping) else outputs[0]
            if logits.shape[-1] != t_logits.shape[-1]:  # models without a config to check
                raise OpdfError(_label_mismatch(logits.shape[-1], t_logits.shape[-1]))
            # the CLI's `kd` term: KL for classes, MSE for a one-output (regression) model
            soft = soft_loss(logits.float(), t_logits.float(), self.kd_temperature,
                             num_labels=logits.shape[-1])  # fmt: skip
            terms["kd"] = self.kd_alpha * soft
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


def _label_mismatch(student: int, teacher: int) -> str:
    return (
        f"the student has {student} output(s) (num_labels) and the teacher {teacher}: KD needs "
        "the same labels; build both with the task's num_labels"
    )


def _core_names(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_parameters() if ".parametrizations.weight.original" in n]


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
