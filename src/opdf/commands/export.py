"""``opdf export RUN_DIR --format onnx -o OUT``: the merged student as ONNX, checked against
PyTorch with onnxruntime."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from opdf.errors import OpdfError

DESCRIPTION = """\
Write a run's merged student (RUN_DIR/student; for an unfinished run, its best checkpoint merged
now) or a merged student folder (opdf merge's output, a save_pretrained folder, an opdf vision
model folder) as ONNX: OUT/model.onnx with dynamic batch and sequence axes for a text student
(inputs input_ids, attention_mask and, where its tokenizer makes them, token_type_ids) or a
dynamic batch axis for a vision student (pixel_values), output logits; beside it the tokenizer
and config.json (text) or architecture.json (vision), and export.json. Then onnxruntime runs the
file on a check sample of another batch size and length than the traced one, and the largest
absolute difference from PyTorch's logits is printed; above --tolerance the export fails and
no model.onnx is kept. The merged student has the parameters and the graph of a student never
over-parameterized, so the file is as fast (benchmarks/results/onnx-latency.md).
Needs pip install 'opdf[onnx]' (onnx, onnxruntime, onnxscript for torch's exporter)."""

EPILOG = """\
examples:
  opdf export runs/kd-opdf --format onnx -o exported/kd-opdf-onnx
  opdf export runs/kd-opdf/merged-last -o exported/kd-opdf-last-onnx --overwrite
  opdf export runs/fashion-mnist/kd-opdf -o exported/resnet8-onnx"""

FORMATS = ("onnx",)
# opdf.models.onnx_export.DEFAULT_TOLERANCE (that module imports torch; --help must not)
DEFAULT_TOLERANCE = 1e-4


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="write a run's merged student as ONNX (checked with onnxruntime)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR",
                   help="an opdf run folder (OUTPUT_DIR) or a merged student folder")  # fmt: skip
    p.add_argument("--format", choices=FORMATS, default="onnx", help="output format (onnx)")
    p.add_argument("-o", "--output", default=None,
                   help="output folder (default: RUN_DIR/onnx, or STUDENT_DIR-onnx)")  # fmt: skip
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help="largest accepted |onnxruntime - PyTorch| on the logits "
                        f"(default {DEFAULT_TOLERANCE:g})")  # fmt: skip
    p.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty output folder")  # fmt: skip
    p.set_defaults(run=run)


def student_folder(path):
    """``(merged student folder, default output folder, note)`` for a run folder or a merged
    student folder; an unfinished run's best checkpoint is merged into a temporary folder."""
    from opdf.models.vision import ARCHITECTURE_FILE

    path = Path(path).expanduser().resolve()  # `.` has no name to derive OUT from
    if not path.is_dir():
        raise OpdfError(f"{path} is not a folder: give a run folder or a merged student folder")
    if (path / ARCHITECTURE_FILE).is_file() or (path / "config.json").is_file():
        return path, path.with_name(path.name + "-onnx"), None
    if (path / "student").is_dir():
        return path / "student", path / "onnx", None
    if (path / "checkpoints").is_dir():
        from opdf.run.export import merge_checkpoint

        tmp = Path(tempfile.mkdtemp(prefix="opdf-export-"))
        try:
            merged = merge_checkpoint(path, tmp / "student", which="best")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # no best.pt, a damaged one: leave nothing
            raise
        return merged, path / "onnx", f"{path} is unfinished: exporting its best checkpoint"
    raise OpdfError(
        f"{path} is neither an opdf run folder (no student/ or checkpoints/) nor a merged "
        "student folder (no config.json or architecture.json)"
    )


def run(args) -> int:
    from opdf.models.onnx_export import export_student
    from opdf.run import owner

    folder, default_out, note = student_folder(args.run_dir)
    out = Path(args.output).expanduser() if args.output else default_out
    run_dir = Path(args.run_dir).expanduser().resolve()
    if out.resolve().parent == run_dir and owner.read(run_dir) is not None:
        # inside an opdf run folder: listed as opdf's, so a later --overwrite of the run may
        # remove it (listed before the write, as the trainer does)
        owner.record(run_dir, out.name, derived=True)
    if note:
        print(f"opdf export: {note}", file=sys.stderr)
    try:
        result = export_student(folder, out, tolerance=args.tolerance,
                                overwrite=args.overwrite)  # fmt: skip
    finally:
        if note:
            shutil.rmtree(folder.parent, ignore_errors=True)  # the temporary merge
    if out.resolve().parent == run_dir and owner.read(run_dir) is not None:
        owner.record(run_dir, out.name, derived=True)  # and the files now in it
    print(f"exported {result.describe()}")
    print(f"onnxruntime vs PyTorch on {result.check}: max abs difference of the logits "
          f"{result.max_abs_diff:.2e} (tolerance {result.tolerance:g})")  # fmt: skip
    return 0
