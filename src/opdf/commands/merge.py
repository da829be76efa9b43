"""``opdf merge RUN_DIR``: a run's checkpoint -> a merged, plain model (transformers, or for an
image run ``model.safetensors`` + ``architecture.json``)."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "merge",
        help="merge a run's checkpoint (MPO/SVD cores) into a plain model",
        description=(
            "Contract the over-parameterized cores of a run's checkpoint (best on dev, or the\n"
            "last one) back into plain weights and save the model with save_pretrained: stock\n"
            "transformers loads it without opdf, with the original parameter count. For an\n"
            "image run the folder holds model.safetensors and architecture.json, which\n"
            "opdf.models.load_vision_model(folder) rebuilds. Finished runs already hold this in\n"
            "OUTPUT_DIR/student; use this verb on an unfinished or interrupted run. The output\n"
            "inside the run folder belongs to the run: distill --overwrite replaces it too."
        ),
        epilog="examples:\n  opdf merge runs/kd-opdf --which last -o exported/kd-opdf\n"
        "  opdf merge runs/fashion-mnist/kd-opdf",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", help="an opdf run folder (OUTPUT_DIR) or its checkpoints/ folder")
    p.add_argument("-o", "--output", default=None,
                   help="where to save (default: RUN_DIR/merged-<which>)")  # fmt: skip
    p.add_argument("--which", choices=("best", "last"), default="best",
                   help="which checkpoint (default: best)")  # fmt: skip
    p.add_argument("--overwrite", action="store_true",
                   help="replace what an earlier merge wrote in the output folder (a folder "
                   "holding anything else is refused, nothing deleted)")  # fmt: skip
    p.set_defaults(run=run)


def run(args) -> int:
    from opdf.run.export import merge_checkpoint

    out = merge_checkpoint(args.run_dir, args.output, which=args.which, overwrite=args.overwrite)
    print(out)
    return 0
