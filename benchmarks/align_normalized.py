"""Does one normalized alignment weight transfer to a new task? Tested against the raw sweep.

The raw alignment weight multiplies ``L_Aux``, whose size depends on the cores' scale (~4e-3 at
step 0 for the MiniLM cut student, ~2e-2 for the Fashion-MNIST ResNet-8 from scratch), so a raw
weight tuned on one student means nothing on another. ``align.normalize: teacher`` divides each
pair's MSE by the teacher core's mean square, a relative error, so one weight should mean the
same everywhere.

The test (issue 24): the relative weight set on the text suites, applied unchanged to another
task, against that task's own raw sweep, every setting at its dev-chosen lr. The first row of
the paired table is the question: the normalized weight against the raw sweep tuned on dev
(weight and lr chosen jointly), which it meets with no search over the weight; read its 95% CI
for how much it may lose at most, not only its p. The raw side is the best of (weights x rates)
dev scores, the normalized one of the rates only, so the comparison favours the raw sweep a
little. The other rows (each raw weight, and the plain / +MPO students) are context; Holm runs
over every printed row, so the first is adjusted conservatively.

Reads the ``cells.csv`` of an exported suite (``opdf report SUITE --export DIR``); each variant's
lr is chosen on dev over the seeds on which every listed variant has all its cells (a variant
with a ``student.init`` axis gets its (init, lr) chosen jointly); test is compared paired over
those seeds.

    python benchmarks/align_normalized.py benchmarks/results/fashion-mnist-kd-init \\
        --normalized opdf-rel37 --raw opdf opdf-w100 opdf-w1000 --baseline base mpo \\
        --out benchmarks/results/fashion-mnist-kd-init/align-normalized.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from init_effect import choose, fmt, load, paired_table, shared_seeds
from opdf.report.render import markdown_table, print_and_write


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path, help="an exported suite folder (with cells.csv)")
    ap.add_argument("--normalized", required=True, help="the normalized-weight variant")
    ap.add_argument("--raw", nargs="+", required=True, help="the raw-weight variants (the sweep)")
    ap.add_argument("--baseline", nargs="*", default=["base"],
                    help="variants the alignment settings are also compared with")  # fmt: skip
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    cells = load(args.folder)
    names = [args.normalized, *args.raw, *args.baseline]
    if len(set(names)) < len(names):
        print(f"a variant is named twice among {', '.join(names)}", file=sys.stderr)
        return 2
    seeds = shared_seeds(cells, names, args.folder)
    chosen = {n: choose(cells[n], seeds) for n in names}

    def test(name: str) -> list[float]:
        return [cells[name][chosen[name]][s][1] for s in seeds]

    def at(name: str) -> str:
        return f"{name} (lr {chosen[name][1]})"

    rows = [[n, chosen[n][1], f"{len(cells[n])}", fmt([cells[n][chosen[n]][s][0] for s in seeds]),
             fmt(test(n))] for n in names]  # fmt: skip
    # the raw sweep tuned on dev: weight (variant) and lr chosen jointly
    best_raw = max(args.raw, key=lambda n: sum(cells[n][chosen[n]][s][0] for s in seeds))
    norm = args.normalized
    comps = [(f"{at(norm)} vs the raw sweep tuned on dev: {at(best_raw)}", test(norm),
              test(best_raw), seeds)]  # fmt: skip
    comps += [(f"{at(norm)} vs {at(raw)}", test(norm), test(raw), seeds)
              for raw in args.raw if raw != best_raw]  # fmt: skip
    for base in args.baseline:
        comps += [(f"{at(n)} vs {at(base)}", test(n), test(base), seeds)
                  for n in (norm, best_raw)]  # fmt: skip
    cmd = " ".join(argv if argv else sys.argv[1:])
    lines = [f"# The normalized alignment weight against the raw sweep: `{args.folder}`", "",
             f"`python benchmarks/align_normalized.py {cmd}`. Test accuracy (%), mean ± std over "
             f"seeds {' '.join(map(str, seeds))} (those with every cell of these variants); each "
             "variant at its lr chosen on dev.", "",
             markdown_table(["variant", "lr chosen on dev", "rates tried", "dev", "test"], rows,
                            pad=False), "", paired_table(comps)]  # fmt: skip
    print_and_write("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
