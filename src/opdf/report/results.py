"""A suite's finished cells, read from its folder, and their groups over seeds.

A *group* is every cell that differs only in the replicate axis (``seed``); a *setting* is a group
without its tuned axes (:func:`untuned_axes`). Cells that ``opdf bench`` would reuse from the
suite's ``reuse`` suites (identical finished cells there) count as the suite's own.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from opdf.bench.run import plan
from opdf.bench.suite import REUSED, Cell, Suite, format_value
from opdf.errors import OpdfError


def axis_number(v: Any) -> float | None:
    """An axis value as a number (``"2.4e-2"`` and ``0.024`` alike), None for a categorical one
    (``alternate``, a flag)."""
    if isinstance(v, bool):
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


@dataclass
class CellResult:
    cell: Cell
    summary: dict
    folder: Path | None = None  # where its files are (a ``reuse`` suite's cell, or its own)
    lr_scaling: str = "none"  # from summary.json, else the cell's config.yaml (older runs)

    @property
    def metric(self) -> str:
        return self.summary.get("main_metric", "accuracy")

    def score(self, split: str) -> float | None:
        v = (self.summary.get(split) or {}).get(self.metric)
        return float(v) if v is not None else None


@dataclass
class Group:
    """Cells that differ only in the replicate axis."""

    label: str
    config_name: str | None
    variant: str | None
    axes: tuple[tuple[str, Any], ...]  # every grid axis but the replicate one, suite order
    results: list[CellResult] = field(default_factory=list)
    chosen: bool = False
    candidates: int = 0  # chosen groups: how many tuned settings with results it was chosen from
    compared_seeds: tuple = ()  # chosen groups: the seeds the dev choice compared (all shared)
    grid_end: tuple[str, ...] = ()  # chosen groups: a note per numeric tuned axis at an end

    def seeds(self, replicate: str) -> list[Any]:
        return [r.cell.value(replicate) for r in self.results]

    def scores(self, split: str, seeds: set | None = None, replicate: str = "seed") -> list[float]:
        """The scores on ``split``; only of the cells whose ``replicate`` value is in ``seeds``
        when given (a dev choice compares settings over the seeds they share)."""
        return [s for r in self.results
                if (seeds is None or r.cell.value(replicate) in seeds)
                and (s := r.score(split)) is not None]  # fmt: skip

    def mean(self, split: str, seeds: set | None = None, replicate: str = "seed") -> float | None:
        v = self.scores(split, seeds, replicate)
        return sum(v) / len(v) if v else None

    def std(self, split: str) -> float | None:
        v = self.scores(split)
        if len(v) < 2:
            return None
        m = sum(v) / len(v)
        return math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1))

    def field_mean(self, key: str) -> float | None:
        v = [r.summary[key] for r in self.results if isinstance(r.summary.get(key), int | float)]
        return sum(v) / len(v) if v else None

    def first(self, key: str) -> Any:
        return next((r.summary[key] for r in self.results if r.summary.get(key) is not None), None)

    def lr_scaling(self) -> str:
        return self.results[0].lr_scaling if self.results else "none"

    def scale(self) -> int | None:
        """Unit modes of the scheme: 0 for SVD, L for MPO, None for a plain student."""
        scheme = self.first("overparam")
        if scheme == "svd":
            return 0
        if scheme == "mpo":
            return int(self.first("unit_modes") or 0)
        return None


def _reused_folders(suite: Suite, cells: Sequence[Cell], out: Path) -> dict[str, Path]:
    """Cells missing under ``out`` that ``opdf bench`` would reuse from a ``reuse`` suite (a
    finished cell of the same id there whose saved config equals this cell's): id -> folder."""
    wanted = [
        c
        for c in cells
        if not (c.folder(out) / "summary.json").is_file()
        and any((out.parent / n / c.id / "summary.json").is_file() for n in suite.reuse)
    ]
    if not wanted:
        return {}
    try:
        planned = plan(suite, wanted, out, threads=None)
    except OpdfError:
        return {}  # a config that no longer loads: report only the suite's own cells
    return {p.cell.id: p.reuse_from for p in planned if p.status == REUSED and p.reuse_from}


def _lr_scaling(summary: dict, folder: Path) -> str:
    """The cell's ``lr_scaling``: from summary.json, else its config.yaml (older runs)."""
    if summary.get("lr_scaling"):
        return str(summary["lr_scaling"])
    try:
        config = yaml.safe_load((folder / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        config = None
    value = config.get("lr_scaling") if isinstance(config, dict) else None
    return str(value) if value else "none"


def load_results(suite: Suite, out: Path) -> list[CellResult]:
    """Finished cells of ``suite`` under ``out`` (also the cells of its ``--tiny`` grid), and
    the identical finished cells of its ``reuse`` suites that ``opdf bench`` has not linked yet."""
    cells = {c.id: c for c in suite.cells()}
    if suite.tiny:
        for c in suite.cells(tiny=True):
            cells.setdefault(c.id, c)
    ordered = sorted(cells.values(), key=lambda c: c.order)
    reused = _reused_folders(suite, ordered, out) if suite.reuse else {}
    results = []
    for c in ordered:
        folder = reused.get(c.id, c.folder(out))
        f = folder / "summary.json"
        if not f.is_file():
            continue
        try:
            summary = json.loads(f.read_text())
        except json.JSONDecodeError as e:
            raise OpdfError(f"{f}: not valid JSON ({e})") from None
        results.append(CellResult(c, summary, folder, _lr_scaling(summary, folder)))
    return results


def group_results(suite: Suite, results: Sequence[CellResult]) -> list[Group]:
    groups: dict[tuple, Group] = {}
    for r in results:
        axes = tuple((k, v) for k, v in r.cell.values if k != suite.replicates)
        key = (r.cell.label, tuple((k, format_value(v)) for k, v in axes))
        if key not in groups:
            groups[key] = Group(r.cell.label, r.cell.config_name, r.cell.variant, axes)
        groups[key].results.append(r)
    return list(groups.values())


def untuned_axes(suite: Suite, g: Group) -> tuple[tuple[str, Any], ...]:
    """The group's axes that are not tuned: what makes it one *setting*."""
    return tuple((k, v) for k, v in g.axes if k not in suite.tune)


def axes_key(axes) -> tuple:
    """Axes as a hashable key, their values formatted as in cell ids (``1e-4``, not 0.0001)."""
    return tuple((k, format_value(v)) for k, v in axes)


def baseline_label(suite: Suite, g: Group) -> str | None:
    """The label of the group the suite compares ``g`` with (None: ``g`` is a baseline, or the
    suite has none)."""
    if suite.baseline is None or g.variant is None or g.variant == suite.baseline:
        return None
    return "-".join(str(p) for p in (g.config_name, suite.baseline) if p is not None)


def teacher_drift(results: Sequence[CellResult]) -> list[str]:
    """One note per teacher (its folder) whose cells did not all load the same weights
    (``teacher_digest``): a fine-tune repeated on another machine, torch or transformers and
    not reproduced bitwise. Their comparisons then mix teachers. A teacher is named by the last
    two parts of its path (the cache folder of its fine-tune recipe and ``student``), the same
    on every machine. Cells run before summaries recorded the digest are not counted."""
    digests: dict[str, dict[str, int]] = {}
    for r in results:
        d = r.summary.get("teacher_digest")
        if d:
            teacher = "/".join(Path(str(r.summary.get("teacher"))).parts[-2:])
            by = digests.setdefault(teacher, {})
            by[d] = by.get(d, 0) + 1
    return [
        f"the cells of teacher `{teacher}` loaded {len(by)} different sets of weights ("
        + ", ".join(
            f"{d} in {n} cell{'s' * (n > 1)}" for d, n in sorted(by.items(), key=lambda x: -x[1])
        )  # fmt: skip
        + "): its fine-tune was not reproduced bitwise where they ran, so comparisons between "
        "them mix teachers"
        for teacher, by in digests.items()
        if len(by) > 1
    ]
