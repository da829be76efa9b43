"""From a validated :class:`RunConfig` to a finished run: data, teacher (fine-tuned once and
cached), student, over-parameterization, alignment loss, method, :class:`Trainer`.

This module holds :func:`build` (the run's parts, in named steps) and :func:`run_distill`; each
shared job has its own module, whose public names are importable from here too: the run's inputs
(:mod:`opdf.run.inputs`), the teacher's fine-tune and cache (:mod:`opdf.run.teacher`), the output
folder's policy (:mod:`opdf.run.output`), the training settings (:mod:`opdf.run.settings`) and the
merged export (:mod:`opdf.run.export`).

Output folder of a run::

    OUTPUT_DIR/config.yaml      the resolved config (every default written out)
    OUTPUT_DIR/metrics.jsonl    one JSON record per log / evaluation (log_to: jsonl)
    OUTPUT_DIR/tb/              the same numbers as TensorBoard scalars (log_to: tensorboard)
    OUTPUT_DIR/checkpoints/     last.pt (periodic, atomic, for --resume), previous.pt (the one
                                before, --resume's fallback), best.pt (best on dev),
                                manifest.json (their checksums; see opdf.run.checkpoint)
    OUTPUT_DIR/.opdf.lock       held while the run lives (opdf.run.lock)
    OUTPUT_DIR/.opdf-owner.json written first: the run's identity and every path opdf wrote
                                here, the only ones it ever deletes (opdf.run.owner)
    OUTPUT_DIR/student/         the merged student (save_pretrained) and its tokenizer; for
                                image data model.safetensors + architecture.json
                                (opdf.models.load_vision_model)
    OUTPUT_DIR/summary.json     what `opdf report` reads

Under ``torchrun`` (:mod:`opdf.run.distributed`) every process builds the same run; rank 0 alone
prepares and writes the output folder, and the teacher is fine-tuned (when not cached) by all of
them together.

Text runs use transformers models and their tokenizer; image runs (``data.name`` an image dataset,
:mod:`opdf.data.vision`) use the plain-torch classifiers of :mod:`opdf.models.vision`, trained in
channels_last memory format, and no tokenizer (``None`` wherever a tokenizer is passed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import platform
import warnings
from importlib import metadata
from pathlib import Path

import torch

from opdf.align import AlignmentLoss
from opdf.distill import get_method
from opdf.distill.finetune import FineTune
from opdf.distill.teacher_cache import TeacherCache, digest_tensors
from opdf.errors import ConfigError
from opdf.models import load_model, set_dropout
from opdf.models.hf import has_task_head
from opdf.models.student import new_head
from opdf.overparam import overparameterize
from opdf.run import checkpoint as ckpt
from opdf.run import distributed, owner
from opdf.run.config import RunConfig, check_log_to, resolve_student_init, resolve_student_start
from opdf.run.distributed import SINGLE, DistEnv
from opdf.run.export import ARCH_DIR, merge_checkpoint, save_architecture
from opdf.run.inputs import is_image, load_data, prepare_models, subsample_note, vision_model
from opdf.run.lock import RunLock
from opdf.run.output import CONFIG_FILE, prepare_output_dir, prepare_run_folder
from opdf.run.settings import TrainSettings, settings_from
from opdf.run.tblog import require_tensorboard
from opdf.run.teacher import (
    FINETUNE_MARK,
    finetune_teacher,
    fingerprint,
    run_finetune,
    teacher_cache_dir,
    teacher_key,
    teacher_summary,
)
from opdf.run.trainer import Trainer, resolve_device

__all__ = [  # the names importable from here: build and run_distill, and the jobs it delegates
    "ARCH_DIR",
    "CONFIG_FILE",
    "FINETUNE_MARK",
    "FineTune",
    "TrainSettings",
    "Trainer",
    "build",
    "build_text_student",
    "fingerprint",
    "finetune_teacher",
    "is_image",
    "load_data",
    "merge_checkpoint",
    "prepare_models",
    "prepare_output_dir",
    "resolve_device",
    "run_distill",
    "run_finetune",
    "save_architecture",
    "settings_from",
    "student_init_label",
    "teacher_cache_dir",
    "teacher_key",
    "teacher_summary",
    "vision_model",
]


def build(cfg: RunConfig, *, progress: bool | None = None, dist: DistEnv = SINGLE,
          device: torch.device | None = None):  # fmt: skip
    """Everything a run needs: ``(distiller, dataset, tokenizer, align, info)``. What can fail
    on the config alone fails before the (minutes-long) teacher fine-tune."""
    method = get_method(cfg.method)
    _check_config(cfg, method)
    dataset = load_data(cfg)
    method.check_task(dataset.num_labels, cfg)  # before the teacher fine-tune, too
    teacher_dir = finetune_teacher(cfg, progress=progress, dist=dist, device=device)
    teacher, student, tokenizer = _load_models(cfg, method, teacher_dir, dataset)
    teacher_digest = _teacher_digest(cfg, teacher, teacher_dir, dataset)
    teacher_overparam = _overparameterize(cfg, method, student, teacher)
    distiller = method(student, teacher, cfg.method_options, num_labels=dataset.num_labels)
    _attach_teacher_cache(cfg, method, distiller)
    align = _alignment_loss(cfg, student, distiller.teacher)
    info = run_info(cfg, method, student, align, dataset, teacher_dir=teacher_dir,
                    teacher_overparam=teacher_overparam, teacher_digest=teacher_digest)  # fmt: skip
    return distiller, dataset, tokenizer, align, info


def _teacher_digest(cfg: RunConfig, teacher, teacher_dir: Path, dataset) -> str | None:
    """The teacher's identity by content (16 hex digits of the sha256 of its weights): a suite's
    cells resumed on another machine re-fine-tune it, and a report says when they did not all
    get the same weights. None when the weights are not all the teacher folder's: a text
    teacher without a task head of this task gets a new head seeded by each run."""
    if is_image(cfg):
        whole = Path(teacher_dir).is_dir()
    else:
        whole = has_task_head(teacher_dir, dataset.num_labels)
    return digest_tensors(teacher)[:16] if whole else None


def _check_config(cfg: RunConfig, method) -> None:
    """The config's log targets and student start, resolved and checked for ``method``."""
    check_log_to(cfg.log_to)
    resolve_student_init(cfg)  # idempotent: a RunConfig made in code gets its layers too
    resolve_student_start(cfg)  # a RunConfig made in code: its null source/head, checked
    if cfg.student.model is not None and not getattr(method, "accepts_student_model", True):
        # checked before the (minutes-long) teacher fine-tune
        raise ConfigError(
            f"{cfg.method} builds its student from the teacher's layers: use student.layers, "
            "not student.model"
        )


