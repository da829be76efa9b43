"""What a run config names, loaded: its dataset (the run's or the teacher's), its vision models,
and the built-in models prepared into the cache. Text models come from :mod:`opdf.models`
directly; image runs use the plain-torch classifiers of :mod:`opdf.models.vision`, in
channels_last memory format."""

from __future__ import annotations

from pathlib import Path

import torch

from opdf.data import load_text_dataset, load_vision_dataset
from opdf.errors import OpdfError
from opdf.models import builtin_names, prepare_builtin
from opdf.models.vision import build_vision_model, load_vision_model, read_architecture
from opdf.run.config import RunConfig, data_kind


def is_image(cfg: RunConfig) -> bool:
    return data_kind(cfg) == "image"


def load_data(cfg: RunConfig, *, teacher: bool = False):
    """The run's dataset; ``teacher=True``: the teacher's (full train unless
    ``teacher.finetune.max_train_samples``, full dev and test)."""
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


def subsample_note(cfg: RunConfig, dataset) -> str | None:
    """The summary's note on a subsampled run (None when the data is used in full)."""
    d = cfg.data
    if d.max_train_samples is None and d.max_eval_samples is None:
        return None
    return f"subsampled: sizes {dataset.sizes()} (max_train_samples={d.max_train_samples}, " \
        f"max_eval_samples={d.max_eval_samples})"  # fmt: skip


def vision_model(name_or_path: str, dataset, *, seed: int | None = None):
    """A built-in vision architecture (fresh, ``seed``-initialized) or a saved vision model folder,
    for ``dataset``'s classes, channels and image size; train mode, channels_last."""
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


def prepare_models(cfg: RunConfig) -> None:
    """Prepare the config's built-in models into the cache. Under torchrun rank 0 does this
    before the others look: transformers' ``save_pretrained`` writes nothing on other ranks
    once a process group exists, so concurrent preparation would leave empty folders."""
    for model in (cfg.teacher.model, cfg.student.model):
        if model in builtin_names():
            prepare_builtin(model)
