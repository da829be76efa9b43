"""From a validated :class:`RunConfig` to a finished run: data, teacher (fine-tuned once and
cached), student, over-parameterization, alignment loss, method, :class:`Trainer`.

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
import functools
import json
import time
import warnings
from pathlib import Path

import torch
import yaml

from opdf.distill.finetune import FineTune  # also importable from here, as before
from opdf.errors import ConfigError, OpdfError
from opdf.run import checkpoint as ckpt
from opdf.run import distributed, owner
from opdf.run.config import (
    FinetuneConfig,
    RunConfig,
    check_log_to,
    data_kind,
    drop_neutral,
    dump_config,
    resolve_student_init,
    resolve_student_start,
    with_legacy_start,
)
from opdf.run.distributed import SINGLE, DistEnv
from opdf.run.lock import LOCK_FILE, RunLock
from opdf.run.tblog import TB_DIR, require_tensorboard
from opdf.run.trainer import Trainer, TrainSettings, resolve_device

CONFIG_FILE = "config.yaml"
ARCH_DIR = "student-architecture"
FINETUNE_MARK = "opdf-finetune.json"


# ------------------------------------------------------------------------------------- data


def load_data(cfg: RunConfig, *, teacher: bool = False):
    """The run's dataset; ``teacher=True``: the teacher's (full train unless
    ``teacher.finetune.max_train_samples``, full dev and test)."""
    from opdf.data import load_text_dataset, load_vision_dataset

    d = cfg.data
    load = load_vision_dataset if is_image(cfg) else load_text_dataset
    if teacher:
        return load(
            d.name, max_train_samples=cfg.teacher.finetune.max_train_samples, seed=d.seed,
            **d.options,
        )  # fmt: skip
    return load(
        d.name,
        max_train_samples=d.max_train_samples,
        max_eval_samples=d.max_eval_samples,
        seed=d.seed,
        **d.options,
    )


def is_image(cfg: RunConfig) -> bool:
    return data_kind(cfg) == "image"


def vision_model(name_or_path: str, dataset, *, seed: int | None = None):
    """A built-in vision architecture (fresh, ``seed``-initialized) or a saved vision model folder,
    for ``dataset``'s classes, channels and image size; train mode, channels_last."""
    from opdf.models.vision import build_vision_model, load_vision_model, read_architecture

    if Path(name_or_path).expanduser().is_dir():
        spec = read_architecture(name_or_path)
        want = (dataset.num_labels, dataset.channels, dataset.image_size)
        have = (spec["num_classes"], spec["in_channels"], spec["image_size"])
        if have != want:
            raise OpdfError(
                f"{name_or_path} is a model for {have[0]} classes, {have[1]} channels, "
                f"{have[2]}px images; {dataset.name} has {want[0]}, {want[1]}, {want[2]}px"
            )
        model = load_vision_model(name_or_path)
    else:
        model = build_vision_model(name_or_path, dataset.num_labels, dataset.channels,
                                   dataset.image_size, seed=seed)  # fmt: skip
    return model.to(memory_format=torch.channels_last).train()


def _subsample_note(cfg: RunConfig, dataset) -> str | None:
    d = cfg.data
    if d.max_train_samples is None and d.max_eval_samples is None:
        return None
    return f"subsampled: sizes {dataset.sizes()} (max_train_samples={d.max_train_samples}, " \
        f"max_eval_samples={d.max_eval_samples})"  # fmt: skip


# ---------------------------------------------------------------------------------- teacher


def teacher_key(cfg: RunConfig) -> str:
    """Cache key of the fine-tuned teacher: model, data selection, max_length, finetune settings,
    and the contents of a local model folder or data file, so that editing either retrains."""
    import hashlib

    from opdf.data import BUILTIN_DATASETS
    from opdf.models import builtin_names

    model = cfg.teacher.model
    if Path(model).exists():
        model = str(Path(model).resolve())
    d = cfg.data
    spec = {
        "model": model,
        "data": {"name": d.name, "options": d.options, "max_length": d.max_length, "seed": d.seed},
        "finetune": dataclasses.asdict(cfg.teacher.finetune),
    }
    # local files only (built-in names win in the loaders, as here); absent keys keep the keys of
    # teachers cached before fingerprints existed
    local_model = Path(cfg.teacher.model).expanduser()
    if cfg.teacher.model not in builtin_names() and local_model.exists():
        spec["model_files"] = fingerprint(local_model)
    local_data = Path(d.name).expanduser()
    if d.name not in BUILTIN_DATASETS and local_data.exists():
        spec["data_files"] = fingerprint(local_data)
    image_folder = _image_data_folder(cfg)
    if image_folder is not None:
        spec["data_files"] = fingerprint(image_folder)
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _image_data_folder(cfg: RunConfig) -> Path | None:
    """The folder an image dataset is read from when the user names one (``data.options.path`` or
    ``cifar10:<folder>``): its files are part of the teacher's cache key, like a text data file."""
    if not is_image(cfg):
        return None
    _, _, inline = cfg.data.name.partition(":")
    folder = inline or cfg.data.options.get("path")
    if not folder or not Path(folder).expanduser().exists():
        return None
    return Path(folder).expanduser()


