"""What each choice buys at a fixed inference cost: the student's start, the learning rate, OPDF.

Reads the ``cells.csv`` of an exported suite with a ``student.init`` axis (``opdf report SUITE
--export DIR``) and, per variant and init, chooses the learning rate on dev (mean over the
seeds that have every cell of the variant), then compares on test, paired over those seeds:
the tuned plain student started from each init against the bottom-started one (what the start
buys), and every variant at its dev-chosen (init, lr) against the plain student at its own
(what over-parameterization buys over the strongest plain student). Paired t-test, a 95%
bootstrap CI of the mean difference and Holm's adjustment over the printed comparisons (the
suite report's own `paired_stats` and `holm`).

    python benchmarks/init_effect.py benchmarks/results/rt-polarity-init --baseline base \\
        --out benchmarks/results/rt-polarity-init/init-effect.md
"""

from __future__ import annotations

import argparse
import csv
import statistics as st
import sys
from collections import defaultdict
from pathlib import Path

from opdf.report.render import markdown_table, print_and_write
from opdf.report.stats import holm, paired_stats


def load(folder: Path, config: str | None = None) -> dict:
    """``{variant: {(init, lr): {seed: (dev, test)}}}`` from ``cells.csv`` (init ``-`` for a
    suite without a ``student.init`` axis, e.g. a vision one). A suite of several configs
    (rt-polarity-methods-init: dbkd, adkd, lgtm) is read one ``config`` at a time: their
    variants share names and each has its own plain student."""
    out: dict = defaultdict(lambda: defaultdict(dict))
    with open(folder / "cells.csv") as f:
        rows = list(csv.DictReader(f))
    configs = sorted({r.get("config") or "" for r in rows})
    if config is None and len(configs) > 1:
        raise SystemExit(f"{folder} holds several configs ({', '.join(configs)}): name one "
                         "(--config)")  # fmt: skip
    if config is not None and config not in configs:
        raise SystemExit(f"no config {config!r} in {folder}/cells.csv (has: "
                         f"{', '.join(c for c in configs if c) or 'none'})")  # fmt: skip
    for row in rows:
        if config is not None and row.get("config") != config:
            continue
        key = (row.get("student.init") or "-", row["lr"])
        out[row["variant"]][key][int(row["seed"])] = (float(row["dev"]), float(row["test"]))
    return out


def complete_seeds(settings: dict) -> list[int]:
    """Seeds present in every setting of a variant (a seed still running is left out)."""
    sets = [set(s) for s in settings.values()]
    return sorted(set.intersection(*sets)) if sets else []


def shared_seeds(cells: dict, names: list[str], folder: Path) -> list[int]:
    """The seeds on which every variant of ``names`` has all its cells; exits with a message
    naming what is missing (a variant not in the suite, or no such seed yet)."""
    missing = [n for n in names if n not in cells]
    if missing:
        raise SystemExit(f"no variant {', '.join(missing)} in {folder}/cells.csv (has: "
                         f"{', '.join(sorted(cells))})")  # fmt: skip
    seeds = sorted(set.intersection(*(set(complete_seeds(cells[n])) for n in names)))
    if not seeds:
        raise SystemExit(f"{folder}: no seed has every cell of {', '.join(names)} yet")
    return seeds


def choose(settings: dict, seeds: list[int], init: str | None = None) -> tuple[str, str]:
    """The (init, lr) with the best mean dev over ``seeds`` (within ``init`` when given)."""
    keys = [k for k in settings if init is None or k[0] == init]
    return max(keys, key=lambda k: st.mean(settings[k][s][0] for s in seeds))


def pval(p: float | None) -> str:
    return "-" if p is None else f"{p:.3f}"


def fmt(values: list[float]) -> str:
    sd = st.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * st.mean(values):.2f} ± {100 * sd:.2f}"


