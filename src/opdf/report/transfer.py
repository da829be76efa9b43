"""Does the baseline's learning rate transfer to every variant? (issue 12's Fig. 2b question)

For a suite with tuned axes (``tune``, e.g. ``lr``) and a ``baseline``, each variant's row holds:

- its scale (``plain``, SVD = 0, MPO = L unit modes, ``+align`` for OPDF) and its ``lr_scaling``;
- the tuned values chosen on **dev** for it (:func:`opdf.report.stats.chosen_groups`), and its
  test mean ± std there;
- the baseline's dev-chosen tuned values, and this variant's test at those values;
- the *gap*: mean over the seeds both settings have of (test at its own dev-chosen values - test at
  the baseline's), in points; the verdict says whether it is within :data:`TOLERANCE_POINTS`.
  Nothing here chooses on test: the only test-based column, the *oracle* (the tuned values with
  the best test mean), is labelled as such and feeds no other column.
- ``vs tuned base``: the variant at its dev-chosen values minus the baseline at its own, paired
  over the seeds both have (does the variant beat a tuned baseline?).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from opdf.bench.suite import Suite, format_value
from opdf.report.render import markdown_table
from opdf.report.results import Group, axes_key, baseline_label, untuned_axes

#: the largest loss (test points) of running a variant at the baseline's learning rate that counts
#: as "the learning rate transfers" (issue 12)
TOLERANCE_POINTS = 0.3


@dataclass
class TransferRow:
    """One variant (and setting of the untuned axes): see the module docstring."""

    group: Group  # the variant at its dev-chosen tuned values
    base: Group | None  # the baseline at its dev-chosen tuned values
    at_base: Group | None  # the variant at the baseline's dev-chosen tuned values
    oracle: Group | None  # the variant's tuned values with the best test mean (never used)
    gap: float | None  # mean paired (own - at_base) test difference, metric units
    gap_n: int
    vs_base: float | None  # mean paired (own - base) test difference, metric units
    vs_base_n: int

    @property
    def verdict(self) -> str:
        if self.at_base is None or self.gap is None:
            return "-"
        if self.at_base is self.group:
            return "yes (same lr)" if "lr" in dict(self.group.axes) else "yes (same setting)"
        return "yes" if 100 * self.gap <= TOLERANCE_POINTS + 1e-9 else "no"


def _paired_mean(a: Group, b: Group, replicate: str) -> tuple[float | None, int]:
    sa = {r.cell.value(replicate): r.score("test") for r in a.results}
    sb = {r.cell.value(replicate): r.score("test") for r in b.results}
    d = [sa[s] - sb[s] for s in sa if s in sb and sa[s] is not None and sb[s] is not None]
    return (sum(d) / len(d) if d else None), len(d)


def scale_text(g: Group) -> str:
    """``plain``, ``SVD (0)``, ``L=3``; ``+align`` when the alignment loss is on (OPDF)."""
    scale = g.scale()
    text = "plain" if scale is None else "SVD (0)" if scale == 0 else f"L={scale}"
    return text + (" +align" if g.first("align") else "")


def tuned_text(suite: Suite, g: Group | None) -> str:
    if g is None:
        return "-"
    return ", ".join(f"{k}={format_value(v)}" for k, v in g.axes if k in suite.tune) or "-"


def transfer_rows(
    suite: Suite, groups: Sequence[Group], chosen: Sequence[Group]
) -> list[TransferRow]:
    """A row per dev-chosen group of a suite with tuned axes and a baseline (the baseline's own
    row included, as the reference); empty otherwise."""
    if not suite.tune or suite.baseline is None:
        return []
    by_key = {(g.label, axes_key(g.axes)): g for g in groups}
    chosen_by = {(g.label, axes_key(untuned_axes(suite, g))): g for g in chosen}
    rows = []
    for g in chosen:
        untuned = axes_key(untuned_axes(suite, g))
        bl = baseline_label(suite, g) or (g.label if g.variant == suite.baseline else None)
        base = chosen_by.get((bl, untuned)) if bl else None
        at_base = None
        if base is not None:
            tuned = {k: v for k, v in base.axes if k in suite.tune}
            axes = tuple((k, tuned.get(k, v)) for k, v in g.axes)
            at_base = by_key.get((g.label, axes_key(axes)))
        siblings = [
            h
            for h in groups
            if h.label == g.label
            and axes_key(untuned_axes(suite, h)) == untuned
            and h.mean("test") is not None
        ]
        oracle = max(siblings, key=lambda h: h.mean("test"), default=None)
        gap, gap_n = _paired_mean(g, at_base, suite.replicates) if at_base else (None, 0)
        vs, vs_n = _paired_mean(g, base, suite.replicates) if base else (None, 0)
        rows.append(TransferRow(g, base, at_base, oracle, gap, gap_n, vs, vs_n))
    return rows


def _pm(g: Group | None) -> str:
    if g is None or g.mean("test") is None:
        return "-"
    s = g.std("test")
    return f"{100 * g.mean('test'):.2f}" + (f" ± {100 * s:.2f}" if s is not None else "")


def _points(v: float | None, n: int) -> str:
    return "-" if v is None else f"{100 * v:+.2f} (n={n})"


def transfer_table(suite: Suite, rows: Sequence[TransferRow]) -> str:
    heads = ["variant", "scale", "lr scaling", "chosen on dev", "n", "test there",
             f"{suite.baseline}'s choice", "n", "test at it", "gap (points)",
             f"within {TOLERANCE_POINTS}", "vs tuned base (points)",
             "oracle: test-best (unused)"]  # fmt: skip
    lines = []
    for r in rows:
        g = r.group
        untuned = ", ".join(f"{k}={format_value(v)}" for k, v in untuned_axes(suite, g))
        name = g.label + (f" ({untuned})" if untuned else "")
        oracle = "-" if r.oracle is None else f"{tuned_text(suite, r.oracle)}: {_pm(r.oracle)}"
        lines.append([
            name, scale_text(g), g.lr_scaling(), f"{tuned_text(suite, g)} (of {g.candidates})",
            str(len(g.results)), _pm(g), tuned_text(suite, r.base),
            str(len(r.at_base.results)) if r.at_base else "0", _pm(r.at_base),
            _points(r.gap, r.gap_n), r.verdict,
            "-" if g.variant == suite.baseline else _points(r.vs_base, r.vs_base_n), oracle,
        ])  # fmt: skip
    return markdown_table(heads, lines)


def transfer_summary(rows: Sequence[TransferRow]) -> list[str]:
    """One line per lr scaling: how many over-parameterized variants the baseline's choice fits."""
    out = []
    for scaling in sorted({r.group.lr_scaling() for r in rows}, key=lambda s: (s != "none", s)):
        rs = [r for r in rows if r.group.lr_scaling() == scaling and r.group.scale() is not None]
        known = [r for r in rs if r.verdict != "-"]
        if not rs:
            continue
        ok = sum(r.verdict.startswith("yes") for r in known)
        out.append(
            f"- `lr_scaling: {scaling}`: the baseline's learning rate is within "
            f"{TOLERANCE_POINTS} points of the dev-chosen one for {ok} of {len(known)} "
            f"over-parameterized variants measured at both ({len(rs)} with results)."
        )
    return out


