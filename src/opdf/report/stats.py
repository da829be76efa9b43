"""The statistics of a suite report: settings chosen on dev, paired tests, Holm's adjustment.

What it computes, and the rules that keep it honest:

- A *group* is every cell that differs only in the replicate axis (``seed``): its dev and test
  (the task's main metric) are averaged, with the sample standard deviation (ddof 1).
- A *setting* is a group without its tuned axes (``tune``, default ``lr``). For each setting the
  tuned values are chosen by the mean **dev** score over seeds (ties: the first in suite order);
  :func:`choose_on_dev` sees dev scores only, so test can never influence the choice.
- Each variant is compared with the suite's ``baseline`` variant of the same config and the same
  untuned axes, over the seeds both have, at their dev-chosen settings and at each tuned value
  alike: the mean paired difference of test (points), a two-sided paired t-test
  (``scipy.stats.ttest_rel``) and a 95% percentile bootstrap CI of the mean difference (10,000
  resamples of the seeds, fixed RNG seed 0).
- A report makes several such comparisons, so its headline ones (each variant at its dev-chosen
  setting, or at the same setting when nothing is tuned) also get Holm's step-down adjusted p
  over all of them: a Holm p below 0.05 keeps the chance of any false claim among them at 5%.
  The per-lr comparisons are diagnostics and stay unadjusted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from opdf.bench.suite import Suite, format_value
from opdf.report.results import Group, axes_key, axis_number, baseline_label, untuned_axes

BOOTSTRAP_SAMPLES = 10_000


@dataclass
class Comparison:
    """A variant vs its baseline over the seeds both have: at one setting, paired on test."""

    label: str
    baseline: str
    setting: str  # "chosen on dev" or e.g. "lr=5e-5"
    untuned: tuple[tuple[str, Any], ...]
    seeds: list[Any]
    stats: dict


def choose_on_dev(candidates: Sequence[tuple[Any, float | None]]) -> Any:
    """The candidate with the highest dev score (the first on ties); ``(key, dev mean)`` pairs
    are all this function sees, so a test score cannot take part in the choice."""
    best, best_dev = None, -math.inf
    for key, dev in candidates:
        if dev is not None and dev > best_dev:
            best, best_dev = key, dev
    return best


def chosen_groups(suite: Suite, groups: Sequence[Group]) -> list[Group]:
    """One group per (label, untuned axes): the dev-chosen tuned values (marks ``chosen``).

    In a partly finished suite the candidates may have different seeds; they are compared on the
    seeds they all have (a setting with one lucky seed does not beat one averaged over three),
    or on all of their own seeds when they share none."""

    def setting(g: Group) -> tuple:
        return g.label, axes_key(untuned_axes(suite, g))

    settings: dict[tuple, list[Group]] = {}
    for g in groups:
        settings.setdefault(setting(g), []).append(g)
    out = []
    rep = suite.replicates
    for members in settings.values():
        scored = [set(g.seeds(rep)) for g in members if g.mean("dev") is not None]
        common = set.intersection(*scored) if scored else set()
        idx = choose_on_dev([(i, g.mean("dev", common or None, rep))
                             for i, g in enumerate(members)])  # fmt: skip
        if idx is None:
            continue
        members[idx].chosen = True
        members[idx].candidates = sum(g.mean("dev") is not None for g in members)
        members[idx].compared_seeds = tuple(sorted(common, key=str))
        members[idx].grid_end = grid_ends(suite, members[idx], members)
        out.append(members[idx])
    # in the suite's order (base, svd, mpo, ...), not in the order of the first finished cell,
    # which in a sparse or partly run grid can put a variant with an extra setting first
    first: dict[tuple, int] = {}
    for c in suite.grid_cells():
        untuned = tuple((k, v) for k, v in c.values if k != rep and k not in suite.tune)
        first.setdefault((c.label, axes_key(untuned)), len(first))
    return sorted(out, key=lambda g: first.get(setting(g), len(first)))


def grid_ends(suite: Suite, chosen: Group, members: Sequence[Group]) -> tuple[str, ...]:
    """A note per numeric tuned axis (``lr``) whose dev-chosen value is the lowest or highest of
    the values run so far, the other tuned values held at the chosen ones (the lr within the
    chosen ``student.init``): the best may lie beyond, so the grid should go one step further
    there before the choice is read (a choice among two values is always at an end)."""
    values = dict(chosen.axes)
    scored = [dict(g.axes) for g in members if g.mean("dev") is not None]
    out = []
    for axis in suite.tune:
        mine = axis_number(values.get(axis))
        if mine is None:
            continue  # a categorical axis (student.init) has no ends
        tried = {x for axes in scored
                 if all(axes.get(k) == values.get(k) for k in suite.tune if k != axis)
                 and (x := axis_number(axes.get(axis))) is not None}  # fmt: skip
        lo, hi = min(tried), max(tried)
        if lo < hi and mine in (lo, hi):
            end = "lowest" if mine == lo else "highest"
            out.append(
                f"{axis}={format_value(values[axis])} is the {end} of the {len(tried)} run"
                f" ({next_step(suite, chosen, axis, sorted(tried, reverse=mine == hi))})"
            )
    return tuple(out)


#: the largest ratio between an end and its neighbour that :func:`next_step` repeats outward
MAX_STEP_RATIO = 10.0


def next_step(suite: Suite, chosen: Group, axis: str, tried: Sequence[float]) -> str:
    """What to run beyond an end: ``tried`` sorted from the end (the chosen value) inwards. The
    suite's next grid value out there if it has one (excluded, or without a result yet), else
    one step of the same ratio as between the end and its neighbour (positive values at most
    ``MAX_STEP_RATIO`` apart, as a rate grid), else a plain "extend the grid beyond"."""
    end, inner = tried[0], tried[1]
    outward = end < inner  # the lowest end: the next value lies below it
    values = dict(chosen.axes)
    beyond = sorted((x for v in suite.grid.get(axis, [])
                     if (x := axis_number(v)) is not None and (x < end if outward else x > end)),
                    reverse=outward)  # fmt: skip
    if beyond:
        nxt = beyond[0]
        cells = [c for c in suite.grid_cells() if c.label == chosen.label
                 and axis_number(c.value(axis)) == nxt
                 and all(c.value(k) == v for k, v in values.items() if k != axis)]  # fmt: skip
        shown = next((format_value(c.value(axis)) for c in cells), short_number(nxt))
        if cells and all(suite.excluded(c.id) for c in cells):
            pats = sorted({p for c in cells for p in suite.excluding(c.id)})
            return f"next: {axis}={shown}, excluded by {', '.join(map(repr, pats))}"
        return f"next: {axis}={shown}, in the grid, no result yet (not run, running or failed)"
    if end > 0 and inner > 0:
        ratio = inner / end if outward else end / inner  # > 1: the values are distinct
        if ratio <= MAX_STEP_RATIO:
            nxt = short_number(end / ratio if outward else end * ratio)
            return f"next: add {axis}={nxt} to the grid, one step of x{ratio:.3g} further"
    side = "below" if outward else "above"
    return f"next: extend the grid {side} {axis}={format_value(values[axis])}"


def short_number(x: float) -> str:
    """``0.096`` as ``9.6e-2``: the way the suites write their rates."""
    mantissa, exponent = f"{x:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def paired_stats(a: Sequence[float], b: Sequence[float], *, samples: int = BOOTSTRAP_SAMPLES,
                 rng_seed: int = 0) -> dict:  # fmt: skip
    """Paired comparison of ``a`` (variant) and ``b`` (baseline), same order of seeds: mean and
    std of the differences, t and two-sided p of ``scipy.stats.ttest_rel``, and the 95%
    percentile bootstrap CI of the mean difference."""
    import numpy as np  # here, not at the top: `opdf --help` imports this module and no numpy

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {len(a)} vs {len(b)}")
    d = a - b
    n = len(d)
    out: dict[str, Any] = {"n": n, "mean_diff": float(d.mean()) if n else None,
                           "std_diff": float(d.std(ddof=1)) if n > 1 else None,
                           "t": None, "p": None, "ci_low": None, "ci_high": None}  # fmt: skip
    if n > 1 and float(d.std(ddof=1)) > 0:
        from scipy import stats  # heavy: loaded only when a paired test is computed

        res = stats.ttest_rel(a, b)
        out["t"], out["p"] = float(res.statistic), float(res.pvalue)
    if n > 1:
        rng = np.random.default_rng(rng_seed)
        means = d[rng.integers(0, n, size=(samples, n))].mean(axis=1)
        out["ci_low"], out["ci_high"] = (float(x) for x in np.percentile(means, [2.5, 97.5]))
    return out


HEADLINE_SETTINGS = ("chosen on dev", "same setting")


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (None stays None and is not counted): the i-th
    smallest of m becomes ``max over j <= i of min(1, (m - j + 1) p_(j))``."""
    order = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    m, out, running = len(order), [None] * len(pvalues), 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def adjust_headline(comparisons: list[Comparison]) -> None:
    """``stats["p_holm"]``: Holm over the headline comparisons, None for the others."""
    head = [c for c in comparisons if c.setting in HEADLINE_SETTINGS]
    for c, adjusted in zip(head, holm([c.stats["p"] for c in head]), strict=True):
        c.stats["p_holm"] = adjusted
        c.stats["family"] = sum(h.stats["p"] is not None for h in head)
    for c in comparisons:
        c.stats.setdefault("p_holm", None)
        c.stats.setdefault("family", None)


