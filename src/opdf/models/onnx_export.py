"""A merged student as ONNX, checked against PyTorch with onnxruntime.

The deployed student is plain: a transformers sequence classifier (``input_ids``,
``attention_mask`` and, where its tokenizer makes them, ``token_type_ids``, with dynamic batch and
sequence axes) or an opdf vision model (``pixel_values`` with a dynamic batch axis). Both map to
``logits``. After writing the file, onnxruntime runs it on a check sample of another batch size
(and, for text, another padded length) than the one the exporter traced, and the largest absolute
difference from PyTorch's logits is reported; above ``tolerance`` the file is removed and the
export fails.

Exporter: ``torch.onnx.export(..., dynamo=True)``, torch's default since 2.9 (through
``torch.export``, which refuses a graph it cannot capture instead of silently baking a traced
Python branch into it). It needs ``onnxscript``. The TorchScript exporter (``dynamo=False``) still
works in torch 2.13 but warns that it will be removed. ``onnx``, ``onnxruntime`` and ``onnxscript``
are imported lazily: ``pip install 'opdf[onnx]'``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from opdf.errors import OpdfError
from opdf.models.hf import SAFE, load_tokenizer, resolve_model_dir
from opdf.models.quiet import quiet_transformers
from opdf.models.vision import ARCHITECTURE_FILE, load_vision_model, read_architecture

__all__ = [
    "DEFAULT_TOLERANCE",
    "MODEL_FILE",
    "ExportResult",
    "export_model",
    "export_student",
    "load_student",
    "max_abs_difference",
    "onnxruntime_logits",
    "sample_inputs",
]

MODEL_FILE = "model.onnx"
EXPORT_FILE = "export.json"
EXTRA = "opdf[onnx]"
#: max |onnxruntime - PyTorch| over the check sample's logits; float32 exports measure ~1e-6
DEFAULT_TOLERANCE = 1e-4
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
IMAGE_INPUT = "pixel_values"
# What the exporter traces, and a check sample of another batch size and padded length
TRACE_TEXTS = (
    "a gripping, beautifully shot film about grief and memory.",
    "dull.",
)
CHECK_TEXTS = (
    "the rock is destined to be the 21st century's new conan.",
    "A short one.",
    "Over-parameterized students distil better; their cores merge back after training, so the "
    "deployed model is as small and as fast as one never over-parameterized!",
)
TRACE_BATCH, CHECK_BATCH = 2, 3
# torch.onnx writes weights inside the file up to protobuf's 2 GB limit
EXTERNAL_DATA_BYTES = 1_800_000_000


def _require() -> None:
    missing = []
    for module in ("onnx", "onnxruntime", "onnxscript"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise OpdfError(
            f"ONNX export needs {', '.join(missing)}, which is not installed: pip install '{EXTRA}'"
        )


@dataclass
class ExportResult:
    """What :func:`export_student` wrote and measured."""

    path: Path
    kind: str  # "text" | "image"
    inputs: dict[str, list[str | int]]  # name -> axes (a string: dynamic)
    max_abs_diff: float
    tolerance: float
    check: str  # the check sample, in words
    files: list[str] = field(default_factory=list)

    def describe(self) -> str:
        axes = "; ".join(f"{k} [{', '.join(map(str, v))}]" for k, v in self.inputs.items())
        return f"{self.path} ({self.kind} student; inputs {axes}; output logits)"


class _TextLogits(nn.Module):
    """A transformers classifier as a function of tensors to ``logits``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits


def load_student(folder: str | Path):
    """A merged student folder -> ``(model in eval mode, tokenizer or None, vision spec or
    None)``: a transformers folder (``save_pretrained``) or an opdf vision folder
    (``architecture.json`` + ``model.safetensors``)."""
    folder = Path(folder).expanduser()
    if (folder / ARCHITECTURE_FILE).is_file():
        return load_vision_model(folder), None, read_architecture(folder)
    from transformers import AutoModelForSequenceClassification

    resolve_model_dir(folder)  # a clear error for a folder that is no model
    if any("parametrizations" in line for line in _weight_names(folder)):
        raise OpdfError(f"{folder} holds an over-parameterized model; merge it first (opdf merge)")
    with quiet_transformers():
        model = AutoModelForSequenceClassification.from_pretrained(
            str(folder), use_safetensors=True, **SAFE
        )
    return model.eval(), load_tokenizer(folder), None


def _weight_names(folder: Path) -> list[str]:
    from safetensors import safe_open

    path = folder / "model.safetensors"
    if not path.is_file():
        return []
    with safe_open(str(path), "pt") as f:
        return list(f.keys())


def sample_inputs(tokenizer=None, spec: dict | None = None, *, check: bool = False,
                  max_length: int = 128) -> dict[str, torch.Tensor]:  # fmt: skip
    """Inputs to trace (``check=False``) or to compare on (``check=True``): padded sentences for
    a text student, seeded random images of the spec's shape for a vision one."""
    if spec is not None:
        g = torch.Generator().manual_seed(1 if check else 0)
        n = CHECK_BATCH if check else TRACE_BATCH
        shape = (n, spec["in_channels"], spec["image_size"], spec["image_size"])
        return {IMAGE_INPUT: torch.randn(shape, generator=g)}
    if tokenizer is None:
        raise OpdfError("a text student needs its tokenizer")
    texts = list(CHECK_TEXTS if check else TRACE_TEXTS)
    enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length,
                    return_tensors="pt")  # fmt: skip
    return {k: enc[k] for k in TEXT_INPUTS if k in enc}