def _load_models(cfg: RunConfig, method, teacher_dir: Path, dataset):
    """``(teacher, student, tokenizer)``: the fine-tuned teacher and the student (seeded from
    ``cfg.seed``, with ``student.dropout``, in train mode); no tokenizer for image data."""
    if is_image(cfg):
        teacher, tokenizer = vision_model(str(teacher_dir), dataset), None
        ckpt.seed_everything(cfg.seed)
        student = vision_model(cfg.student.model, dataset, seed=cfg.seed)
    else:
        teacher, tokenizer = load_model(teacher_dir, dataset.num_labels, seed=cfg.seed)
        ckpt.seed_everything(cfg.seed)
        student = build_text_student(cfg, method, teacher, dataset.num_labels)
    if cfg.student.dropout is not None:
        set_dropout(student, cfg.student.dropout)
    student.train()
    return teacher, student, tokenizer


def _overparameterize(cfg: RunConfig, method, student, teacher) -> bool:
    """The student's chosen weights as cores (``overparam``); returns whether the teacher's are
    too: a trainable teacher (LGTM) under the alignment loss is over-parameterized like the
    student (after the student copied its plain layers), so that the loss aligns its live cores."""
    if cfg.overparam != "none":
        overparameterize(student, scheme=cfg.overparam, unit_modes=cfg.unit_modes,
                         train_only_central=cfg.train_cores == "central",
                         freeze_central=cfg.train_cores == "auxiliary")  # fmt: skip
    teacher_overparam = method.teacher_overparameterized(cfg)
    if teacher_overparam:
        overparameterize(teacher, scheme=cfg.overparam, unit_modes=cfg.unit_modes)
    return teacher_overparam


