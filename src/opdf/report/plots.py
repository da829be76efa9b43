"""PNG plots of a suite report (matplotlib, Agg backend: no display needed).

The paper's Fig. 2 analogues, each with error bars of one standard deviation over seeds:

- ``accuracy-vs-lr.png``: test score against the first tuned axis (learning rate), one line per
  variant (and per value of the untuned axes, e.g. the scale);
- ``accuracy-vs-scale.png``: test score at the dev-chosen learning rate against the number of
  unit modes (SVD = 0, MPO = L), the plain student as a band;
- ``variants.png``: bars of every variant at its dev-chosen setting (base, +SVD, +MPO, +OPDF).

A plot whose axis has fewer than two values in the finished cells is not drawn.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from opdf.bench.suite import format_value

if TYPE_CHECKING:  # pragma: no cover
    from opdf.report.suite import Group, SuiteReport


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _number(v) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _pct(v):
    return None if v is None else 100 * v


def _err(g: Group) -> float:
    s = g.std("test")
    return 0.0 if s is None else 100 * s


def _ylabel(report: SuiteReport) -> str:
    metric = report.results[0].metric if report.results else "score"
    return f"test {metric} (%)"


def plot_lr(report: SuiteReport, path: Path) -> bool:
    suite = report.suite
    if not suite.tune:
        return False
    axis = suite.tune[0]
    lines: dict[str, list[tuple[float, float, float]]] = {}
    for g in report.groups:
        x = _number(dict(g.axes).get(axis))
        y = _pct(g.mean("test"))
        if x is None or y is None:
            continue
        other = ", ".join(f"{k}={format_value(v)}" for k, v in g.axes if k != axis)
        name = g.label + (f" ({other})" if other else "")
        lines.setdefault(name, []).append((x, y, _err(g)))
    if not any(len({x for x, _, _ in pts}) > 1 for pts in lines.values()):
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, pts in lines.items():
        pts.sort()
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts],
                    marker="o", capsize=3, label=name)  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel(axis)
    ax.set_ylabel(_ylabel(report))
    ax.set_title(f"{suite.name}: test vs {axis} (mean ± std over {suite.replicates})")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_scale(report: SuiteReport, path: Path) -> bool:
    groups = report.chosen if report.suite.tune else report.groups
    series: dict[str, list[tuple[int, float, float]]] = {}
    plain: list[Group] = []
    for g in groups:
        y = _pct(g.mean("test"))
        if y is None:
            continue
        scale = g.scale()
        if scale is None:
            plain.append(g)
            continue
        name = (g.config_name + " " if g.config_name else "") + (
            "aligned" if g.first("align") else "not aligned"
        )
        series.setdefault(name, []).append((scale, y, _err(g)))
    if not any(len({s for s, _, _ in pts}) > 1 for pts in series.values()):
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, pts in series.items():
        pts.sort()
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts],
                    marker="o", capsize=3, label=name)  # fmt: skip
    for g in plain:
        y, e = _pct(g.mean("test")), _err(g)
        ax.axhline(y, color="gray", linestyle="--", label=f"{g.label} (plain student)")
        if e:
            ax.axhspan(y - e, y + e, color="gray", alpha=0.15)
    ax.set_xticks(sorted({p[0] for pts in series.values() for p in pts}))
    ax.set_xlabel("unit modes L (0 = SVD, two cores)")
    ax.set_ylabel(_ylabel(report))
    chosen = " at the dev-chosen " + ", ".join(report.suite.tune) if report.suite.tune else ""
    ax.set_title(f"{report.suite.name}: test vs scale{chosen}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_variants(report: SuiteReport, path: Path) -> bool:
    groups = [g for g in (report.chosen if report.suite.tune else report.groups)
              if g.mean("test") is not None]  # fmt: skip
    if len(groups) < 2:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4.8, 0.9 * len(groups) + 1.5), 4.2))
    names = []
    for g in groups:
        untuned = ", ".join(f"{k}={format_value(v)}" for k, v in g.axes
                            if k not in report.suite.tune)  # fmt: skip
        names.append(g.label + (f"\n{untuned}" if untuned else ""))
    ys = [_pct(g.mean("test")) for g in groups]
    errs = [_err(g) for g in groups]
    ax.bar(range(len(groups)), ys, yerr=errs, capsize=4, color="tab:blue", alpha=0.8)
    for i, (y, g) in enumerate(zip(ys, groups, strict=True)):
        ax.text(i, y + (errs[i] or 0) + 0.1, f"{y:.2f}\n(n={len(g.results)})", ha="center",
                va="bottom", fontsize=7)  # fmt: skip
    low = min(y - e for y, e in zip(ys, errs, strict=True))
    high = max(y + e for y, e in zip(ys, errs, strict=True))
    pad = max(1.0, 0.15 * (high - low))
    ax.set_ylim(low - pad, high + 2.5 * pad)
    ax.set_xticks(range(len(groups)), names, fontsize=8)
    ax.set_ylabel(_ylabel(report))
    tuned = " (each at its dev-chosen " + ", ".join(report.suite.tune) + ")" \
        if report.suite.tune else ""  # fmt: skip
    ax.set_title(f"{report.suite.name}: variants{tuned}", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


PLOTS = {"accuracy-vs-lr.png": plot_lr, "accuracy-vs-scale.png": plot_scale,
         "variants.png": plot_variants}  # fmt: skip


def write_plots(report: SuiteReport, dest: Path) -> list[Path]:
    """Draw every plot the finished cells support into ``dest``; returns the files written."""
    written = []
    for name, fn in PLOTS.items():
        if fn(report, dest / name):
            written.append(dest / name)
    return written
