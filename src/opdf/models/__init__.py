"""Pretrained text encoders, offline: built-in names, local folders, students from teachers.

>>> model, tokenizer = load_model("minilm-l6", num_labels=2)      # doctest: +SKIP
>>> student = student_from_teacher(model)  # 6 -> 3 layers          # doctest: +SKIP
"""

from opdf.models.builtin import BUILTINS, builtin_names, prepare_builtin
from opdf.models.cache import cache_dir, models_dir
from opdf.models.hf import base_model, load_encoder, load_model, load_tokenizer, resolve_model_dir
from opdf.models.student import (
    default_student_layers,
    find_layer_list,
    set_dropout,
    student_from_teacher,
)

__all__ = [
    "BUILTINS",
    "base_model",
    "builtin_names",
    "cache_dir",
    "default_student_layers",
    "find_layer_list",
    "load_encoder",
    "load_model",
    "load_tokenizer",
    "models_dir",
    "prepare_builtin",
    "resolve_model_dir",
    "set_dropout",
    "student_from_teacher",
]
