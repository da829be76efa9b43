"""Is there one alignment strength that transfers across tasks, measured against the task loss?

Issue 24 asks for an alignment weight that does not depend on the cores' scale, "e.g. relative
to the teacher cores' norm, or a weight set from the ratio to the task loss at step 0". The
first is `align.normalize: teacher` (align-scale.md, and align-normalized.md: its one setting does
not transfer to Fashion-MNIST). This script measures the second on the raw weight sweeps already
run, with no new training: for each alignment variant of each exported suite, at its dev-chosen
(init, lr), the ratio of the weighted alignment term to the task loss at the first logged step
(read from each cell's ``metrics.jsonl``: ``align`` / (``loss`` - ``align``)), with dev and test,
and test paired against the same suite's MPO student without alignment (weight 0). If the
dev-best weight sat at about the same ratio on every task, a weight set from that ratio would
transfer; the table shows where each task's dev choice falls, and how much any weight moves
accuracy at all.

    python benchmarks/align_ratio.py \\
        benchmarks/results/rt-polarity-init=mpo,opdf,opdf-w1e4 \\
        benchmarks/results/rt-polarity-theseus-init=mpo,opdf,opdf-w1e4 \\
        benchmarks/results/fashion-mnist-kd-init=mpo,opdf,opdf-w100,opdf-w1000 \\
        --out benchmarks/results/align-ratio.md

Each ``FOLDER=VARIANTS`` lists the suite's variant without alignment first (the paired
reference), then its alignment variants. The lr (and ``student.init``) is chosen on dev over the
seeds on which every listed variant of that suite has all its cells.
"""

from __future__ import annotations

import argparse
import json
import statistics as st
import sys
from pathlib import Path

import yaml

from init_effect import choose, fmt, load, pval, shared_seeds
from opdf.report.render import markdown_table, print_and_write
from opdf.report.stats import holm, paired_stats


def cell_dir(folder: Path, variant: str, key: tuple[str, str], seed: int) -> Path:
    """The exported cell folder of ``variant`` at (init, lr) ``key`` and ``seed``."""
    init = "" if key[0] == "-" else f"student.init={key[0]}__"
    return folder / f"{variant}__{init}lr={key[1]}__seed={seed}"


def first_ratio(cell: Path) -> tuple[int, float]:
    """(step, weighted alignment term / task loss) at the first logged training step."""
    with open(cell / "metrics.jsonl") as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("split") == "train" and "loss" in rec:
                align = rec.get("align", 0.0)
                return rec["step"], align / (rec["loss"] - align)
    raise ValueError(f"{cell}/metrics.jsonl has no training record")


def align_setting(cell: Path) -> str:
    """The cell's alignment weight, and its normalization when not raw."""
    cfg = yaml.safe_load((cell / "config.yaml").read_text())
    align = cfg.get("align") or {}
    weight = float(align.get("weight") or 0.0)
    norm = align.get("normalize", "none")
    text = f"{weight:g}"
    return text if norm in (None, "none") or not weight else f"{text} ({norm}-normalized)"


def parse_spec(spec: str) -> tuple[Path, list[str]]:
    folder, sep, names = spec.partition("=")
    variants = [v for v in names.split(",") if v]
    if not sep or len(variants) < 2:
        raise SystemExit(f"expected FOLDER=NO_ALIGN,ALIGNED[,...], got {spec!r}")
    return Path(folder), variants


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("suites", nargs="+", metavar="FOLDER=VARIANTS",
                    help="an exported suite folder and its variants, the one without "
                         "alignment first: benchmarks/results/x=mpo,opdf,opdf-w1e4")  # fmt: skip
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    rows, comps = [], []
    for spec in args.suites:
        folder, names = parse_spec(spec)
        cells = load(folder)
        seeds = shared_seeds(cells, names, folder)
        ref = names[0]
        chosen = {n: choose(cells[n], seeds) for n in names}

        def test(name: str, cells=cells, chosen=chosen, seeds=seeds) -> list[float]:
            return [cells[name][chosen[name]][s][1] for s in seeds]

        best_dev = max(names, key=lambda n: st.mean(cells[n][chosen[n]][s][0] for s in seeds))
        for n in names:
            k = chosen[n]
            dirs = [cell_dir(folder, n, k, s) for s in seeds]
            ratios = [first_ratio(d) for d in dirs]
            ratio = [r for _, r in ratios]
            ratio_text = (f"{st.mean(ratio):.3g} ({min(ratio):.3g} .. {max(ratio):.3g})"
                          if any(ratio) else "0")  # fmt: skip
            start = "" if k[0] == "-" else f"{k[0]}, "
            rows.append([folder.name, n + (" (dev-best)" if n == best_dev else ""),
                         align_setting(dirs[0]), f"{start}lr {k[1]}", " ".join(map(str, seeds)),
                         f"{ratios[0][0]}", ratio_text,
                         fmt([cells[n][k][s][0] for s in seeds]), fmt(test(n))])  # fmt: skip
            if n != ref:
                comps.append((folder.name, n, ref, paired_stats(test(n), test(ref)), seeds))
    adjusted = holm([r["p"] for *_, r, _ in comps])
    prows = []
    for (suite, n, ref, r, seeds), h in zip(comps, adjusted, strict=True):
        lo, hi = r["ci_low"], r["ci_high"]
        ci = "-" if lo is None else f"[{100 * lo:+.2f}, {100 * hi:+.2f}]"
        prows.append([suite, f"{n} vs {ref}", " ".join(map(str, seeds)),
                      f"{100 * r['mean_diff']:+.2f}", ci, pval(r["p"]), pval(h)])  # fmt: skip
    cmd = " ".join(argv if argv else sys.argv[1:])
    lines = [
        "# The alignment term against the task loss, across tasks", "",
        f"`python benchmarks/align_ratio.py {cmd}`. Each variant at its (init,) lr chosen on dev "
        "over the seeds listed; ratio = the weighted alignment term / the task loss (`loss - "
        "align` of `metrics.jsonl`) at the first logged step, mean (min .. max) over the seeds; "
        "dev and test accuracy (%), mean ± std.", "",
        markdown_table(["suite", "variant", "align weight", "chosen on dev", "seeds", "step",
                        "align / task loss", "dev", "test"], rows, pad=False), "",
        "Test, paired over the seeds, against the same suite's student without alignment; Holm "
        "over the rows:", "",
        markdown_table(["suite", "comparison", "seeds", "diff (points)", "95% CI", "p",
                        "p (Holm)"], prows, pad=False),
    ]  # fmt: skip
    print_and_write("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
