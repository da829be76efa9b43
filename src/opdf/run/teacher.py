"""The task-fine-tuned teacher: trained once per (model, data, fine-tune settings) and cached
under ``<cache>/teachers/<model>-<key>/``, where later runs find it.

The cache key (:func:`teacher_key`) covers the model, the data selection, ``max_length``, the
fine-tune settings and the contents of a local model folder or data file
(:func:`fingerprint`), so that editing either retrains. A finished teacher folder holds
``opdf-finetune.json`` (its run summary, :func:`teacher_summary`) next to ``student/``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import time
from pathlib import Path

import torch

from opdf.data import BUILTIN_DATASETS
from opdf.distill.finetune import FineTune
from opdf.errors import OpdfError
from opdf.models import builtin_names, cache_dir, load_model, resolve_model_dir
from opdf.models.cache import atomic_dir
from opdf.run import checkpoint as ckpt
from opdf.run import distributed, owner
from opdf.run.config import FinetuneConfig, RunConfig
from opdf.run.distributed import SINGLE, DistEnv
from opdf.run.inputs import is_image, load_data, prepare_models, vision_model
from opdf.run.settings import teacher_settings
from opdf.run.trainer import Trainer, resolve_device

FINETUNE_MARK = "opdf-finetune.json"
FINGERPRINT_FULL_BYTES = 64 << 20  # files up to this size are hashed; larger: size + mtime


# ------------------------------------------------------------------------------- the cache


def teacher_key(cfg: RunConfig) -> str:
    """Cache key of the fine-tuned teacher: model, data selection, max_length, finetune settings,
    and the contents of a local model folder or data file, so that editing either retrains."""
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
    slug = Path(cfg.teacher.model).name.replace(" ", "_")
    return cache_dir() / "teachers" / f"{slug}-{teacher_key(cfg)}"


def teacher_summary(cfg: RunConfig) -> dict | None:
    """The cached teacher's fine-tune summary (its dev and test scores), None when not cached."""
    if cfg.teacher.finetune is None:
        return None
    mark = teacher_cache_dir(cfg) / FINETUNE_MARK
    return json.loads(mark.read_text()) if mark.is_file() else None


# ----------------------------------------------------------------------------- the fine-tune


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
    if cfg.teacher.finetune is None:
        if is_image(cfg):  # a trained vision model folder (checked by the config)
            return Path(cfg.teacher.model).expanduser()
        return resolve_model_dir(cfg.teacher.model)
    final = teacher_cache_dir(cfg)
    if _cached_everywhere(final, force, dist):
        return final / "student"
    if dist.is_main and final.exists() and (force or not (final / FINETUNE_MARK).is_file()):
        # --force, or a folder that is no finished teacher: opdf's own files go, anything else
        # stops the fine-tune before it starts (named; nothing deleted)
        owner.remove_folder(final, "finetune", what="cached teacher folder")
    train = _teacher_training(cfg, progress=progress, dist=dist, device=device)
    if dist.is_main:
        _train_into_cache(final, train)
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


def _cached_everywhere(final: Path, force: bool, dist: DistEnv) -> bool:
    """Whether every process sees the finished teacher in ``final`` (and ``force`` is off);
    some but not all of them is an error (machines that do not share the cache)."""
    cached = distributed.all_gather_object((final / FINETUNE_MARK).is_file() and not force, dist)
    if any(cached) and not all(cached):
        raise OpdfError(
            f"the fine-tuned teacher {final} is cached for some processes but not for others "
            "(machines that do not share OPDF_CACHE): run `opdf finetune CONFIG` once on every "
            "machine first, or put OPDF_CACHE on a shared file system"
        )
    return all(cached)


def _teacher_training(cfg: RunConfig, *, progress: bool | None, dist: DistEnv,
                      device: torch.device | None):  # fmt: skip
    """The teacher's model, data and settings, ready: a function that fine-tunes it into a folder
    and returns its summary."""
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
    info = {"method": "finetune", "model": cfg.teacher.model, "overparam": "none",
            "unit_modes": 0, "align": None, "seed": ft.seed, "cache_key": teacher_key(cfg),
            "finetune": dataclasses.asdict(ft), "data": dataclasses.asdict(cfg.data)}  # fmt: skip

    def train(folder: Path) -> dict:
        trainer = Trainer(
            distiller, dataset, tokenizer, teacher_settings(cfg), folder,
            device=device or resolve_device(cfg.device), run_info=info,
            progress=progress if dist.is_main else False,
            desc=f"finetune {Path(cfg.teacher.model).name}", dist=dist,
            resumable=False,  # in a temporary folder: a killed fine-tune starts over
        )  # fmt: skip
        return trainer.fit()

    return train


def _train_into_cache(final: Path, train) -> None:
    """Rank 0: fine-tune in a temporary folder that becomes ``final`` only when finished, with
    its marker (the summary) written last and every path listed as opdf's."""
    with atomic_dir(final) as tmp:
        owner.claim(tmp, "finetune")  # the marker first; then all the folder holds is opdf's
        summary = train(tmp)
        owner.record(tmp, *(p.name for p in tmp.iterdir() if p.name != owner.MARKER))
        owner.remove_owned(tmp, "checkpoints")  # the model is in student/
        ckpt.atomic_write_json(tmp / FINETUNE_MARK, summary)
        owner.record(tmp, FINETUNE_MARK)


def run_finetune(cfg: RunConfig, *, force: bool = False, progress: bool | None = None) -> Path:
    """``opdf finetune``: :func:`finetune_teacher` in its own process group under torchrun."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    env, device = distributed.setup(resolve_device(cfg.device))
    with distributed.group(env):
        distributed.on_main(lambda: prepare_models(cfg), env)
        return finetune_teacher(cfg, force=force, progress=progress, dist=env, device=device)