FINGERPRINT_FULL_BYTES = 64 << 20  # files up to this size are hashed; larger: size + mtime


def fingerprint(path: Path) -> str:
    """Digest of a file or of every file under a folder: content for files up to 64 MiB (data
    files, configs, tokenizers), size and modification time for larger ones (weights), so a
    changed file changes the digest without reading gigabytes on every run. Hidden files are
    skipped; a digest is reused while every file keeps its size and modification time (one CLI
    call asks for the teacher's cache key several times)."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    stats = []
    for f in files:
        rel = f.relative_to(path) if f != path else Path(f.name)
        if any(part.startswith(".") for part in rel.parts):
            continue  # .git, editor swap files: not part of a model or a data set
        st = f.stat()
        stats.append((str(f), str(rel), st.st_size, st.st_mtime_ns))
    # a file written in the last seconds may be written again within the file system's timestamp
    # granularity, unseen by its mtime ("racily clean", as git calls it): hash it afresh
    fresh = any(time.time_ns() - mtime < 2_000_000_000 for *_, mtime in stats)
    return _digest.__wrapped__(tuple(stats)) if fresh else _digest(tuple(stats))


@functools.lru_cache(maxsize=64)
def _digest(stats: tuple[tuple[str, str, int, int], ...]) -> str:
    import hashlib

    digest = hashlib.sha256()
    for name, rel, size, mtime_ns in stats:
        digest.update(f"{rel}:{size}:".encode())
        if size <= FINGERPRINT_FULL_BYTES:
            with open(name, "rb") as fh:
                for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):
                    digest.update(chunk)
        else:
            digest.update(str(mtime_ns).encode())
    return digest.hexdigest()


def teacher_cache_dir(cfg: RunConfig) -> Path:
    from opdf.models import cache_dir

    slug = Path(cfg.teacher.model).name.replace(" ", "_")
    return cache_dir() / "teachers" / f"{slug}-{teacher_key(cfg)}"


def finetune_teacher(
    cfg: RunConfig,
    *,
    force: bool = False,
    progress: bool | None = None,
    dist: DistEnv = SINGLE,
    device: torch.device | None = None,
) -> Path:
    """The task-fine-tuned teacher folder: from the cache when present, else trained now and
    cached (atomically) under ``<cache>/teachers/<model>-<hash>/``. ``teacher.finetune: null``
    returns the model folder as is. Under DDP all ranks train it together and rank 0 writes
    the cache, which every rank must then see (one machine, or a shared ``OPDF_CACHE``)."""
    from opdf.models import load_model, resolve_model_dir
    from opdf.models.cache import atomic_dir

    if cfg.teacher.finetune is None:
        if is_image(cfg):  # a trained vision model folder (checked by the config)
            return Path(cfg.teacher.model).expanduser()
        return resolve_model_dir(cfg.teacher.model)
    final = teacher_cache_dir(cfg)
    cached = distributed.all_gather_object((final / FINETUNE_MARK).is_file() and not force, dist)
    if all(cached):
        return final / "student"
    if any(cached):
        raise OpdfError(
            f"the fine-tuned teacher {final} is cached for some processes but not for others "
            "(machines that do not share OPDF_CACHE): run `opdf finetune CONFIG` once on every "
            "machine first, or put OPDF_CACHE on a shared file system"
        )
    if dist.is_main and final.exists() and (force or not (final / FINETUNE_MARK).is_file()):
        # --force, or a folder that is no finished teacher: opdf's own files go, anything else
        # stops the fine-tune before it starts (named; nothing deleted)
        owner.remove_folder(final, "finetune", what="cached teacher folder")
    ft: FinetuneConfig = cfg.teacher.finetune
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    dataset = load_data(cfg, teacher=True)
    ckpt.seed_everything(ft.seed)
    if is_image(cfg):
        model, tokenizer = vision_model(cfg.teacher.model, dataset, seed=ft.seed), None
    else:
        model, tokenizer = load_model(cfg.teacher.model, dataset.num_labels, seed=ft.seed)
    distiller = FineTune(model, None, num_labels=dataset.num_labels)
    settings = TrainSettings(
        seed=ft.seed, epochs=ft.epochs, max_steps=ft.max_steps, batch_size=ft.batch_size,
        eval_batch_size=cfg.eval_batch_size, max_length=cfg.data.max_length, lr=ft.lr,
        weight_decay=ft.weight_decay, warmup_ratio=ft.warmup_ratio,
        max_grad_norm=ft.max_grad_norm, eval_every=ft.eval_every, log_every=cfg.log_every,
        channels_last=is_image(cfg),
    )  # fmt: skip
    info = {"method": "finetune", "model": cfg.teacher.model, "overparam": "none",
            "unit_modes": 0, "align": None, "seed": ft.seed, "cache_key": teacher_key(cfg),
            "finetune": dataclasses.asdict(ft), "data": dataclasses.asdict(cfg.data)}  # fmt: skip

    def train(folder: Path) -> dict:
        trainer = Trainer(
            distiller, dataset, tokenizer, settings, folder,
            device=device or resolve_device(cfg.device), run_info=info,
            progress=progress if dist.is_main else False,
            desc=f"finetune {Path(cfg.teacher.model).name}", dist=dist,
            resumable=False,  # in a temporary folder: a killed fine-tune starts over
        )  # fmt: skip
        return trainer.fit()

    if dist.is_main:
        with atomic_dir(final) as tmp:
            owner.claim(tmp, "finetune")  # the marker first; then all the folder holds is opdf's
            summary = train(tmp)
            owner.record(tmp, *(p.name for p in tmp.iterdir() if p.name != owner.MARKER))
            owner.remove_owned(tmp, "checkpoints")  # the model is in student/
            ckpt.atomic_write_json(tmp / FINETUNE_MARK, summary)
            owner.record(tmp, FINETUNE_MARK)
    else:
        train(final)  # writes nothing: rank 0 does
    distributed.barrier(dist)
    if not (final / FINETUNE_MARK).is_file():
        raise OpdfError(
            f"rank {dist.rank} does not see the teacher rank 0 cached in {final}: on several "
            "machines put OPDF_CACHE on a shared file system, or run `opdf finetune CONFIG` on "
            "every machine first"
        )
    return final / "student"


def run_finetune(cfg: RunConfig, *, force: bool = False, progress: bool | None = None) -> Path:
    """``opdf finetune``: :func:`finetune_teacher` in its own process group under torchrun."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    env, device = distributed.setup(resolve_device(cfg.device))
    with distributed.group(env):
        distributed.on_main(lambda: prepare_models(cfg), env)
        return finetune_teacher(cfg, force=force, progress=progress, dist=env, device=device)


