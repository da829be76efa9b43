"""``opdf distill CONFIG [key=value ...]``: run one distillation config end to end."""

from __future__ import annotations

import argparse
import json

from opdf.commands.common import add_config_arguments, split_late_flags
from opdf.errors import ConfigError

HELP = """\
Run one distillation config: the YAML file is validated first (unknown keys, bad values and
missing files are reported with the valid choices before any work), then the teacher is
fine-tuned (or taken from the cache), the student is built, over-parameterized (overparam:
none|svd|mpo), trained with the method's loss (+ the alignment loss when align.weight > 0),
selected on dev, merged and evaluated on test.

Writes OUTPUT_DIR/metrics.jsonl, checkpoints/, summary.json and student/ (the merged student,
loadable with stock transformers; for image data model.safetensors + architecture.json, loadable
with opdf.models.load_vision_model).

Safety: a lock keeps a second run out of OUTPUT_DIR while this one lives (also with --resume or
--overwrite; a killed run's lock blocks nothing). opdf deletes only what it wrote (listed in
OUTPUT_DIR/.opdf-owner.json): --overwrite refuses a folder holding anything else, naming it.
Checkpoints are checksummed (manifest.json) and read without running code; --resume falls back to
checkpoints/previous.pt when last.pt is damaged. A NaN/inf loss or gradient stops the run (exit
code 3, the message names the step and the loss terms; on_nonfinite=skip skips such steps instead,
counted in summary.json). Exit code 2: a user error (config, data, files), printed as one line.

Data parallel: launch the same command with torchrun (DistributedDataParallel; gloo on CPU,
nccl on GPU, one process per GPU). batch_size stays the global batch of an optimizer step, split
over the processes; rank 0 writes the output folder; --resume works the same way."""

EPILOG = """\
examples:
  opdf distill configs/smoke-kd.yaml
  opdf distill configs/smoke-vision-tinyvit.yaml
  opdf distill configs/rt-polarity-kd-opdf.yaml seed=2 output_dir=runs/kd-opdf-s2
  opdf distill configs/rt-polarity-kd-base.yaml overparam=mpo unit_modes=3 max_steps=200
  opdf distill configs/rt-polarity-kd-opdf.yaml --resume    # continue after an interruption
  torchrun --standalone --nproc_per_node=2 -m opdf distill configs/smoke-kd.yaml threads=1"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "distill",
        help="run one distillation config (KD, BERT-of-Theseus, ...)",
        description=HELP,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(
        p,
        "YAML config file (see configs/)",
        "dotted overrides, e.g. seed=1 output_dir=runs/x max_steps=100 checkpoint_every=50 "
        "overparam=svd data.max_train_samples=512 kd.temperature=2",
    )
    p.add_argument("--resume", action="store_true",
                   help="continue the run in output_dir from its last checkpoint")  # fmt: skip
    p.add_argument("--overwrite", action="store_true",
                   help="delete an existing, non-empty output_dir first")  # fmt: skip
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config (all defaults) and exit")  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(run=run)


def run(args) -> int:
    args = split_late_flags(args)
    # the verb's work (torch) loads when it runs: see opdf.commands
    from opdf.run.allocator import keep_freed_memory
    from opdf.run.config import dump_config, load_config
    from opdf.run.distributed import is_main_process
    from opdf.run.runner import run_distill

    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        print(dump_config(cfg), end="")
        return 0
    if args.resume and args.overwrite:
        raise ConfigError("--resume and --overwrite exclude each other")
    keep_freed_memory()  # see opdf.run.allocator: faster steps, peak memory kept
    summary = run_distill(
        cfg, resume=args.resume, overwrite=args.overwrite,
        progress=False if args.no_progress else None,
    )  # fmt: skip
    if not is_main_process():
        return 0  # rank 0 prints the result
    main = summary["main_metric"]
    print(json.dumps({
        "output_dir": cfg.output_dir, "method": summary["method"],
        "overparam": summary["overparam"], "align": bool(summary["align"]),
        f"dev_{main}": round(summary["dev"][main], 4),
        f"test_{main}": round(summary["test"][main], 4),
        "train_params": summary["train_params"], "inference_params": summary["inference_params"],
        "seconds_per_step": summary["seconds_per_step"], "wall_time": summary["wall_time"],
        "world_size": summary["world_size"],
    }))  # fmt: skip
    return 0
