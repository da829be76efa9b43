"""``opdf inspect``: a dry run of over-parameterization (no training, no decomposition).

Prints which modules would be over-parameterized, their mode shapes, bond dimensions and the
train/inference parameter counts; with ``--teacher`` also the core pairing of the alignment loss.
With ``--method`` it also prints where that method's student starts (``student.source``,
``student.head``). Works for transformers encoders and for the image classifiers of
``opdf.models.vision`` (a Conv2d weight counts as its (out, in*kh*kw) matrix).

examples:
  opdf inspect bert-base-6 --teacher bert-base
  opdf inspect resnet8 --teacher resnet20 --in-channels 1 --image-size 28 --layer-map 0:0,1:3,2:6
  opdf inspect vit-d2 --teacher vit-d8 --num-labels 10
  opdf inspect bert-base-6 --method dbkd        # where DBKD's student starts, and its head
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from opdf.choices import (
    CORE_SELECTIONS,
    SCHEMES,
    STUDENT_HEADS,
    STUDENT_INITS,
    STUDENT_SOURCES,
    suggest,
)
from opdf.errors import OpdfError

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

# Architectures that need no weights to inspect: the paper's BERT-base shapes.
ARCHITECTURES = {
    "bert-base": dict(num_hidden_layers=12),
    "bert-base-6": dict(num_hidden_layers=6),
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="dry run: show what over-parameterization would do to a model",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "model",
        help="a local transformers folder, a built-in model name (see `opdf.models`), an "
        f"architecture with random weights ({', '.join(ARCHITECTURES)}), a vision model name "
        "(resnet8, resnet20, resnet8x4, wrn-16-2, vit-d2, ...; see opdf.models.VISION_MODELS) "
        "or a folder saved by opdf with an architecture.json",
    )
    p.add_argument("--scheme", default="mpo", choices=SCHEMES)
    p.add_argument("--unit-modes", type=int, default=None,
                   help="unit modes L (scheme mpo; default 3); svd has none")  # fmt: skip
    p.add_argument("--num-labels", type=int, default=2, help="classifier size (default 2)")
    p.add_argument("--in-channels", type=int, default=3,
                   help="vision models: input channels (default 3; Fashion-MNIST 1)")  # fmt: skip
    p.add_argument("--image-size", type=int, default=32,
                   help="vision models: image side in pixels (32; Fashion-MNIST 28)")  # fmt: skip
    p.add_argument(
        "--targets", nargs="+", help="module names or patterns (default: encoder block Linears)"
    )
    p.add_argument("--teacher", help="also print the alignment pairing against this teacher")
    p.add_argument(
        "--layer-map",
        help="with --teacher: explicit student:teacher layer pairs, e.g. 0:1,1:3,2:5 (default: "
        "uniform, k(i+1)-1 with k = teacher layers / student layers)",
    )
    p.add_argument(
        "--cores",
        default="auxiliary",
        help="with --teacher: 'auxiliary' (default, all but the central core), 'all', or "
        "indices such as 0,4",
    )
    p.add_argument(
        "--init",
        help="with --teacher: the teacher layers a student of the model's depth cut from the "
        f"teacher starts from (config key student.init): {' | '.join(STUDENT_INITS)}, or "
        "indices such as 0,2,4; printed beside the alignment's layer map, which it does not change",
    )
    p.add_argument(
        "--method",
        help="print where this method's student starts (student.source, student.head: its "
        "paper's default, or --source / --head checked against it); e.g. dbkd",
    )
    p.add_argument("--source", choices=STUDENT_SOURCES,
                   help="with --method: the config's student.source")  # fmt: skip
    p.add_argument("--head", choices=STUDENT_HEADS,
                   help="with --method: the config's student.head")  # fmt: skip
    p.add_argument(
        "--allow-partial",
        action="store_true",
        help="with --teacher: pair only same-shaped cores instead of failing on a width mismatch",
    )
    p.set_defaults(run=run)


def build_model(
    name: str, num_labels: int, in_channels: int = 3, image_size: int = 32
) -> nn.Module:
    """A classifier with the architecture of ``name``; weights are random (a dry run needs none)."""
    import torch

    from opdf.models.vision import is_vision_model

    if num_labels < 1:
        raise OpdfError(f"--num-labels must be >= 1, got {num_labels}")
    if is_vision_model(name):
        return _vision_model(name, num_labels, in_channels, image_size)
    from transformers import AutoConfig, AutoModelForSequenceClassification, BertConfig
    from transformers import BertForSequenceClassification as Bert

    # shapes are all a dry run needs: build on the meta device (no memory, no initialisation)
    if name in ARCHITECTURES:
        with torch.device("meta"):
            return Bert(BertConfig(num_labels=num_labels, **ARCHITECTURES[name]))
    from opdf.models import builtin_names
    from opdf.models.hf import SAFE, resolve_model_dir
    from opdf.models.vision import VISION_MODELS

    try:
        folder = resolve_model_dir(name)
    except FileNotFoundError:
        if name in builtin_names():
            raise  # a built-in whose package is not installed: its own error says how to get it
        names = [*builtin_names(), *ARCHITECTURES, *VISION_MODELS]
        raise OpdfError(
            f"unknown model {name!r}{suggest(name, names)}: not a folder, nor a name opdf knows: "
            f"pretrained {', '.join(builtin_names())}; architectures (random weights) "
            f"{', '.join(ARCHITECTURES)}; vision {', '.join(VISION_MODELS)}"
        ) from None
    config = AutoConfig.from_pretrained(str(folder), num_labels=num_labels, **SAFE)
    with torch.device("meta"):
        return AutoModelForSequenceClassification.from_config(config)


def _vision_model(name: str, num_labels: int, in_channels: int, image_size: int) -> nn.Module:
    """A vision model on the meta device: its spec from ``name`` and the flags, or from the
    ``architecture.json`` of a folder (which then fixes classes, channels and size)."""
    import torch

    from opdf.models.vision import (
        VISION_MODELS,
        build_from_spec,
        build_vision_model,
        read_architecture,
    )

    if in_channels < 1 or image_size < 1:
        raise OpdfError("--in-channels and --image-size must be >= 1")
    with torch.device("meta"):
        if name in VISION_MODELS:
            return build_vision_model(name, num_labels, in_channels, image_size)
        return build_from_spec(read_architecture(name))


def parse_layer_map(text: str | None) -> dict[int, int] | None:
    """``"0:1,1:3"`` -> ``{0: 1, 1: 3}``."""
    if not text:
        return None
    try:
        pairs = [item.split(":") for item in text.split(",") if item.strip()]
        return {int(s): int(t) for s, t in pairs}
    except ValueError:
        raise OpdfError(
            f"--layer-map {text!r} must look like 0:1,1:3 (student:teacher layer pairs)"
        ) from None


def parse_cores(text: str) -> str | list[int]:
    """``"auxiliary"``, ``"all"`` (:data:`opdf.choices.CORE_SELECTIONS`) or ``"0,4"`` -> [0, 4]."""
    if text in CORE_SELECTIONS:
        return text
    try:
        return [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        named = " or ".join(repr(c) for c in CORE_SELECTIONS)
        raise OpdfError(f"--cores {text!r} must be {named}, or indices like 0,4") from None


def run(args: argparse.Namespace) -> int:
    from opdf.overparam import ParamReport, plan

    if args.scheme != "mpo" and args.unit_modes not in (None, 0):
        raise OpdfError(
            f"--scheme {args.scheme} contradicts --unit-modes {args.unit_modes}: only the mpo "
            "scheme has unit modes; drop --unit-modes, or use --scheme mpo"
        )
    if args.unit_modes is None:
        args.unit_modes = 3 if args.scheme == "mpo" else 0
    layer_map, cores = parse_layer_map(args.layer_map), parse_cores(args.cores)
    if args.init and not args.teacher:
        raise OpdfError("--init needs --teacher: presets resolve against the teacher's depth")
    if (args.source or args.head) and not args.method:
        raise OpdfError("--source and --head need --method: each method allows its own starts")
    start = start_text(args.method, args.source, args.head) if args.method else None
    model = build_model(args.model, args.num_labels, args.in_channels, args.image_size)
    entries = plan(model, args.scheme, args.unit_modes, args.targets)
    lines = [f"model {args.model}: scheme={args.scheme}, unit_modes={args.unit_modes}",
             str(ParamReport.from_plan(model, entries))]  # fmt: skip
    if args.teacher:  # every check before any output: an error is never under a valid-looking page
        from opdf.align import pairing_plan

        teacher = build_model(args.teacher, args.num_labels, args.in_channels, args.image_size)
        pairs, skipped = pairing_plan(
            model,
            teacher,
            args.scheme,
            args.unit_modes,
            args.targets,
            args.allow_partial,
            layer_map=layer_map,
            cores=cores,
        )
        lines.append(f"\nalignment pairs with teacher {args.teacher} (cores: {args.cores}):")
        lines += [f"  {s:<58} <- {t}  {shape}" for s, t, shape in pairs]
        lines.append(f"pairs: {len(pairs)}; skipped modules (no same-shaped teacher cores): "
                     f"{skipped}")  # fmt: skip
        if args.init:
            lines.append(init_text(model, teacher, args.init, layer_map))
    if start:
        lines.append(start)
    print("\n".join(lines))
    return 0


SOURCE_WORDS = {
    "finetuned-teacher": "the task-fine-tuned teacher's layers",
    "pretrained-teacher": "the same layers of teacher.model before its fine-tune",
    "model": "student.model, a separately pretrained model",
}


def start_text(method: str, source: str | None, head: str | None) -> str:
    """Where ``method``'s text student starts (``student.source`` and ``student.head`` resolved as
    a config resolves them: the method's default, or refused with the config's error)."""
    from opdf.distill import get_method, method_names
    from opdf.run.config import RunConfig, StudentConfig, resolve_student_start

    if method not in method_names():
        raise OpdfError(f"--method {method!r}: not a method; valid: {', '.join(method_names())}")
    model = "student-model" if source == "model" else None  # a placeholder name, never loaded
    cfg = RunConfig(method=method, method_options=get_method(method).Options(),
                    student=StudentConfig(model=model, source=source, head=head))  # fmt: skip
    resolve_student_start(cfg)
    s = cfg.student
    default = "" if source else f" (the {method} default)"
    how = "copied from the source" if s.head == "copy" else "newly initialised"
    return (
        f"\nstudent start ({method}): source {s.source}{default}: {SOURCE_WORDS[s.source]}; "
        f"head {s.head} ({how})"
    )


def init_text(model: nn.Module, teacher: nn.Module, init: str, layer_map) -> str:
    """Which teacher layers ``init`` starts the student from, and the alignment's layer map."""
    from opdf.align import uniform_layer_map
    from opdf.models.student import find_layer_list, init_layers

    n, big_n = len(find_layer_list(model)[1]), len(find_layer_list(teacher)[1])
    spec: str | list[int] = init
    if init not in STUDENT_INITS:
        try:
            spec = [int(i) for i in init.split(",") if i.strip()]
        except ValueError:
            raise OpdfError(
                f"--init {init!r}: one of {', '.join(STUDENT_INITS)}, or indices like 0,2,4"
            ) from None
    layers = init_layers(spec, big_n, n)
    bad = [i for i in layers if not 0 <= i < big_n]
    if bad:
        raise OpdfError(f"--init {init!r}: layers {bad} out of range (teacher: {big_n} layers)")
    amap = layer_map if layer_map is not None else uniform_layer_map(big_n, n)
    pairs = ", ".join(f"{s}:{t}" for s, t in sorted(amap.items()))
    return (f"\nstudent init {init}: teacher layers {layers} of {big_n} (the student's layers "
            f"0..{n - 1}); alignment layer map (student:teacher): {pairs}")  # fmt: skip
