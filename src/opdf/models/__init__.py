"""Models, offline: pretrained text encoders (built-in names, local folders, students from
teachers) and plain-torch image classifiers (:mod:`opdf.models.vision`).

>>> model, tokenizer = load_model("minilm-l6", num_labels=2)      # doctest: +SKIP
>>> student = student_from_teacher(model)  # 6 -> 3 layers          # doctest: +SKIP
>>> resnet = build_vision_model("resnet8", num_classes=10, in_channels=1, image_size=28)
>>> vit = load_vision_model("runs/fm-tinyvit-opdf/student")        # doctest: +SKIP
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
from opdf.models.vision import (
    VISION_MODELS,
    build_vision_model,
    is_vision_model,
    load_vision_model,
    save_vision_model,
    vision_model_names,
)

__all__ = [
    "BUILTINS",
    "VISION_MODELS",
    "build_vision_model",
    "is_vision_model",
    "load_vision_model",
    "save_vision_model",
    "vision_model_names",
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
