"""Seconds per optimizer step: one process vs two data-parallel processes (torchrun, gloo, CPU).

Usage::

    python benchmarks/ddp_steps.py [--rounds 2] [--small-steps 16] [--out benchmarks/results/ddp.md]

Two configs, each with the same global batch in every variant:

- ``smoke``: ``configs/smoke-kd.yaml`` as the tests run it (tiny BERT 4 x 64, 2-layer MPO student,
  L=2, batch 16, 24 steps).
- ``small``: ``configs/rt-polarity-kd-opdf.yaml`` shortened (MiniLM-L6 teacher, 3-layer 384-wide
  student at L=3 with the alignment loss, batch 32 x 64 tokens, ``--small-steps`` steps, 1,024
  training sentences, evaluation only at the end on 64 dev / 64 test sentences). Its teacher must
  be in the cache already (``opdf finetune configs/rt-polarity-kd-opdf.yaml``).

Variants: 1 process x 1 thread, 1 process x 2 threads (the machine's two cores in one process),
2 processes x 1 thread (``torchrun --standalone --nproc_per_node=2``). The number is the run's own
``seconds_per_step`` from ``summary.json`` (time inside training steps, evaluation excluded,
rank 0's clock), the median over ``--rounds`` interleaved rounds; every run is a fresh process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from opdf.report.render import markdown_table, print_and_write

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "smoke": ["configs/smoke-kd.yaml", "student.dropout=0"],
    "small": ["configs/rt-polarity-kd-opdf.yaml", "data.max_train_samples=1024",
              "data.max_eval_samples=64", "eval_every=1000000", "checkpoint_every=1000000"],
}  # fmt: skip
VARIANTS = {"1 process x 1 thread": (1, 1), "1 process x 2 threads": (1, 2),
            "2 processes x 1 thread": (2, 1)}  # fmt: skip


def run(config: list[str], procs: int, threads: int, out: Path) -> dict:
    launcher = [sys.executable, "-m", "opdf"]
    if procs > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc_per_node={procs}", "-m", "opdf"]  # fmt: skip
    cmd = [*launcher, "distill", *config, f"threads={threads}", f"output_dir={out}",
           "--no-progress", "--overwrite"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return json.loads((out / "summary.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--small-steps", type=int, default=16)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    configs = dict(CONFIGS)
    configs["small"] = [*configs["small"], f"max_steps={args.small_steps}"]
    times: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for cname, config in configs.items():
                for vname, (procs, threads) in VARIANTS.items():
                    s = run(config, procs, threads, Path(tmp) / f"{cname}-{procs}-{threads}")
                    assert s["world_size"] == procs
                    times.setdefault((cname, vname), []).append(s["seconds_per_step"])
                    print(f"round {r}: {cname} / {vname}: {s['seconds_per_step']:.4f} s/step",
                          flush=True)  # fmt: skip
    try:
        load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        load = "?"
    cmd = f"python benchmarks/ddp_steps.py --rounds {args.rounds} --small-steps {args.small_steps}"
    lines = [
        "# Seconds per step: 1 process vs 2 data-parallel processes (CPU, gloo)",
        "",
        f"- command: `{cmd}`",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python "
        f"{platform.python_version()}; load average at the end (1 / 5 / 15 min): {load}",
        "- the global batch is the same in every variant; `seconds_per_step` from each run's "
        "summary.json (training steps only), median of the rounds",
        "",
    ]
    rows = []
    for cname in configs:
        base = statistics.median(times[(cname, "1 process x 1 thread")])
        for vname in VARIANTS:
            ts = times[(cname, vname)]
            med = statistics.median(ts)
            rows.append([cname, vname, f"{med:.4f}", ", ".join(f"{t:.4f}" for t in ts),
                         f"{med / base:.2f}"])  # fmt: skip
    heads = ["config", "variant", "s/step (median)", "every round", "vs 1 x 1"]
    lines.append(markdown_table(heads, rows, pad=False))
    print_and_write("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
