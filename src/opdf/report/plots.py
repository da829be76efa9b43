"""PNG plots of a suite report (matplotlib, Agg backend: no display needed).

The paper's Fig. 2 analogues, each with error bars of one standard deviation over seeds:

- ``accuracy-vs-lr.png``: test score against the first tuned axis (learning rate), one line per
  variant (and per value of the untuned axes, e.g. the scale), one panel per ``lr_scaling`` when
  the suite has several (the plain student dashed in each);
- ``best-lr-vs-scale.png`` (Fig. 2b): the dev-chosen learning rate against the number of unit
  modes, one line per ``lr_scaling`` (and alignment), the plain student's choice as a reference;
- ``accuracy-vs-scale.png``: test score at the dev-chosen learning rate against the number of
  unit modes (SVD = 0, MPO = L), the plain student as a band;
- ``variants.png``: bars of every variant at its dev-chosen setting (base, +SVD, +MPO, +OPDF),
  one colour per variant; with several base configs (methods) one block of bars per method.

A plot whose axis has fewer than two values in the finished cells is not drawn.
"""

from __future__ import annotations

from pathlib import Path

from opdf.bench.suite import format_value
from opdf.extras import require
from opdf.report.document import SuiteReport
from opdf.report.results import Group, axis_number


def _pyplot():
    # matplotlib is an optional extra (opdf[report]), loaded only when a plot is drawn
    matplotlib = require("matplotlib", "opdf report's plots")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _short(v: float) -> str:
    """``2e-4`` rather than ``0.0002``: learning rates on an axis."""
    mantissa, exp = f"{v:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exp)}"


def _pct(v):
    return None if v is None else 100 * v


def _err(g: Group) -> float:
    s = g.std("test")
    return 0.0 if s is None else 100 * s


def _ylabel(report: SuiteReport) -> str:
    metric = report.results[0].metric if report.results else "score"
    return f"test {metric} (%)"


def _lr_lines(
    report: SuiteReport, axis: str, groups
) -> dict[str, list[tuple[float, float, float]]]:
    lines: dict[str, list[tuple[float, float, float]]] = {}
    labels: dict[str, str] = {}
    for g in groups:
        x = axis_number(dict(g.axes).get(axis))
        y = _pct(g.mean("test"))
        if x is None or y is None:
            continue
        other = ", ".join(f"{k}={format_value(v)}" for k, v in g.axes if k != axis)
        name = g.label + (f" ({other})" if other else "")
        lines.setdefault(name, []).append((x, y, _err(g)))
        labels[name] = g.label
    for pts in lines.values():
        pts.sort()
    # lines (and legend, colours) in the suite's variant order, whatever setting finished first
    order = _label_order(report)
    names = sorted(lines, key=lambda n: order.get(labels[n], len(order)))
    return {n: lines[n] for n in names}


def _label_order(report: SuiteReport) -> dict[str, int]:
    order: dict[str, int] = {}
    for c in report.suite.grid_cells():
        order.setdefault(c.label, len(order))
    return order


def _panels(report: SuiteReport) -> dict[str, list[Group]]:
    """One panel per ``lr_scaling`` when the suite has more than one (the plain student, which no
    rule changes, in every panel); else a single panel."""
    scalings = sorted({g.lr_scaling() for g in report.groups if g.scale() is not None},
                      key=lambda s: (s != "none", s))  # fmt: skip
    if len(scalings) < 2:
        return {"": list(report.groups)}
    return {f"lr_scaling: {s}": [g for g in report.groups
                                 if g.scale() is None or g.lr_scaling() == s]
            for s in scalings}  # fmt: skip