def _first_tuned(suite: Suite, g: Group | None) -> Any:
    return None if g is None else dict(g.axes).get(suite.tune[0])


def transfer_record(suite: Suite, r: TransferRow) -> dict:
    """One row of ``transfer.csv`` (scores in metric units, gaps in points)."""
    g = r.group
    rec: dict[str, Any] = {"label": g.label, "config": g.config_name, "variant": g.variant}
    rec.update({k: format_value(v) for k, v in untuned_axes(suite, g)})
    rec.update({
        "scheme": g.first("overparam"), "scale": g.scale(), "align": bool(g.first("align")),
        "lr_scaling": g.lr_scaling(), "chosen_on_dev": tuned_text(suite, g),
        "chosen_value": format_value(_first_tuned(suite, g)), "chosen_from": g.candidates,
        "n": len(g.results), "dev_mean": g.mean("dev"), "test_mean": g.mean("test"),
        "test_std": g.std("test"), "baseline_choice": tuned_text(suite, r.base),
        "n_at_baseline_choice": len(r.at_base.results) if r.at_base else 0,
        "test_mean_at_baseline_choice": r.at_base.mean("test") if r.at_base else None,
        "test_std_at_baseline_choice": r.at_base.std("test") if r.at_base else None,
        "gap_points": None if r.gap is None else 100 * r.gap, "gap_n": r.gap_n,
        "within_tolerance": None if r.verdict == "-" else r.verdict.startswith("yes"),
        "tolerance_points": TOLERANCE_POINTS,
        "vs_tuned_baseline_points": None if r.vs_base is None else 100 * r.vs_base,
        "vs_tuned_baseline_n": r.vs_base_n,
        "oracle_test_best": tuned_text(suite, r.oracle),
        "oracle_test_mean": r.oracle.mean("test") if r.oracle else None,
    })  # fmt: skip
    return rec
