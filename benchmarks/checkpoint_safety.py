"""What checksums and safe loading cost per checkpoint: opdf's ``checkpoint.save`` (sha256 while
writing, previous.pt kept, manifest written last) and ``checkpoint.read`` (sha256 check, then
``torch.load(weights_only=True)``) against a bare atomic ``torch.save`` and an unchecked
``torch.load(weights_only=False)`` of the same checkpoint, interleaved, median of ``--repeats``.

    python benchmarks/checkpoint_safety.py --mib 256 --repeats 5 \
        --out benchmarks/results/checkpoint-safety.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from opdf.report.render import markdown_table, print_and_write
from opdf.run import checkpoint as ckpt


def make(mib: int) -> ckpt.Checkpoint:
    """A last.pt of about ``mib`` MiB: 1/3 weights, 2/3 AdamW moments, like a real one."""
    n = (mib << 20) // 4 // 3 // 64
    weights = {f"layer{i}.weight": torch.randn(n) for i in range(64)}
    moments = {
        i: {"step": torch.tensor(1.0), "exp_avg": torch.randn(n), "exp_avg_sq": torch.rand(n)}
        for i in range(64)
    }
    return ckpt.Checkpoint(step=1, modules={"student": weights},
                           optimizers={"main": {"state": moments, "param_groups": []}},
                           progress={"best": 0.0}, rng=ckpt.rng_state())  # fmt: skip


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    state = make(args.mib)
    raw = state.to_dict()
    rows = {"save (opdf)": [], "save (bare)": [], "read (opdf)": [], "read (bare)": []}
    with tempfile.TemporaryDirectory() as tmp:
        a, b = Path(tmp) / "a", Path(tmp) / "b"
        a.mkdir()
        b.mkdir()
        for _ in range(args.repeats):  # interleaved, so load changes hit both alike
            rows["save (opdf)"].append(timed(lambda: ckpt.save(state, a / ckpt.LAST,
                                                               keep_previous=True)))  # fmt: skip
            rows["save (bare)"].append(timed(lambda: ckpt.atomic_save(raw, b / ckpt.LAST)))
            rows["read (opdf)"].append(timed(lambda: ckpt.read(a / ckpt.LAST)))
            rows["read (bare)"].append(timed(lambda: torch.load(b / ckpt.LAST, weights_only=False)))
        size = (a / ckpt.LAST).stat().st_size
    med = {k: statistics.median(v) for k, v in rows.items()}
    table = []
    for op in ("save", "read"):
        o, r = med[f"{op} (opdf)"], med[f"{op} (bare)"]
        table.append([op, f"{o:.3f}", f"{r:.3f}", f"{o / r:.2f}"])
    lines = [
        f"# Checkpoint safety overhead ({size / 2**20:.0f} MiB last.pt)",
        "",
        f"`{' '.join([Path(sys.executable).name, *sys.argv])}`  ",
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f}, torch {torch.__version__}, median of {args.repeats}",
        "",
        markdown_table(["operation", "opdf (s)", "bare (s)", "ratio"], table, pad=False),
    ]
    lines += [
        "",
        "opdf save: sha256 while writing, fsync, previous.pt kept, manifest.json written after; "
        "bare: atomic torch.save. opdf read: sha256 of the file against the manifest, then "
        "torch.load(weights_only=True); bare: torch.load(weights_only=False), unchecked.",
    ]
    print_and_write("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
