"""``opdf finetune CONFIG``: fine-tune (or fetch from the cache) the teacher of a config."""

from __future__ import annotations

import argparse
import json

from opdf.commands.common import add_config_arguments, split_late_flags

HELP = """\
Fine-tune the config's teacher (teacher.model) on its task (data) with teacher.finetune settings.
The result is cached under $OPDF_CACHE (default ~/.cache/opdf)/teachers/<model>-<hash>, the hash
covering the model, the data selection and the fine-tuning settings; later calls (and
`opdf distill`) reuse it. Prints the model's folder, <...>/teachers/<model>-<hash>/student
(the trainer names every model it saves student/; pass it as teacher.model with
teacher.finetune: null to use it elsewhere), and the teacher's dev/test metrics. An image teacher
(a vision architecture such as resnet20) is trained from scratch the same way."""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune a config's teacher on its task (cached, reused)",
        description=HELP,
        epilog="examples:\n  opdf finetune configs/rt-polarity-kd-base.yaml\n"
        "  opdf finetune configs/fashion-mnist-kd-base.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(
        p,
        "YAML config file (its data and teacher sections are used)",
        "dotted overrides, e.g. teacher.finetune.epochs=2",
    )
    p.add_argument("--force", action="store_true", help="retrain even if cached")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(run=run)


def run(args) -> int:
    args = split_late_flags(args)
    from opdf.run.allocator import keep_freed_memory
    from opdf.run.config import load_config
    from opdf.run.distributed import is_main_process
    from opdf.run.teacher import run_finetune, teacher_cache_dir, teacher_summary

    cfg = load_config(args.config, args.overrides)
    keep_freed_memory()  # see opdf.run.allocator: faster steps, peak memory kept
    cached = cfg.teacher.finetune is not None and (teacher_cache_dir(cfg) / "student").is_dir()
    path = run_finetune(cfg, force=args.force, progress=False if args.no_progress else None)
    if not is_main_process():
        return 0  # under torchrun rank 0 prints the result
    info = teacher_summary(cfg) or {}
    main = info.get("main_metric")
    print(json.dumps({
        "teacher": str(path), "cached": bool(cached and not args.force),
        "dev": info.get("dev"), "test": info.get("test"), "main_metric": main,
        "wall_time": info.get("wall_time"),
    }))  # fmt: skip
    return 0
