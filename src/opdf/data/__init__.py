"""Text data for distillation runs: real sentiment sets, GLUE folders, your own files.

>>> ds = load_text_dataset("rt-polarity", max_train_samples=512)   # doctest: +SKIP
>>> loader = make_dataloader(ds.train, tokenizer, batch_size=32, max_length=64, shuffle=True)
>>> ds.metric(logits, labels)[ds.main_metric]                      # doctest: +SKIP
"""

from opdf.data.collate import BucketBatchSampler, PaddingCollator, TokenizedSplit, make_dataloader
from opdf.data.dataset import TextDataset, TextSplit
from opdf.data.glue import GLUE_TASKS, load_glue
from opdf.data.metrics import METRICS, get_metric
from opdf.data.text import BUILTIN_DATASETS, dataset_names, load_text_dataset

__all__ = [
    "BUILTIN_DATASETS",
    "GLUE_TASKS",
    "METRICS",
    "BucketBatchSampler",
    "PaddingCollator",
    "TextDataset",
    "TextSplit",
    "TokenizedSplit",
    "dataset_names",
    "get_metric",
    "load_glue",
    "load_text_dataset",
    "make_dataloader",
]