def prepare_models(cfg: RunConfig) -> None:
    """Prepare the config's built-in models into the cache. Under torchrun rank 0 does this
    before the others look: transformers' ``save_pretrained`` writes nothing on other ranks
    once a process group exists, so concurrent preparation would leave empty folders."""
    from opdf.models import builtin_names, prepare_builtin

    for model in (cfg.teacher.model, cfg.student.model):
        if model in builtin_names():
            prepare_builtin(model)


def teacher_summary(cfg: RunConfig) -> dict | None:
    if cfg.teacher.finetune is None:
        return None
    mark = teacher_cache_dir(cfg) / FINETUNE_MARK
    return json.loads(mark.read_text()) if mark.is_file() else None


# ---------------------------------------------------------------------------------- the run


def _entries(out: Path) -> set[str]:
    """What ``out`` holds, besides the lock of the run now starting and opdf's ownership marker."""
    skip = {LOCK_FILE, owner.MARKER}
    return {p.name for p in out.iterdir()} - skip if out.is_dir() else set()


def _with_defaults(old: dict, defaults: dict) -> dict:
    """A saved config read with today's defaults for keys it does not have (keys added to opdf
    after the run started), so that adding a key never blocks a --resume."""
    out = dict(old)
    for k, v in defaults.items():
        if k not in out:
            out[k] = v
        elif isinstance(v, dict) and isinstance(out[k], dict):
            out[k] = _with_defaults(out[k], v)
    return out