def _attach_teacher_cache(cfg: RunConfig, method, distiller) -> None:
    """``teacher.cache_outputs``: a frozen teacher's outputs, computed once per example."""
    if not cfg.teacher.cache_outputs or distiller.teacher is None:
        return
    if method.teacher_frozen:
        distiller.teacher_cache = TeacherCache(distiller.teacher)
    else:  # a suite may set it for all its methods; this one has nothing to cache
        warnings.warn(
            f"teacher.cache_outputs is ignored: {cfg.method} trains its teacher, whose "
            "outputs change every step",
            stacklevel=3,
        )


def _alignment_loss(cfg: RunConfig, student, teacher) -> AlignmentLoss | None:
    """The alignment loss when ``align.weight`` is on. A frozen teacher stays plain (fast
    forwards); its paired weights are decomposed once, with the student's modes, into frozen
    buffers inside the loss."""
    if cfg.align.weight <= 0:
        return None
    return AlignmentLoss(
        student, teacher, layer_map=cfg.align.layer_map, cores=cfg.align.cores,
        weight=cfg.align.weight, allow_partial=cfg.align.allow_partial,
        normalize=cfg.align.normalize,
    )  # fmt: skip


def run_info(cfg: RunConfig, method, student, align, dataset, *, teacher_dir: Path,
             teacher_overparam: bool, teacher_digest: str | None = None) -> dict:  # fmt: skip
    """What identifies the run in its ``summary.json`` (with the Trainer's numbers added)."""
    return {
        "method": cfg.method,
        "overparam": cfg.overparam,
        "unit_modes": cfg.unit_modes if cfg.overparam == "mpo" else 0,
        "train_cores": cfg.train_cores,
        "lr_scaling": cfg.lr_scaling,
        "align": dataclasses.asdict(cfg.align) if align is not None else None,
        "align_pairs": len(align.pairs) if align is not None else 0,
        "align_skipped": len(align.skipped) if align is not None else 0,
        "seed": cfg.seed,
        "data": cfg.data.name,
        "teacher": str(teacher_dir),
        "teacher_test": (teacher_summary(cfg) or {}).get("test"),
        "teacher_digest": teacher_digest,  # sha256 of its weights as loaded, 16 hex digits
        "teacher_trains": not method.teacher_frozen,
        "teacher_overparam": teacher_overparam,
        "student_model": cfg.student.model,
        "student_layers": getattr(getattr(student, "config", None), "opdf_teacher_layers", None),
        "student_init": student_init_label(cfg),
        "student_source": cfg.student.source,
        "student_head": cfg.student.head,
        "align_layer_map": {str(k): v for k, v in align.layer_map.items()} if align else None,
        "method_options": dataclasses.asdict(cfg.method_options),
        "config_hash": cfg.hash(),
        "subsample": subsample_note(cfg, dataset),
        "versions": versions(),
    }


