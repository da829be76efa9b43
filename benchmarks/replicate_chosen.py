"""Tune on one seed, replicate the choice: the ``exclude`` patterns that leave, for the later
seeds of a suite, only each variant's setting chosen on the first seed's dev.

A CPU cannot always afford a whole (init x lr) grid at every seed (``rt-polarity-full-init``:
~4 h a seed here). The protocol this script writes down: the first seed runs the whole grid; each
variant's (student.init, lr) is chosen on that seed's dev, as ``opdf report`` and
``tuned_base.py`` choose when every setting shares only that seed; the later seeds run the
chosen settings only, plus the plain student's best bottom-start lr (the start's own row). The
patterns are printed as YAML list items to paste under the suite's ``exclude:``; the choices
they keep are printed first, as comments, with their dev scores.

    python benchmarks/replicate_chosen.py benchmarks/results/rt-polarity-full-init --seeds 2 3
"""

from __future__ import annotations

import argparse
from pathlib import Path

from init_effect import choose, complete_seeds, load


def kept_settings(cells: dict, baseline: str) -> dict[str, set[tuple[str, str]]]:
    """Per variant, the (init, lr) settings the later seeds run: the dev choice on the seeds
    that have every setting, and for the plain student its best bottom start too."""
    kept = {}
    for variant, settings in cells.items():
        seeds = complete_seeds(settings)
        if not seeds:
            raise SystemExit(f"{variant}: no seed has all of its cells yet")
        keep = {choose(settings, seeds)}
        if variant == baseline and any(k[0] == "bottom" for k in settings):
            keep.add(choose(settings, seeds, "bottom"))
        kept[variant] = keep
    return kept


def seed_pattern(seeds: list[int]) -> str:
    """``[23]``: one character class covers single-digit seeds; seeds above 9 are refused (a
    class cannot hold them: write their patterns by hand)."""
    if all(0 <= s <= 9 for s in seeds):
        return f"[{''.join(map(str, seeds))}]" if len(seeds) > 1 else str(seeds[0])
    raise SystemExit("seeds above 9: write one pattern per seed")


def patterns(cells: dict, kept: dict[str, set[tuple[str, str]]], seeds: list[int]) -> list[str]:
    """Cell-id patterns for ``seeds``: every (variant, init) the later seeds skip whole, and
    every lr of a kept init that is not kept."""
    s = seed_pattern(seeds)
    out = []
    for variant, settings in cells.items():
        keep = kept[variant]
        for init in sorted({k[0] for k in settings}):
            if init not in {k[0] for k in keep}:
                out.append(f"{variant}__student.init={init}__*__seed={s}")
                continue
            for k in settings:
                if k[0] == init and k not in keep:
                    out.append(f"{variant}__student.init={init}__lr={k[1]}__seed={s}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path, help="the exported suite (cells.csv) of the first seed")
    ap.add_argument("--seeds", type=int, nargs="+", required=True,
                    help="the later seeds, which replicate the choices")  # fmt: skip
    ap.add_argument("--baseline", default="base", help="the plain student's variant name")
    args = ap.parse_args(argv)
    cells = load(args.folder)
    if any(k[0] == "-" for settings in cells.values() for k in settings):
        raise SystemExit(f"{args.folder}: no student.init axis; write the lr patterns by hand")
    kept = kept_settings(cells, args.baseline)
    for variant, keep in kept.items():
        for init, lr in sorted(keep):
            seeds = complete_seeds(cells[variant])
            dev = sum(cells[variant][(init, lr)][s][0] for s in seeds) / len(seeds)
            print(f"# {variant}: keeps init {init}, lr {lr} (dev {100 * dev:.2f}, "
                  f"seed(s) {' '.join(map(str, seeds))})")  # fmt: skip
    for p in patterns(cells, kept, args.seeds):
        print(f'  - "{p}"')
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