def compare(suite: Suite, groups: Sequence[Group], chosen: Sequence[Group]) -> list[Comparison]:
    """Every variant vs the baseline: at the dev-chosen settings, then at each tuned value."""
    by_key = {(g.label, axes_key(g.axes)): g for g in groups}
    chosen_by = {(g.label, axes_key(untuned_axes(suite, g))): g for g in chosen}
    out = []

    def pair(g: Group, base: Group, setting: str) -> None:
        rep = suite.replicates
        ga = {r.cell.value(rep): r.score("test") for r in g.results}
        gb = {r.cell.value(rep): r.score("test") for r in base.results}
        seeds = [s for s in ga if s in gb and ga[s] is not None and gb[s] is not None]
        if not seeds:
            return
        stats = paired_stats([ga[s] for s in seeds], [gb[s] for s in seeds])
        out.append(Comparison(g.label, base.label, setting, untuned_axes(suite, g), seeds, stats))

    for g in chosen:
        bl = baseline_label(suite, g)
        base = chosen_by.get((bl, axes_key(untuned_axes(suite, g)))) if bl else None
        if base is not None:
            pair(g, base, "chosen on dev" if suite.tune else "same setting")
    if suite.tune:
        for g in groups:
            bl = baseline_label(suite, g)
            base = by_key.get((bl, axes_key(g.axes))) if bl else None
            if base is not None:
                tuned = ", ".join(f"{k}={format_value(v)}" for k, v in g.axes if k in suite.tune)
                pair(g, base, tuned)
    adjust_headline(out)
    return out