def _check_resume(out: Path, cfg: RunConfig) -> None:
    saved = out / CONFIG_FILE
    if saved.is_file():
        new = drop_neutral(cfg.to_dict())
        options = type(cfg.method_options)()
        defaults = RunConfig(method=cfg.method, method_options=options).to_dict()
        raw = yaml.safe_load(saved.read_text()) or {}
        if not isinstance(raw, dict):
            raise OpdfError(f"--resume: {saved} is not an opdf run config (not a mapping)")
        old = drop_neutral(with_legacy_start(_with_defaults(raw, defaults)))
        ignored = ("output_dir", "log_to")  # where the run writes and logs changes no result
        diff = sorted(k for k in set(old) | set(new)
                      if k not in ignored and old.get(k) != new.get(k))  # fmt: skip
        if diff:
            raise ConfigError(
                f"--resume: the config differs from the one in {saved} in {', '.join(diff)}; "
                "resume with the same config, or start a new output_dir"
            )
    if (out / "summary.json").is_file():
        raise OpdfError(
            f"{out} holds a finished run (summary.json); nothing to resume. Use --overwrite to "
            "run it again, or another output_dir"
        )


def prepare_output_dir(out: Path, *, resume: bool, overwrite: bool, cfg: RunConfig) -> bool:
    """Create ``out`` with opdf's ownership marker (:mod:`opdf.run.owner`) before anything else;
    refuse to reuse a non-empty one unless resuming (same config) or told to overwrite, and then
    delete only what opdf wrote there (a folder holding anything else is refused, naming it).
    Returns True when a checkpoint to resume from exists. The caller holds the folder's
    :class:`~opdf.run.lock.RunLock`."""
    if out.exists() and not out.is_dir():
        raise OpdfError(
            f"output_dir {str(out)!r} is a file, not a folder; set output_dir=... to a folder "
            "(new or an opdf run's)"
        )
    ckpts = out / "checkpoints"
    if resume:
        if not _entries(out) or (owner.read(out) is None and owner.legacy_paths(out) is None):
            raise OpdfError(f"--resume: {out} has no run to resume (no checkpoints/{ckpt.LAST})")
        owner.claim(out, "distill")
        owner.remove_temporaries(out)  # what a kill during a write left
        _check_resume(out, cfg)
        return ckpt.resumable(ckpts)
    owner.claim(out, "distill")  # a folder that is not opdf's is refused here, naming its files
    owner.remove_temporaries(out)
    if _entries(out):
        # a run that failed while starting left only opdf's start-up files (no checkpoint,
        # summary or student): reused without --overwrite
        holds_results = ckpt.resumable(ckpts) or any(
            p.exists() for p in (out / "summary.json", out / "student")
        )
        if holds_results and not overwrite:
            raise OpdfError(
                f"output_dir {str(out)!r} already exists and is not empty; pass --resume to "
                f"continue that run, --overwrite to replace it, or set output_dir=... to a new "
                "folder"
            )
        owner.remove_owned(out)  # refuses, deleting nothing, when anything else is there
    owner.renew(out, "distill")
    return False


def student_init_label(cfg: RunConfig) -> str | None:
    """How the student started, for the summary: a preset name, ``explicit`` (a list of teacher
    layers), ``bottom`` (the default), or None for a separate model (``student.model``)."""
    if cfg.student.model is not None or is_image(cfg):
        return None
    if isinstance(cfg.student.init, str):
        return cfg.student.init
    return "explicit" if cfg.student.layers is not None else "bottom"


def build_text_student(cfg: RunConfig, method, teacher, num_labels: int):
    """The text student from ``student.source`` with ``student.head`` (both resolved): the
    fine-tuned ``teacher``'s layers, the same layers of ``teacher.model`` before its fine-tune,
    or ``student.model``. A new head is initialised from ``cfg.seed``; :func:`load_model` already
    gives one, seeded alike, where the loaded folder holds none."""
    from opdf.models import load_model
    from opdf.models.hf import has_task_head
    from opdf.models.student import new_head

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


