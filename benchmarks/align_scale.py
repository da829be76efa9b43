"""The size of the alignment loss at the start of training, raw and teacher-normalized.

Why: a raw ``align.weight`` multiplies a mean MSE whose size depends on the cores' scale (about
4e-3 for the MiniLM pairs of the rt-polarity suites), so a weight tuned for one student means
another thing at another width or unit-mode count. ``align.normalize: teacher`` divides each pair's
MSE by the teacher core's mean square. This script prints both at step 0 (the student cut from the
teacher by ``student.init``, over-parameterized, nothing trained) for students of three widths,
and the teacher cores' mean square that sets the raw scale.

    python benchmarks/align_scale.py --out benchmarks/results/align-scale.md
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification

import opdf
from opdf.models import load_model, student_from_teacher
from opdf.models.student import init_layers
from opdf.report.render import markdown_table, print_and_write


def teachers(minilm_dir: str | None) -> list[tuple[str, torch.nn.Module]]:
    """(name, frozen teacher): the fine-tuned MiniLM-L6 (or the package's pretrained one), and
    random BERTs of two widths (transformers' init, std 0.02)."""
    out = []
    model, _ = load_model(minilm_dir or "minilm-l6", 2, seed=0)
    out.append(("MiniLM-L6 (H384)" + (", fine-tuned" if minilm_dir else ", pretrained"), model))
    for hidden, layers in ((768, 12), (128, 6)):
        torch.manual_seed(0)
        cfg = BertConfig(hidden_size=hidden, num_hidden_layers=layers, intermediate_size=4 * hidden,
                         num_attention_heads=max(2, hidden // 64), num_labels=2)  # fmt: skip
        out.append((f"random BERT {layers}x{hidden}", BertForSequenceClassification(cfg)))
    return out


def measure(teacher: torch.nn.Module, init: str, unit_modes: int) -> dict[str, float]:
    teacher.requires_grad_(False).eval()
    n_teacher = teacher.config.num_hidden_layers
    student = student_from_teacher(teacher, init_layers(init, n_teacher))
    opdf.overparameterize(student, scheme="mpo", unit_modes=unit_modes)
    raw = opdf.AlignmentLoss(student, teacher, weight=1.0)
    rel = opdf.AlignmentLoss(student, teacher, weight=1.0, normalize="teacher")
    with torch.no_grad():
        t_ms = torch.stack([getattr(rel, b).pow(2).mean() for b in rel._frozen.values()]).mean()
        return {"raw": float(raw()), "relative": float(rel()), "teacher_ms": float(t_ms)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher-dir", help="the fine-tuned MiniLM-L6 folder (the suites' "
                    "cached teacher, <cache>/teachers/minilm-l6-*/student); default: "
                    "pretrained")  # fmt: skip
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.time()
    rows = []
    for name, teacher in teachers(args.teacher_dir):
        for unit_modes in (1, 3):
            for init in ("bottom", "alternate", "uniform"):
                m = measure(teacher, init, unit_modes)
                rows.append([name, str(unit_modes), init, f"{m['teacher_ms']:.3g}",
                             f"{m['raw']:.3g}", f"{m['relative']:.3g}"])  # fmt: skip
    head = ["teacher", "L", "student.init", "teacher cores' mean square", "L_Aux raw",
            "L_Aux relative"]  # fmt: skip
    text = "\n".join([
        "# Alignment loss at step 0, raw and teacher-normalized",
        "",
        f"`python benchmarks/align_scale.py {' '.join(argv if argv is not None else sys.argv[1:])}`"
        f" ({time.time() - t0:.0f} s, torch {torch.__version__}, 1 thread). Student: half the "
        "teacher's layers, chosen by `student.init`, over-parameterized with L unit modes, "
        "nothing trained; pairs: the default uniform map (student i <-> teacher 2i+1), auxiliary "
        "cores.",
        "",
        markdown_table(head, rows, pad=False),
        "",
    ])  # fmt: skip
    print_and_write(text, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
