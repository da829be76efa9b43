"""The runner: configs, the training loop, checkpoints, teacher fine-tuning.

>>> from opdf.run import load_config, run_distill
>>> cfg = load_config("configs/smoke-kd.yaml", ["output_dir=/tmp/x"])
>>> summary = run_distill(cfg)  # doctest: +SKIP
"""

from opdf.run.config import RunConfig, config_from_dict, load_config
from opdf.run.runner import build, finetune_teacher, run_distill
from opdf.run.trainer import Trainer, TrainSettings

__all__ = [
    "RunConfig",
    "TrainSettings",
    "Trainer",
    "build",
    "config_from_dict",
    "finetune_teacher",
    "load_config",
    "run_distill",
]
