"""``opdf bench --restore EXPORT``: bring a suite's finished cells back from an export.

An export (``opdf report --export``) holds each finished cell's small files in the suite folder's
layout. A suite that runs for longer than one machine lives (a CPU suite over several sessions,
a preempted cloud job) keeps its progress by exporting and committing what finished; on a fresh
machine ``--restore`` copies those cells into the results folder, where ``opdf bench`` counts
them as done (and checks them for staleness like any finished cell) and runs only the rest."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from opdf.bench.suite import CELL_FILES, Cell
from opdf.errors import OpdfError


@dataclass
class Restored:
    """What a restore did: cells copied, cells left alone (already here), cells it lacks."""

    copied: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)  # a started run's folder: never overwritten
    missing: int = 0

    def line(self, source: Path, *, dry_run: bool = False) -> str:
        verb = "would restore" if dry_run else "restored"
        parts = [f"{verb} {len(self.copied)} finished cells from {source}"]
        if self.present:
            parts.append(f"{len(self.present)} already finished here")
        if self.busy:
            more = ", ..." if len(self.busy) > 3 else ""
            parts.append(f"{len(self.busy)} left to the run started here "
                         f"({', '.join(self.busy[:3])}{more})")  # fmt: skip
        if self.missing:
            parts.append(f"{self.missing} not in the export")
        if dry_run and self.copied:
            parts.append("the plan below counts them as still to run")
        return "; ".join(parts)


def restore_cells(
    cells: Sequence[Cell], source: Path, out: Path, *, dry_run: bool = False
) -> Restored:
    """Copy each of ``cells`` that ``source`` holds finished (a ``summary.json`` and a
    ``config.yaml``) into ``out``, with its log. A cell already finished in ``out`` is kept, and
    so is a folder a run has started there (its checkpoints are work the export lacks).
    ``dry_run`` counts the same and copies nothing."""
    source = Path(source)
    if not source.is_dir():
        raise OpdfError(f"--restore {source}: not a folder (give an `opdf report --export` folder)")
    if source.resolve() == Path(out).resolve():
        raise OpdfError(f"--restore {source} is the results folder itself: nothing to restore")
    done = Restored()
    for cell in cells:
        src = cell.folder(source)
        if not ((src / "summary.json").is_file() and (src / "config.yaml").is_file()):
            done.missing += 1
            continue
        dest = cell.folder(out)
        if (dest / "summary.json").is_file() or dest.is_symlink():
            done.present.append(cell.id)  # finished here, or a reused suite's cell linked in
            continue
        if (dest.exists() and not _restorable(dest)) or cell.log(out).is_symlink():
            done.busy.append(cell.id)
            continue
        done.copied.append(cell.id)
        if dry_run:
            continue
        dest.mkdir(parents=True, exist_ok=True)
        log = cell.log(source)
        if log.is_file():  # the restored result's own log, over a failed attempt's
            shutil.copy2(log, cell.log(out))
        # summary.json last: a restore cut short leaves a cell that is not yet done
        for name in sorted(CELL_FILES, key=lambda n: n == "summary.json"):
            if (src / name).is_file():
                shutil.copy2(src / name, dest / name)
    return done


def _restorable(folder: Path) -> bool:
    """An empty folder, or one holding only a finished cell's small files without its
    ``summary.json``: what a restore cut short leaves (a started run writes more)."""
    return set(p.name for p in folder.iterdir()) <= set(CELL_FILES) - {"summary.json"}
