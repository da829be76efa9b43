"""Seconds per training step of the real runner at each ``precision``, plain and over-parameterized.

Usage::

    python benchmarks/precision_steps.py [--steps 40] [--rounds 2]
        [--out benchmarks/results/precision-steps.md]

``opdf distill configs/rt-polarity-kd-base.yaml`` (MiniLM-L6 teacher, cached outputs, 3-layer
student from alternate layers, batch 32, 2,000 sentences) for ``--steps`` steps on one thread, as
the plain student (fp32, bf16) and as +OPDF (L = 3, alignment 10,000: fp32, bf16 with opdf's
float32 contraction, bf16-contraction). Each setting runs once per round, the rounds interleaved
so that a load change on a shared machine hits every setting alike; the summary's
``seconds_per_step`` is reported (median over rounds) with its ratio to the same student's fp32
and the machine's bf16 instruction sets (AMX decides whether bf16 pays here).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bf16_contraction import cpu_line
from opdf.report.render import markdown_table, print_and_write

CONFIG = "configs/rt-polarity-kd-base.yaml"
COMMON = ["threads=1", "eval_every=100000", "checkpoint_every=100000", "seed=1",
          "data.max_train_samples=2000", "student.init=alternate", "student.layers=null",
          "teacher.cache_outputs=true"]  # fmt: skip
OPDF = "+OPDF (L=3, align 1e4)"
STUDENTS = {"plain": ["overparam=none"],
            OPDF: ["overparam=mpo", "unit_modes=3", "align.weight=10000"]}  # fmt: skip
SETTINGS = [("plain", "fp32"), ("plain", "bf16"), (OPDF, "fp32"), (OPDF, "bf16"),
            (OPDF, "bf16-contraction")]  # fmt: skip


def run(student: str, precision: str, steps: int, out: Path) -> float:
    args = [sys.executable, "-m", "opdf", "distill", CONFIG, *COMMON, *STUDENTS[student],
            f"precision={precision}", f"max_steps={steps}", f"output_dir={out}"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    if done.returncode:
        raise SystemExit(f"{' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return float(json.loads((out / "summary.json").read_text())["seconds_per_step"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    times: dict[tuple[str, str], list[float]] = {s: [] for s in SETTINGS}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for i, (student, precision) in enumerate(SETTINGS):
                out = Path(tmp) / f"r{r}-{i}"
                times[(student, precision)].append(run(student, precision, args.steps, out))
                print(f"round {r + 1}: {student} {precision}: {times[(student, precision)][-1]}",
                      file=sys.stderr)  # fmt: skip
    med = {s: statistics.median(v) for s, v in times.items()}
    rows = [[student, precision, " ".join(f"{x:.3f}" for x in times[(student, precision)]),
             f"{med[(student, precision)]:.3f}",
             f"{med[(student, 'fp32')] / med[(student, precision)]:.2f}x"]
            for student, precision in SETTINGS]  # fmt: skip
    cmd = " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        "# Seconds per step of the runner at each precision", "",
        f"`python benchmarks/precision_steps.py {cmd}`: `opdf distill {CONFIG} "
        f"{' '.join(COMMON)} max_steps={args.steps}` plus the student's and the precision's keys, "
        f"{args.rounds} interleaved rounds. CPU: {cpu_line()}.", "",
        markdown_table(["student", "precision", "s/step per round", "median", "speed-up vs fp32"],
                       rows, pad=False),
    ]  # fmt: skip
    print_and_write("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
