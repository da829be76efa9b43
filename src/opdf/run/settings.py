"""What the training loop needs of a run (:class:`TrainSettings`), and where each setting comes
from in a :class:`~opdf.run.config.RunConfig`: for a distillation run an explicit table
(:data:`RUN_SETTINGS`), for the teacher's fine-tune its ``teacher.finetune`` section.

The table names every field of :class:`TrainSettings`, and a config path that no longer exists
(a renamed config field) fails loudly instead of leaving the setting at its default."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from opdf.errors import OpdfError
from opdf.run.config import RunConfig
from opdf.run.inputs import is_image


@dataclass
class TrainSettings:
    seed: int = 42
    epochs: float = 3.0
    max_steps: int | None = None
    batch_size: int = 32
    grad_accum: int = 1
    eval_batch_size: int = 128
    max_length: int = 128
    lr: float = 5e-5
    lr_scaling: str = "none"  # "auto": per-core rates for MPO cores (opdf.lr_scaling)
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    max_grad_norm: float | None = 1.0
    eval_every: int | None = None
    checkpoint_every: int | None = None
    log_every: int = 10
    # a step whose loss or gradient is NaN/inf: "stop" the run (DivergedError) or "skip" it
    on_nonfinite: str = "stop"
    precision: str = "fp32"  # "bf16": forwards under autocast; "bf16-contraction": the MPO too
    log_to: tuple[str, ...] | list[str] = ("jsonl",)  # + "tensorboard": OUTPUT_DIR/tb
    channels_last: bool = False  # image batches in channels_last memory format


#: Each :class:`TrainSettings` field of a distillation run: the dotted path of the
#: :class:`RunConfig` field it copies, or a function of the config.
RUN_SETTINGS: dict[str, str | Callable[[RunConfig], object]] = {
    "seed": "seed",
    "epochs": "epochs",
    "max_steps": "max_steps",
    "batch_size": "batch_size",
    "grad_accum": "grad_accum",
    "eval_batch_size": "eval_batch_size",
    "max_length": "data.max_length",
    "lr": "lr",
    "lr_scaling": "lr_scaling",
    "weight_decay": "weight_decay",
    "warmup_ratio": "warmup_ratio",
    "max_grad_norm": "max_grad_norm",
    "eval_every": "eval_every",
    "checkpoint_every": "checkpoint_every",
    "log_every": "log_every",
    "on_nonfinite": "on_nonfinite",
    "precision": "precision",
    "log_to": "log_to",
    "channels_last": is_image,
}


def settings_from(cfg: RunConfig) -> TrainSettings:
    """The training settings of a distillation run, field by field from :data:`RUN_SETTINGS`."""
    fields = {f.name for f in dataclasses.fields(TrainSettings)}
    if fields != set(RUN_SETTINGS):
        unmapped, unknown = sorted(fields - set(RUN_SETTINGS)), sorted(set(RUN_SETTINGS) - fields)
        raise OpdfError(
            f"opdf.run.settings.RUN_SETTINGS is out of step with TrainSettings: fields without a "
            f"source {unmapped}, sources of no field {unknown}"
        )
    values = {}
    for name, source in RUN_SETTINGS.items():
        values[name] = source(cfg) if callable(source) else config_value(cfg, source, name)
    return TrainSettings(**values)


def config_value(cfg: RunConfig, path: str, setting: str):
    """``cfg``'s value at the dotted ``path``; a missing field is an error naming the setting."""
    value = cfg
    for part in path.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise OpdfError(
                f"TrainSettings.{setting} is read from the run config's {path!r}, which "
                f"{type(cfg).__name__} does not have: update opdf.run.settings.RUN_SETTINGS"
            ) from None
    return value


def teacher_settings(cfg: RunConfig) -> TrainSettings:
    """The teacher's fine-tune: ``teacher.finetune``, with the run's evaluation batch, logging
    interval and ``max_length``."""
    ft = cfg.teacher.finetune
    return TrainSettings(
        seed=ft.seed, epochs=ft.epochs, max_steps=ft.max_steps, batch_size=ft.batch_size,
        eval_batch_size=cfg.eval_batch_size, max_length=cfg.data.max_length, lr=ft.lr,
        weight_decay=ft.weight_decay, warmup_ratio=ft.warmup_ratio,
        max_grad_norm=ft.max_grad_norm, eval_every=ft.eval_every, log_every=cfg.log_every,
        channels_last=is_image(cfg),
    )  # fmt: skip
