"""Is OPDF worth it against the strongest plain student? Every setting's answer in one table.

Each argument names an exported suite (``opdf report SUITE --export DIR``) as
``LABEL=FOLDER`` or ``LABEL=FOLDER@CONFIG`` (one config of a several-config suite). Per suite,
as ``init_effect.py`` does: the plain student's (init, lr) and every other variant's are chosen
on dev (mean over the seeds that have all of the variant's cells); each variant is compared with
the plain student on test, paired over their shared seeds; where the suite tunes the start, one
row more says what the start alone buys (the tuned plain student against the bottom-started
one). Holm's adjustment runs over all settings together, within each family: the variants'
rows (the family a reader scans when asking "does over-parameterization help anywhere?") and
the start's rows. Writes a markdown table and, with ``--plot``, a forest plot of the paired
differences and their 95% CIs.

    python benchmarks/tuned_base.py KD=benchmarks/results/rt-polarity-init \\
        Theseus=benchmarks/results/rt-polarity-theseus-init \\
        --out benchmarks/results/tuned-base.md --plot benchmarks/results/tuned-base.png
"""

from __future__ import annotations

import argparse
import functools
import statistics as st
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from init_effect import choose, complete_seeds, load, pval
from opdf.report.render import markdown_table, print_and_write
from opdf.report.stats import holm, paired_stats


@dataclass
class Row:
    """One paired comparison: ``variant`` at ``key`` against the plain student at ``base_key``."""

    setting: str
    variant: str
    key: tuple[str, str]
    base_key: tuple[str, str]
    seeds: list[int]
    test: list[float]
    base_test: list[float]
    start: bool = False  # the start's own effect (plain vs bottom-started plain), not a variant

    @functools.cached_property
    def stats(self) -> dict:
        return paired_stats(self.test, self.base_test)


def parse_source(text: str) -> tuple[str, Path, str | None]:
    """``LABEL=FOLDER[@CONFIG]`` -> (label, folder, config); exits with the form on a bad one."""
    label, sep, rest = text.partition("=")
    if not sep or not label or not rest:
        raise SystemExit(f"expected LABEL=FOLDER or LABEL=FOLDER@CONFIG, got {text!r}")
    folder, at, config = rest.rpartition("@")  # a folder's own name may hold an @
    if not at or not (Path(folder) / "cells.csv").is_file():
        folder, config = rest, ""
    if not (Path(folder) / "cells.csv").is_file():
        raise SystemExit(f"{folder}: no cells.csv (export the suite with opdf report --export)")
    return label, Path(folder), config or None


def rows_of(label: str, folder: Path, config: str | None, baseline: str,
            left_out: list[str]) -> list[Row]:  # fmt: skip
    """The start row (where the plain student's start is tuned) and one row per variant; a
    variant with fewer than 2 seeds shared with the plain student is named in ``left_out``.

    Each choice is made on the seeds on which every setting of its variant ran (in a full grid
    all of them; in a suite that replicates only the chosen settings beyond its first seed, that
    seed), as ``opdf report`` makes it; each comparison is paired over every seed on which both
    chosen settings ran."""
    cells = load(folder, config)
    if baseline not in cells:
        raise SystemExit(f"no variant {baseline!r} in {folder}/cells.csv (has: "
                         f"{', '.join(sorted(cells))})")  # fmt: skip
    base = cells[baseline]
    seeds = complete_seeds(base)
    if not seeds:
        raise SystemExit(f"{folder}: no seed has every cell of {baseline} yet")
    b_key = choose(base, seeds)
    out = []
    inits = {k[0] for k in base}
    if "bottom" in inits and len(inits) > 1 and b_key[0] != "bottom":
        bottom = choose(base, seeds, "bottom")
        out.append(_row(label, baseline, b_key, bottom, base[b_key], base[bottom], left_out,
                        start=True))  # fmt: skip
    for variant in suite_order(folder, cells):
        if variant == baseline:
            continue
        settings = cells[variant]
        chosen_on = complete_seeds(settings)
        if not chosen_on:
            left_out.append(f"{label} {variant} (no seed has all its cells)")
            continue
        k = choose(settings, chosen_on)
        out.append(_row(label, variant, k, b_key, settings[k], base[b_key], left_out))
    return [r for r in out if r is not None]


def _row(label: str, variant: str, key: tuple[str, str], base_key: tuple[str, str], runs: dict,
         base_runs: dict, left_out: list[str], start: bool = False) -> Row | None:  # fmt: skip
    """``variant`` at ``key`` against the plain student at ``base_key``, paired over the seeds
    both ran; None (named in ``left_out``) with fewer than 2."""
    seeds = sorted(set(runs) & set(base_runs))
    if len(seeds) < 2:
        what = "the start" if start else variant
        left_out.append(f"{label} {what} ({len(seeds)} seed(s) shared with the plain student)")
        return None
    return Row(label, variant, key, base_key, seeds, [runs[s][1] for s in seeds],
               [base_runs[s][1] for s in seeds], start=start)  # fmt: skip


