"""``load_model``: a built-in name or a local transformers folder -> (classifier, tokenizer).

Everything loads from local files (``local_files_only=True`` and ``HF_HUB_OFFLINE=1``): no Hub.
Nothing loaded runs code: weights are read from safetensors only (``use_safetensors=True``; a
``pytorch_model.bin`` is a pickle, which can execute code when unpickled) and no model's own Python
code is ever imported (``trust_remote_code=False``).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from opdf.errors import OpdfError
from opdf.models.builtin import BUILTINS, prepare_builtin
from opdf.models.quiet import quiet_transformers

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
#: what every from_pretrained call gets: local files, no remote code
SAFE = {"local_files_only": True, "trust_remote_code": False}


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def resolve_model_dir(name_or_path: str | Path) -> Path:
    """A built-in name (prepared on first use) or a transformers folder -> that folder."""
    name = str(name_or_path)
    if name in BUILTINS:
        return prepare_builtin(name)
    path = Path(name).expanduser()
    valid = ", ".join(BUILTINS)
    if not path.exists():
        raise FileNotFoundError(
            f"unknown model {name!r}: not a built-in name ({valid}) and no such folder"
        )
    if not path.is_dir():
        raise OpdfError(f"model path {path} is a file; give a transformers model folder")
    if not (path / "config.json").is_file():
        raise OpdfError(
            f"{path} is not a transformers model folder (no config.json); give a folder written "
            f"by save_pretrained, or a built-in name ({valid})"
        )
    if not any((path / f).is_file() for f in WEIGHT_FILES):
        pickled = [f.name for f in path.glob("*.bin")] + [f.name for f in path.glob("*.pt*")]
        if pickled:
            raise OpdfError(
                f"{path} holds its weights as {', '.join(sorted(pickled))}, a pickle, which can "
                "run code when loaded; opdf reads safetensors only. Convert it once, where you "
                "trust the file: AutoModel.from_pretrained(folder).save_pretrained(folder) "
                "writes model.safetensors"
            )
        raise OpdfError(f"{path} has a config.json but no weights ({', '.join(WEIGHT_FILES)})")
    return path


def load_tokenizer(name_or_path: str | Path):
    """The tokenizer stored with a model (built-in name or folder)."""
    from transformers import AutoTokenizer

    _offline()
    folder = resolve_model_dir(name_or_path)
    try:
        return AutoTokenizer.from_pretrained(str(folder), **SAFE)
    except (OSError, ValueError) as e:
        raise OpdfError(f"{folder}: no usable tokenizer files ({e})") from None


def _head_config(folder: Path, num_labels: int, overrides: dict):
    """(the folder's config set up for a ``num_labels`` head with ``overrides`` applied, whether
    the head is new: the folder's has another label count)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(folder), **SAFE)
    new_head = config.num_labels != num_labels
    if new_head:
        # a fresh head: drop the folder's label names, they belong to the old head
        config.id2label = {i: f"LABEL_{i}" for i in range(num_labels)}
        config.label2id = {v: k for k, v in config.id2label.items()}
    config.num_labels = num_labels
    config.problem_type = "regression" if num_labels == 1 else "single_label_classification"
    for key, value in overrides.items():
        if not hasattr(config, key):
            raise OpdfError(f"{folder}: config has no attribute {key!r} to override")
        setattr(config, key, value)
    return config, new_head


def _check_only_head_mismatched(model, info: dict, folder: Path) -> None:
    """Only the head may be re-initialized for another shape, never the encoder."""
    prefix = getattr(model, "base_model_prefix", "")
    body = [k[0] if isinstance(k, tuple) else k for k in info.get("mismatched_keys", [])]
    body = [k for k in body if prefix and k.startswith(prefix + ".")]
    if body:
        raise OpdfError(f"{folder}: encoder weights have the wrong shape: {', '.join(body)}")


def load_model(
    name_or_path: str | Path,
    num_labels: int = 2,
    *,
    seed: int | None = None,
    **config_overrides,
):
    """Load a sequence classifier and its tokenizer, offline.

    Parameters
    ----------
    name_or_path : str or Path
        A built-in name (``minilm-l6``, ``minilm-l3``, ``mpnet-base``, ``tiny-bert``; see
        :mod:`opdf.models.builtin`) or a local folder written by ``save_pretrained``.
    num_labels : int
        Number of classes; 1 means regression (``problem_type="regression"``, MSE loss). A
        folder whose saved head has another label count gets a new head (the encoder loads).
    seed : int, optional
        Seed for the newly initialized head (and pooler), without touching the global RNG.
    **config_overrides
        Set on the config before loading, e.g. ``hidden_dropout_prob=0.0``.

    Returns
    -------
    (model, tokenizer)
        An ``AutoModelForSequenceClassification`` in train mode and its ``AutoTokenizer``.
    """
    from transformers import AutoModelForSequenceClassification

    if num_labels < 1:
        raise OpdfError(f"num_labels must be >= 1 (1 = regression), got {num_labels}")
    _offline()
    folder = resolve_model_dir(name_or_path)
    config, new_head = _head_config(folder, num_labels, config_overrides)
    rng = torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext()
    with rng, quiet_transformers():
        if seed is not None:
            torch.manual_seed(seed)
        try:
            model, info = AutoModelForSequenceClassification.from_pretrained(
                str(folder),
                config=config,
                use_safetensors=True,
                **SAFE,
                ignore_mismatched_sizes=new_head,  # a saved head for another label count
                output_loading_info=True,
            )
        except (ValueError, RuntimeError) as e:
            raise OpdfError(f"{folder}: cannot load a sequence classifier: {e}") from None
    _check_only_head_mismatched(model, info, folder)
    model.train()
    return model, load_tokenizer(folder)


def has_task_head(name_or_path: str | Path, num_labels: int) -> bool:
    """Whether a model folder (or built-in) holds a sequence-classification head of
    ``num_labels`` outputs, which :func:`load_model` then loads instead of initialising one."""
    from transformers import AutoConfig

    _offline()
    config = AutoConfig.from_pretrained(str(resolve_model_dir(name_or_path)), **SAFE)
    classifier = any(a.endswith("ForSequenceClassification") for a in config.architectures or [])
    return classifier and config.num_labels == num_labels


def load_encoder(name_or_path: str | Path):
    """The bare encoder (``AutoModel``, e.g. ``BertModel``) of a built-in or folder, eval mode."""
    from transformers import AutoModel

    _offline()
    folder = resolve_model_dir(name_or_path)
    with quiet_transformers():
        return AutoModel.from_pretrained(str(folder), use_safetensors=True, **SAFE).eval()


def base_model(model) -> torch.nn.Module:
    """The encoder in a task model (``model.bert``, ``model.mpnet``, ...), else the model."""
    prefix = getattr(model, "base_model_prefix", "")
    return getattr(model, prefix, model) if prefix else model
