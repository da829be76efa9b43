"""Seconds per step with the teacher's outputs cached (``teacher.cache_outputs``) vs computed.

Usage (from the repository root)::

    python benchmarks/teacher_cache.py [--steps 12] [--rounds 2] [--out FILE.md] [key=value ...]

Each measurement is a whole ``opdf distill`` run in its own process, with the settings of
the rt-polarity suites (2,000 training sentences, one thread) cut to ``--steps`` steps, as a
suite's cell would run it: ``off`` computes the teacher, ``cold`` fills the cache (the first cell
of a seed), ``warm`` reads it (every later cell of that seed). Per case the runs go off, cold,
then ``--rounds`` times off / warm, so that a shared machine's changing load hits both alike. The
ratio warm / off of the median training seconds per step is the saving, and 1 - ratio the share
of a step that the teacher took (AD-KD: its forward and backward to the embeddings). The teacher
outputs go to a fresh cache folder of the script's own (the fine-tuned teachers and models are
read from the user's opdf cache).
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

ROOT = Path(__file__).resolve().parent.parent
CASES = {  # name: (config, overrides)
    "kd base": ("configs/rt-polarity-kd-base.yaml", ["overparam=none"]),
    "kd opdf (L=3, align 100)": (
        "configs/rt-polarity-kd-base.yaml",
        ["overparam=mpo", "unit_modes=3", "align.weight=100"],
    ),
    "adkd base": ("configs/rt-polarity-adkd.yaml", ["variant=base"]),
    "adkd opdf": ("configs/rt-polarity-adkd.yaml", ["variant=opdf"]),
}
SUITE = ["data.max_train_samples=2000", "threads=1", "checkpoint_every=100000", "log_every=1000"]


def private_cache(folder: Path) -> Path:
    """An opdf cache whose entries link to the user's, without its teacher outputs."""
    from opdf.models.cache import cache_dir

    user = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    for entry in user.iterdir() if user.is_dir() else ():
        if entry.name != "teacher-outputs":
            (folder / entry.name).symlink_to(entry)
    return folder


def run(config: str, overrides: list[str], cache: bool, steps: int, env: dict, out: Path) -> dict:
    cmd = [sys.executable, "-m", "opdf", "distill", config, *SUITE, *overrides,
           f"max_steps={steps}", f"eval_every={steps}", f"teacher.cache_outputs={cache}",
           f"output_dir={out}", "--overwrite", "--no-progress"]  # fmt: skip
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "summary.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--out", type=Path)
    parser.add_argument("overrides", nargs="*", help="extra key=value for every run")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "OPDF_CACHE": str(private_cache(Path(tmp) / "cache"))}
        for name in args.cases:
            config, overrides = CASES[name]
            overrides = [*overrides, *args.overrides]
            out = Path(tmp) / "run"
            times: dict[str, list[float]] = {"off": [], "cold": [], "warm": []}
            info = {}
            order = ["off", "cold"] + ["off", "warm"] * args.rounds
            for kind in order:
                s = run(config, overrides, kind != "off", args.steps, env, out)
                times[kind].append(s["seconds_per_step"])
                if kind != "off":
                    info[kind] = s["teacher_cache"]
                print(f"{name:28s} {kind:5s} {s['seconds_per_step']:.3f} s/step", flush=True)
            off, warm = statistics.median(times["off"]), statistics.median(times["warm"])
            rows.append((name, off, times["cold"][0], warm, warm / off, info))
    heads = ["case", "off (computed)", "cold (fills)", "warm (reads)", "warm / off",
             "teacher share", "warm lookups (hits / misses)"]  # fmt: skip
    table = []
    for name, off, cold, warm, ratio, info in rows:
        w = info.get("warm", {})
        table.append([name, f"{off:.3f}", f"{cold:.3f}", f"{warm:.3f}", f"**{ratio:.2f}**",
                      f"{1 - ratio:.0%}", f"{w.get('hits')} / {w.get('misses')}"])  # fmt: skip
    lines = [
        "# Teacher outputs cached (`teacher.cache_outputs`) vs computed: seconds per step",
        "",
        f"- command: `python benchmarks/teacher_cache.py --steps {args.steps} --rounds "
        f"{args.rounds}{''.join(' ' + o for o in args.overrides)}`",
        f"- machine: {platform.machine()}, Python {platform.python_version()}; each number the "
        f"training seconds per step of one whole run ({args.steps} steps, the rt-polarity suites' "
        "settings, one thread); off and warm: medians of the interleaved runs",
        "",
        markdown_table(heads, table, pad=False),
    ]
    print_and_write("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