def suite_order(folder: Path, cells: dict) -> list[str]:
    """The variants in the order the exported ``suite.yaml`` lists them (else as read)."""
    try:
        listed = list((yaml.safe_load((folder / "suite.yaml").read_text()) or {})["variants"])
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        listed = []
    return [v for v in listed if v in cells] + [v for v in cells if v not in listed]


def where(key: tuple[str, str]) -> str:
    return f"lr {key[1]}" if key[0] == "-" else f"{key[0]}, lr {key[1]}"


def table(rows: list[Row]) -> str:
    stats = [r.stats for r in rows]
    adjusted: list[float | None] = [None] * len(rows)
    for family in (True, False):  # the start's rows, the variants' rows: Holm within each
        idx = [i for i, r in enumerate(rows) if r.start is family]
        for i, h in zip(idx, holm([stats[i]["p"] for i in idx]), strict=True):
            adjusted[i] = h
    out = []
    for r, s, h in zip(rows, stats, adjusted, strict=True):
        lo, hi = s["ci_low"], s["ci_high"]
        ci = "-" if lo is None else f"[{100 * lo:+.2f}, {100 * hi:+.2f}]"
        what = (f"plain, {r.key[0]} start vs bottom ({where(r.base_key)})" if r.start
                else f"{r.variant} vs plain ({where(r.base_key)})")  # fmt: skip
        sd = st.stdev(r.test) if len(r.test) > 1 else 0.0
        out.append([r.setting, what, where(r.key), " ".join(map(str, r.seeds)),
                    f"{100 * st.mean(r.test):.2f} ± {100 * sd:.2f}",
                    f"{100 * s['mean_diff']:+.2f}", ci, pval(s["p"]), pval(h)])  # fmt: skip
    heads = ["setting", "comparison (test, paired)", "its (init,) lr on dev", "seeds",
             "its test", "diff (points)", "95% CI", "p", "p (Holm)"]  # fmt: skip
    return markdown_table(heads, out, pad=False)


def plot(rows: list[Row], path: Path) -> None:
    """A forest plot: one line per row, grouped by setting; the start's rows in another colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 0.32 * len(rows) + 1.2))
    names = []
    for i, r in enumerate(rows):
        s = r.stats
        y = len(rows) - 1 - i
        mean = 100 * s["mean_diff"]
        colour = "tab:green" if r.start else "tab:blue"
        if s["ci_low"] is not None:
            lo, hi = 100 * s["ci_low"], 100 * s["ci_high"]
            ax.plot([lo, hi], [y, y], color=colour, lw=2)
        ax.plot([mean], [y], "o", color=colour)
        what = f"plain, {r.key[0]} vs bottom start" if r.start else f"{r.variant} vs plain"
        names.append(f"{r.setting}: {what} ({len(r.seeds)} seeds)")
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(len(rows)), list(reversed(names)), fontsize=8)
    ax.set_xlabel("test accuracy difference (points)\npaired over seeds, 95% bootstrap CI")
    ax.set_title("Each student at its own dev-chosen (start,) lr,\nagainst the tuned plain one",
                 fontsize=9)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sources", nargs="+", metavar="LABEL=FOLDER[@CONFIG]",
                    help="an exported suite folder (with cells.csv), named")  # fmt: skip
    ap.add_argument("--baseline", default="base", help="the plain student's variant name")
    ap.add_argument("--out", type=Path, help="write the markdown here too")
    ap.add_argument("--plot", type=Path, help="write the forest plot here (png)")
    args = ap.parse_args(argv)
    left_out: list[str] = []
    rows = [r for src in args.sources for r in rows_of(*parse_source(src), args.baseline, left_out)]
    command = " ".join(argv if argv else sys.argv[1:])
    text = "\n".join([
        "# OPDF against the strongest plain student, every setting",
        "",
        f"`python benchmarks/tuned_base.py {command}`. Each student at the (student.init and) lr "
        "its suite chose on dev (mean dev over the seeds on which all of its settings ran); test "
        "accuracy (%) mean ± std over the seeds on which it and the chosen plain student ran, "
        "the paired difference against it, a 95% bootstrap CI, the paired t-test and Holm's "
        "adjustment over all settings, within each family (the variants' rows; the start's "
        "rows). Variant names are the suites' own (each folder's suite.yaml gives their "
        "settings).",
        "",
        table(rows),
    ])  # fmt: skip
    if left_out:
        text += "\n\nLeft out (a paired test needs 2 seeds): " + "; ".join(left_out) + "."
    print_and_write(text + "\n", args.out)
    if args.plot:
        plot(rows, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