def plot_lr(report: SuiteReport, path: Path) -> bool:
    suite = report.suite
    if not suite.tune:
        return False
    axis = suite.tune[0]
    panels = {name: _lr_lines(report, axis, gs) for name, gs in _panels(report).items()}
    if not any(len({x for x, _, _ in pts}) > 1 for ls in panels.values() for pts in ls.values()):
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 4.6), sharey=True,
                             squeeze=False)  # fmt: skip
    plain = {g.label for g in report.groups if g.scale() is None}
    for ax, (title, lines) in zip(axes[0], panels.items(), strict=True):
        for name, pts in lines.items():
            ref = len(panels) > 1 and name.split(" (")[0] in plain
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts],
                        marker="o", capsize=3, label=name + (" (plain)" if ref else ""),
                        color="gray" if ref else None, linestyle="--" if ref else "-")  # fmt: skip
        ax.set_xscale("log")
        xs = sorted({p[0] for pts in lines.values() for p in pts})
        ax.set_xticks(xs, [_short(x) for x in xs])
        ax.minorticks_off()
        ax.set_xlabel(axis)
        ax.set_title(title or f"test vs {axis}", fontsize=10)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(_ylabel(report))
    fig.suptitle(f"{suite.name}: test vs {axis} (mean ± std over {suite.replicates})", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_best_lr(report: SuiteReport, path: Path) -> bool:
    """The Fig. 2b analogue: the dev-chosen learning rate against the scale, one line per
    ``lr_scaling`` (and alignment), the plain student's choice as a dashed reference."""
    suite = report.suite
    if not suite.tune or not report.chosen:
        return False
    axis = suite.tune[0]
    series: dict[str, list[tuple[int, float, int]]] = {}
    plain: list[tuple[str, float, int]] = []
    for g in report.chosen:
        lr = axis_number(dict(g.axes).get(axis))
        if lr is None:
            continue
        scale = g.scale()
        if scale is None:
            plain.append((g.label, lr, len(g.results)))
            continue
        name = f"lr_scaling: {g.lr_scaling()}" + (" + align" if g.first("align") else "")
        series.setdefault(name, []).append((scale, lr, len(g.results)))
    if len({s for pts in series.values() for s, _, _ in pts}) < 2:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    width = 0.08 * (len(series) - 1)
    for i, (name, pts) in enumerate(sorted(series.items())):
        pts.sort()
        dx = -width / 2 + 0.08 * i  # a small shift: equal choices stay visible side by side
        xs = [p[0] + dx for p in pts]
        ax.plot(xs, [p[1] for p in pts], marker="o", label=name,
                linestyle=":" if "align" in name else "-")  # fmt: skip
        for x, (_, y, n) in zip(xs, pts, strict=True):
            ax.annotate(f"n={n}", (x, y), textcoords="offset points", xytext=(3, 4), fontsize=6)
    for label, lr, n in plain:
        ax.axhline(lr, color="gray", linestyle="--", label=f"{label} (plain student, n={n})")
    grid = sorted(v for v in (axis_number(x) for x in suite.grid.get(axis, [])) if v is not None)
    lrs = grid or sorted({p[1] for pts in series.values() for p in pts})
    ax.set_ylim(lrs[0] / 1.25, lrs[-1] * 1.25)  # also when every choice is the same value
    ax.set_yscale("log")
    if grid:
        ax.set_yticks(grid, [_short(v) for v in grid])
        ax.minorticks_off()
    ax.set_xticks(sorted({p[0] for pts in series.values() for p in pts}))
    ax.set_xlabel("unit modes L (0 = SVD, two cores)")
    ax.set_ylabel(f"{axis} chosen on dev")
    ax.set_title(f"{suite.name}: best {axis} vs scale (chosen on dev)", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_scale(report: SuiteReport, path: Path) -> bool:
    groups = report.chosen if report.suite.tune else report.groups
    series: dict[str, list[tuple[int, float, float]]] = {}
    plain: list[Group] = []
    several = len({g.lr_scaling() for g in groups if g.scale() is not None}) > 1
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
        if several:
            name += f", lr_scaling {g.lr_scaling()}"
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


def _index(order: list, value) -> int:
    """Position of ``value`` in the suite's order (unknown values last)."""
    return order.index(value) if value in order else len(order)


def bar_layout(report: SuiteReport, groups: list[Group]) -> tuple[list[Group], list[float]]:
    """Order and x positions of the variant bars: with several base configs (methods), one
    block per method in suite order, its variants side by side in suite order (base, +SVD, ...),
    a gap between blocks; otherwise the groups' own order."""
    configs, variants = list(report.suite.configs), list(report.suite.variants)
    several = len({g.config_name for g in groups}) > 1
    if several:
        groups = sorted(groups, key=lambda g: (_index(configs, g.config_name),
                                               _index(variants, g.variant)))  # fmt: skip
    xs, x = [], 0.0
    for i, g in enumerate(groups):
        if several and i and g.config_name != groups[i - 1].config_name:
            x += 0.6
        xs.append(x)
        x += 1.0
    return groups, xs


def plot_variants(report: SuiteReport, path: Path) -> bool:
    groups = [g for g in (report.chosen if report.suite.tune else report.groups)
              if g.mean("test") is not None]  # fmt: skip
    if len(groups) < 2:
        return False
    plt = _pyplot()
    suite = report.suite
    variants = list(suite.variants)
    groups, xs = bar_layout(report, groups)
    fig, ax = plt.subplots(figsize=(max(4.8, 0.9 * (xs[-1] + 1) + 1.5), 4.2))
    names = []
    for g in groups:
        untuned = ", ".join(f"{k}={format_value(v)}" for k, v in g.axes
                            if k not in suite.tune)  # fmt: skip
        names.append(g.label + (f"\n{untuned}" if untuned else ""))
    ys = [_pct(g.mean("test")) for g in groups]
    errs = [_err(g) for g in groups]
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colors = [palette[_index(variants, g.variant) % len(palette)] for g in groups]
    ax.bar(xs, ys, yerr=errs, capsize=4, color=colors, alpha=0.8)
    for i, (y, g) in enumerate(zip(ys, groups, strict=True)):
        ax.text(xs[i], y + (errs[i] or 0) + 0.1, f"{y:.2f}\n(n={len(g.results)})", ha="center",
                va="bottom", fontsize=7)  # fmt: skip
    low = min(y - e for y, e in zip(ys, errs, strict=True))
    high = max(y + e for y, e in zip(ys, errs, strict=True))
    pad = max(1.0, 0.15 * (high - low))
    ax.set_ylim(low - pad, high + 2.5 * pad)
    ax.set_xticks(xs, names, fontsize=8)
    ax.set_ylabel(_ylabel(report))
    tuned = " (each at its dev-chosen " + ", ".join(suite.tune) + ")" if suite.tune else ""
    ax.set_title(f"{suite.name}: variants{tuned}", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


PLOTS = {"accuracy-vs-lr.png": plot_lr, "accuracy-vs-scale.png": plot_scale,
         "variants.png": plot_variants, "best-lr-vs-scale.png": plot_best_lr}  # fmt: skip


def write_plots(report: SuiteReport, dest: Path) -> list[Path]:
    """Draw every plot the finished cells support into ``dest``; returns the files written."""
    written = []
    for name, fn in PLOTS.items():
        if fn(report, dest / name):
            written.append(dest / name)
    return written