def versions() -> dict[str, str | None]:
    """The software a run's numbers depend on (a teacher fine-tuned under another torch or
    transformers need not come out bitwise the same). Read from the installed metadata, so
    that a vision run does not import transformers to say which one is installed."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("opdf", "torch", "transformers"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def build_text_student(cfg: RunConfig, method, teacher, num_labels: int):
    """The text student from ``student.source`` with ``student.head`` (both resolved): the
    fine-tuned ``teacher``'s layers, the same layers of ``teacher.model`` before its fine-tune,
    or ``student.model``. A new head is initialised from ``cfg.seed``; :func:`load_model` already
    gives one, seeded alike, where the loaded folder holds none."""
    s = cfg.student
    if s.source == "finetuned-teacher":
        student = method.build_student(teacher, s.layers)
        if s.head == "new":
            new_head(student, cfg.seed)
        return student
    name = s.model if s.source == "model" else cfg.teacher.model
    loaded_head = has_task_head(name, num_labels)
    if s.head == "copy" and not loaded_head:
        raise ConfigError(
            f"student.head: copy, but student.model {name!r} holds no classification head for "
            f"{num_labels} labels: use student.head: new"
        )
    model, _ = load_model(name, num_labels, seed=cfg.seed)
    if s.head == "new" and loaded_head:
        new_head(model, cfg.seed)
    if s.source == "model":
        return model
    student = method.build_student(model, s.layers)  # the pretrained teacher, cut
    del model
    return student


def student_init_label(cfg: RunConfig) -> str | None:
    """How the student started, for the summary: a preset name, ``explicit`` (a list of teacher
    layers), ``bottom`` (the default), or None for a separate model (``student.model``)."""
    if cfg.student.model is not None or is_image(cfg):
        return None
    if isinstance(cfg.student.init, str):
        return cfg.student.init
    return "explicit" if cfg.student.layers is not None else "bottom"


def run_distill(
    cfg: RunConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool | None = None,
    stop_after_step: int | None = None,
) -> dict | None:
    """Run one config end to end; returns the summary (None if stopped by ``stop_after_step``).
    Under torchrun each process calls this; they form one data-parallel run."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if "tensorboard" in cfg.log_to:
        require_tensorboard()  # before a teacher's fine-tune, not after it
    env, device = distributed.setup(resolve_device(cfg.device))
    with distributed.group(env):
        return _run_distill(cfg, env, device, resume=resume, overwrite=overwrite,
                            progress=progress, stop_after_step=stop_after_step)  # fmt: skip


def _run_distill(cfg: RunConfig, env: DistEnv, device: torch.device, *, resume: bool,
                 overwrite: bool, progress: bool | None, stop_after_step: int | None):  # fmt: skip
    out = Path(cfg.output_dir)
    progress = progress if env.is_main else False
    with contextlib.ExitStack() as stack:

        def lock() -> None:
            # one live run per folder: a second one (--overwrite and --resume too) refuses while
            # this one lives; a lock left by a killed run blocks nothing. Rank 0 holds it.
            stack.enter_context(RunLock(out))

        distributed.on_main(lock, env)
        return _run_locked(cfg, out, env, device, resume=resume, overwrite=overwrite,
                           progress=progress, stop_after_step=stop_after_step)  # fmt: skip


def _run_locked(cfg: RunConfig, out: Path, env: DistEnv, device: torch.device, *, resume: bool,
                overwrite: bool, progress: bool | None,
                stop_after_step: int | None) -> dict | None:  # fmt: skip
    has_ckpt = distributed.on_main(
        lambda: prepare_run_folder(out, cfg, resume=resume, overwrite=overwrite), env
    )
    distributed.on_main(lambda: prepare_models(cfg), env)
    distiller, dataset, tokenizer, align, info = build(cfg, progress=progress, dist=env,
                                                       device=device)  # fmt: skip
    if env.is_main:
        save_architecture(distiller.export_student(), tokenizer, out / "checkpoints" / ARCH_DIR,
                          dataset)  # fmt: skip
        owner.record(out, f"checkpoints/{ARCH_DIR}")
    trainer = Trainer(
        distiller, dataset, tokenizer, settings_from(cfg), out, align=align,
        device=device, run_info=info, progress=progress, dist=env,
        desc=f"{cfg.method}/{cfg.overparam}{'+align' if align is not None else ''}", config=cfg,
    )  # fmt: skip
    if align is not None:
        align.to(trainer.device)
    return trainer.fit(resume=has_ckpt, stop_after_step=stop_after_step)