def paired_table(comps: list[tuple[str, list[float], list[float], list[int]]]) -> str:
    """The comparisons ``(name, test_a, test_b, seeds)`` as a markdown table: paired t-test, 95%
    bootstrap CI of the mean difference, and Holm over the table's rows (the suite report's own
    ``paired_stats`` and ``holm``)."""
    results = [paired_stats(a, b) for _, a, b, _ in comps]
    adjusted = holm([r["p"] for r in results])
    rows = []
    for (name, _, _, s), r, h in zip(comps, results, adjusted, strict=True):
        lo, hi = r["ci_low"], r["ci_high"]
        ci = "-" if lo is None else f"[{100 * lo:+.2f}, {100 * hi:+.2f}]"
        rows.append([name, " ".join(map(str, s)), f"{100 * r['mean_diff']:+.2f}", ci,
                     pval(r["p"]), pval(h)])  # fmt: skip
    heads = ["comparison (test, paired over seeds)", "seeds", "diff (points)", "95% CI", "p",
             "p (Holm)"]  # fmt: skip
    return markdown_table(heads, rows, pad=False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path, help="an exported suite folder (with cells.csv)")
    ap.add_argument("--baseline", default="base", help="the plain student's variant name")
    ap.add_argument("--config", help="of a suite with several configs, the one to read")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    cells = load(args.folder, args.config)
    if args.baseline not in cells:
        print(f"no variant {args.baseline!r} in {args.folder}/cells.csv", file=sys.stderr)
        return 2
    base = cells[args.baseline]
    seeds = complete_seeds(base)
    rows, comps = [], []
    inits = sorted({k[0] for k in base}, key=["bottom", "alternate", "uniform", "top"].index)
    chosen = {}
    for variant, settings in cells.items():
        vs = complete_seeds(settings)
        for init in inits:
            if any(k[0] == init for k in settings) and vs:
                k = choose(settings, vs, init)
                rows.append([variant, init, k[1], " ".join(map(str, vs)),
                             fmt([settings[k][s][0] for s in vs]),
                             fmt([settings[k][s][1] for s in vs])])  # fmt: skip
        if vs:
            chosen[variant] = (choose(settings, vs), vs)
    b_key, _ = chosen[args.baseline]
    bottom = choose(base, seeds, "bottom")
    for init in inits:
        if init == "bottom":
            continue
        k = choose(base, seeds, init)
        comps.append((f"{args.baseline} from {init} (lr {k[1]}) vs from bottom (lr {bottom[1]})",
                      [base[k][s][1] for s in seeds], [base[bottom][s][1] for s in seeds],
                      seeds))  # fmt: skip
    for variant, (k, vs) in chosen.items():
        if variant == args.baseline:
            continue
        common = [s for s in vs if s in seeds]
        settings = cells[variant]
        comps.append((f"{variant} at {k[0]}, lr {k[1]} vs {args.baseline} at {b_key[0]}, lr "
                      f"{b_key[1]} (each chosen on dev)",
                      [settings[k][s][1] for s in common], [base[b_key][s][1] for s in common],
                      common))  # fmt: skip
        if any(kk[0] == "bottom" for kk in settings):
            kb = choose(settings, vs, "bottom")
            comps.append((f"{variant} at bottom, lr {kb[1]} vs {args.baseline} at bottom, lr "
                          f"{bottom[1]} (the earlier suites' comparison)",
                          [settings[kb][s][1] for s in common],
                          [base[bottom][s][1] for s in common], common))  # fmt: skip
    lines = [f"# What the start, the learning rate and OPDF buy: `{args.folder}`", "",
             f"`python benchmarks/init_effect.py {' '.join(argv if argv else sys.argv[1:])}`. "
             "Test accuracy (%), mean ± std over the seeds that have every cell of the variant; "
             "the lr chosen on dev within each init, then the init too.", "",
             markdown_table(["variant", "student.init", "lr chosen on dev", "seeds", "dev", "test"],
                            rows, pad=False)]  # fmt: skip
    lines += ["", paired_table(comps)]
    print_and_write("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