def _exportable(model: nn.Module, inputs: dict[str, torch.Tensor]) -> nn.Module:
    return model if IMAGE_INPUT in inputs else _TextLogits(model)


@contextlib.contextmanager
def _quiet_exporter():
    """No deprecation notices and no "torchvision is not installed" log lines from the
    exporter (it registers torchvision's operators when it can)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def export_model(model: nn.Module, inputs: dict[str, torch.Tensor], path: str | Path) -> Path:
    """Write ``model`` (a plain classifier) to ``path`` as ONNX, traced on ``inputs``: dynamic
    batch axis, and for text a dynamic sequence axis."""
    _require()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch")
    sequence = torch.export.Dim("sequence")
    text = IMAGE_INPUT not in inputs
    dynamic = tuple({0: batch, 1: sequence} if text else {0: batch} for _ in inputs)
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    module = _exportable(model, inputs).eval()
    with _quiet_exporter(), torch.no_grad():
        torch.onnx.export(
            module, tuple(inputs.values()), str(path), input_names=list(inputs),
            output_names=["logits"], dynamic_shapes=dynamic, dynamo=True,
            external_data=size > EXTERNAL_DATA_BYTES, verbose=False,
        )  # fmt: skip
    return path


def onnxruntime_logits(path: str | Path, inputs: dict[str, torch.Tensor], *,
                       threads: int = 1) -> np.ndarray:  # fmt: skip
    """The ONNX file's logits on ``inputs``, from onnxruntime's CPU provider."""
    _require()
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    feed = {k: v.numpy() for k, v in inputs.items() if k in names}
    return session.run(["logits"], feed)[0]


@torch.no_grad()
def max_abs_difference(path: str | Path, model: nn.Module,
                       inputs: dict[str, torch.Tensor]) -> float:  # fmt: skip
    """``max |onnxruntime - PyTorch|`` over the logits of ``inputs``."""
    ours = _exportable(model, inputs).eval()(*inputs.values()).float().numpy()
    theirs = onnxruntime_logits(path, inputs)
    if theirs.shape != ours.shape:
        raise OpdfError(f"{path}: onnxruntime gives logits of shape {theirs.shape}, PyTorch "
                        f"{ours.shape}")  # fmt: skip
    return float(np.abs(theirs - ours).max())


def _describe_check(inputs: dict[str, torch.Tensor]) -> str:
    if IMAGE_INPUT in inputs:
        n, c, h, w = inputs[IMAGE_INPUT].shape
        return f"{n} random images {c}x{h}x{w}"
    n, length = inputs["input_ids"].shape
    return f"{n} sentences padded to {length} tokens"


def export_student(folder: str | Path, out: str | Path, *, tolerance: float = DEFAULT_TOLERANCE,
                   overwrite: bool = False) -> ExportResult:  # fmt: skip
    """A merged student folder -> ``out/model.onnx`` plus what a deployment needs beside it
    (the tokenizer and ``config.json``, or ``architecture.json``) and ``export.json``; raises
    :class:`OpdfError` when onnxruntime's logits differ from PyTorch's by more than
    ``tolerance`` (the file is then removed)."""
    _require()
    if not tolerance > 0:
        raise OpdfError(f"tolerance must be > 0, got {tolerance!r}")
    folder, out = Path(folder).expanduser(), Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise OpdfError(f"{out} exists and is not empty; pass --overwrite or another --output")
    model, tokenizer, spec = load_student(folder)
    trace = sample_inputs(tokenizer, spec)
    check = sample_inputs(tokenizer, spec, check=True)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(MODEL_FILE + "*"):  # --overwrite: an earlier export's file and data
        stale.unlink()
    path = export_model(model, trace, out / MODEL_FILE)
    diff = max_abs_difference(path, model, check)
    if not diff <= tolerance:  # NaN fails too
        for f in out.glob(MODEL_FILE + "*"):
            f.unlink()
        raise OpdfError(
            f"onnxruntime's logits differ from PyTorch's by up to {diff:.3g} on "
            f"{_describe_check(check)} (tolerance {tolerance:g}): the export of {folder} is not "
            "faithful, so no model.onnx was kept. Raise --tolerance if the difference is "
            "acceptable, or report the model"
        )
    if spec is not None:
        shutil.copyfile(folder / "architecture.json", out / "architecture.json")
        inputs = {IMAGE_INPUT: ["batch", spec["in_channels"], spec["image_size"],
                                spec["image_size"]]}  # fmt: skip
        kind = "image"
    else:
        with quiet_transformers():
            model.config.save_pretrained(str(out))
            tokenizer.save_pretrained(str(out))
        inputs = {k: ["batch", "sequence"] for k in trace}
        kind = "text"
    result = ExportResult(path, kind, inputs, diff, tolerance, _describe_check(check))
    result.files = sorted(p.name for p in out.iterdir()) + [EXPORT_FILE]
    import onnxruntime

    record = {**asdict(result), "path": MODEL_FILE, "source": str(folder),
              "exporter": "torch.onnx.export(dynamo=True)", "torch": torch.__version__,
              "onnxruntime": onnxruntime.__version__}  # fmt: skip
    (out / EXPORT_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return result