def build(cfg: RunConfig, *, progress: bool | None = None, dist: DistEnv = SINGLE,
          device: torch.device | None = None):  # fmt: skip
    """Everything a run needs: ``(distiller, dataset, tokenizer, align, info)``."""
    from opdf import AlignmentLoss, overparameterize
    from opdf.distill import get_method
    from opdf.models import load_model, set_dropout

    method = get_method(cfg.method)
    check_log_to(cfg.log_to)
    resolve_student_init(cfg)  # idempotent: a RunConfig made in code gets its layers too
    resolve_student_start(cfg)  # a RunConfig made in code: its null source/head, checked
    if cfg.student.model is not None and not getattr(method, "accepts_student_model", True):
        # checked before the (minutes-long) teacher fine-tune
        raise ConfigError(
            f"{cfg.method} builds its student from the teacher's layers: use student.layers, "
            "not student.model"
        )
    dataset = load_data(cfg)
    method.check_task(dataset.num_labels, cfg)  # before the teacher fine-tune, too
    teacher_dir = finetune_teacher(cfg, progress=progress, dist=dist, device=device)
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
    if cfg.overparam != "none":
        overparameterize(student, scheme=cfg.overparam, unit_modes=cfg.unit_modes,
                         train_only_central=cfg.train_cores == "central",
                         freeze_central=cfg.train_cores == "auxiliary")  # fmt: skip
    # a trainable teacher (LGTM) under the alignment loss is over-parameterized like the student
    # (after the student copied its plain layers), so that the loss aligns its live cores
    teacher_overparam = method.teacher_overparameterized(cfg)
    if teacher_overparam:
        overparameterize(teacher, scheme=cfg.overparam, unit_modes=cfg.unit_modes)
    distiller = method(student, teacher, cfg.method_options, num_labels=dataset.num_labels)
    if cfg.teacher.cache_outputs and distiller.teacher is not None:
        if method.teacher_frozen:
            from opdf.distill.teacher_cache import TeacherCache

            distiller.teacher_cache = TeacherCache(distiller.teacher)
        else:  # a suite may set it for all its methods; this one has nothing to cache
            warnings.warn(
                f"teacher.cache_outputs is ignored: {cfg.method} trains its teacher, whose "
                "outputs change every step",
                stacklevel=2,
            )
    align = None
    if cfg.align.weight > 0:
        # a frozen teacher stays plain (fast forwards); its paired weights are decomposed once,
        # with the student's modes, into frozen buffers inside the loss
        align = AlignmentLoss(
            student, distiller.teacher, layer_map=cfg.align.layer_map, cores=cfg.align.cores,
            weight=cfg.align.weight, allow_partial=cfg.align.allow_partial,
            normalize=cfg.align.normalize,
        )  # fmt: skip
    info = {
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
        "subsample": _subsample_note(cfg, dataset),
    }
    return distiller, dataset, tokenizer, align, info


def save_architecture(student, tokenizer, folder: Path, dataset=None) -> None:
    """The student's transformers config and tokenizer (for a vision student its
    ``architecture.json``), so that ``opdf merge`` can rebuild the model from a checkpoint without
    the teacher or the data."""
    from opdf.models.quiet import quiet_transformers

    folder.mkdir(parents=True, exist_ok=True)
    if getattr(student, "vision_spec", None) is not None:
        from opdf.models.vision import save_vision_architecture

        extra = {} if dataset is None else {"input": dataset.input_spec(),
                                             "label_names": dataset.label_names}  # fmt: skip
        save_vision_architecture(student, folder, **extra)
        return
    with quiet_transformers():
        student.config.save_pretrained(str(folder))
        tokenizer.save_pretrained(str(folder))


