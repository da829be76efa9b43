"""Data for distillation runs: real sentiment sets, GLUE folders, your own files (text), and
Fashion-MNIST, MNIST 5k, digits, CIFAR (images, :mod:`opdf.data.vision`).

>>> ds = load_text_dataset("rt-polarity", max_train_samples=512)   # doctest: +SKIP
>>> loader = make_dataloader(ds.train, tokenizer, batch_size=32, max_length=64, shuffle=True)
>>> ds.metric(logits, labels)[ds.main_metric]                      # doctest: +SKIP
>>> images = load_vision_dataset("fashion-mnist")                  # doctest: +SKIP
"""

from opdf.data.collate import BucketBatchSampler, PaddingCollator, TokenizedSplit, make_dataloader
from opdf.data.dataset import TextDataset, TextSplit
from opdf.data.glue import GLUE_TASKS, load_glue
from opdf.data.metrics import METRICS, get_metric
from opdf.data.text import BUILTIN_DATASETS, dataset_names, load_text_dataset
from opdf.data.vision import (
    VISION_DATASETS,
    ImageBatcher,
    ImageDataset,
    ImageSplit,
    is_vision_dataset,
    load_vision_dataset,
)

__all__ = [
    "BUILTIN_DATASETS",
    "GLUE_TASKS",
    "METRICS",
    "BucketBatchSampler",
    "PaddingCollator",
    "TextDataset",
    "TextSplit",
    "TokenizedSplit",
    "VISION_DATASETS",
    "ImageBatcher",
    "ImageDataset",
    "ImageSplit",
    "is_vision_dataset",
    "load_vision_dataset",
    "dataset_names",
    "get_metric",
    "load_glue",
    "load_text_dataset",
    "make_dataloader",
]