def merge_checkpoint(run_dir: str | Path, out_dir: str | Path | None = None, *,
                     which: str = "best", overwrite: bool = False) -> Path:  # fmt: skip
    """A run folder's checkpoint (``best`` or ``last``) -> a merged, plain model (default:
    ``RUN_DIR/merged-<which>``): a transformers model saved with ``save_pretrained``, or for an
    image run ``model.safetensors`` + ``architecture.json`` (:func:`opdf.models.load_vision_model`).
    """
    from opdf import merge, overparameterize
    from opdf.models.hf import SAFE
    from opdf.models.quiet import quiet_transformers
    from opdf.models.vision import ARCHITECTURE_FILE

    run_dir = Path(run_dir)
    if run_dir.name == "checkpoints":
        run_dir = run_dir.parent
    arch = run_dir / "checkpoints" / ARCH_DIR
    cfg_file = run_dir / CONFIG_FILE
    files = {"best": ckpt.BEST, "last": ckpt.LAST}
    if which not in files:
        raise OpdfError(f"which={which!r} is not valid; valid choices: best, last")
    state_file = run_dir / "checkpoints" / files[which]
    if which == "last" and not state_file.exists():
        state_file = state_file.with_name(ckpt.PREVIOUS)  # killed while rotating the two
    image = (arch / ARCHITECTURE_FILE).is_file()
    for need in (cfg_file, arch / (ARCHITECTURE_FILE if image else "config.json"), state_file):
        if not need.exists():
            if (run_dir / "summary.json").is_file() and (run_dir / "student").is_dir():
                raise OpdfError(
                    f"{run_dir} is a finished run whose checkpoints were removed ({need} is "
                    f"missing; opdf bench keeps none unless keep_checkpoints: true): its merged "
                    f"student is already in {run_dir / 'student'}; load that folder instead"
                )
            raise OpdfError(
                f"{run_dir} is not an opdf run folder with a {which} checkpoint: {need} is missing"
            )
    raw = yaml.safe_load(cfg_file.read_text()) or {}
    scheme, unit_modes = raw.get("overparam", "none"), int(raw.get("unit_modes", 0))
    out = Path(out_dir) if out_dir is not None else run_dir / f"merged-{which}"
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise OpdfError(f"{out} exists and is not empty; pass --overwrite or another --output")
    if which == "last":  # the newest intact one: last.pt, else previous.pt (with a warning)
        state = ckpt.read_latest(state_file.parent)[1].modules["student"]
    else:
        state = ckpt.read_modules(state_file)["student"]
    if image:
        return _merge_vision(arch, state, scheme, unit_modes, out)
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    with quiet_transformers():
        config = AutoConfig.from_pretrained(str(arch), **SAFE)
        model = AutoModelForSequenceClassification.from_config(config)
        tokenizer = AutoTokenizer.from_pretrained(str(arch), **SAFE)
    if scheme != "none":
        overparameterize(model, scheme=scheme, unit_modes=unit_modes)
    model.load_state_dict(state)
    merge(model)
    out.mkdir(parents=True, exist_ok=True)
    with quiet_transformers():
        model.save_pretrained(str(out))
        tokenizer.save_pretrained(str(out))
    _own_merged(run_dir, out)
    return out


def _own_merged(run_dir: Path, out: Path) -> None:
    """A merged model written inside the run folder is opdf's, like the rest of the run."""
    if out.resolve().is_relative_to(run_dir.resolve()):
        owner.record(run_dir, out.resolve().relative_to(run_dir.resolve()))


def _merge_vision(arch: Path, state: dict, scheme: str, unit_modes: int, out: Path) -> Path:
    from opdf import merge, overparameterize
    from opdf.models.vision import load_vision_model, save_vision_model

    model = load_vision_model(arch, weights=False)  # its architecture.json, input spec included
    if scheme != "none":
        overparameterize(model, scheme=scheme, unit_modes=unit_modes)
    model.load_state_dict(state)
    merge(model)
    save_vision_model(model, out)
    _own_merged(arch.parents[1], out)
    return out


def settings_from(cfg: RunConfig) -> TrainSettings:
    names = {f.name for f in dataclasses.fields(TrainSettings)}
    values = {k: getattr(cfg, k) for k in names if hasattr(cfg, k)}
    values["max_length"] = cfg.data.max_length
    values["channels_last"] = is_image(cfg)
    return TrainSettings(**values)


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
    def prepare() -> bool:
        has_ckpt = prepare_output_dir(out, resume=resume, overwrite=overwrite, cfg=cfg)
        if not has_ckpt:
            # a run killed before its first checkpoint restarts from scratch
            for stale in ("metrics.jsonl", "summary.json"):
                if (out / stale).exists():
                    owner.remove_owned(out, stale)
            if (out / TB_DIR).exists():
                owner.remove_owned(out, TB_DIR)
        ckpt.atomic_write_text(out / CONFIG_FILE, dump_config(cfg))
        owner.record(out, CONFIG_FILE, "metrics.jsonl")  # the log is appended to from now on
        return has_ckpt

    has_ckpt = distributed.on_main(prepare, env)
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
