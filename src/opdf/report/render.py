"""Markdown and CSV tables: the one renderer behind ``opdf report``, suite reports and the
benchmark scripts (``benchmarks/*.py``), so that every table we commit has one shape.

Cells are already formatted strings: what a number looks like (percent, ``±``, ``1.23M``) is the
caller's choice; this module only lays the cells out.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["csv_records", "csv_rows", "markdown_table", "print_and_write"]


def markdown_table(
    heads: Sequence[str],
    rows: Sequence[Sequence[str | None]],
    *,
    pad: bool = True,
    right: Sequence[int] = (),
) -> str:
    """A Markdown table, no trailing newline.

    ``pad=True`` (reports): every column as wide as its widest cell, so the text reads as a table
    too. ``pad=False`` (benchmark scripts): ``| a | b |`` rows under a ``|---|---|`` rule; the
    columns whose index is in ``right`` are right-aligned there (``---:``); a ``None`` cell is
    written ``| |`` (an empty string: ``|  |``, as the committed results have it)."""
    if not pad:
        rule = "|" + "".join("---:|" if i in right else "---|" for i in range(len(heads)))
        lines = [_compact_row(heads), rule, *(_compact_row(r) for r in rows)]
        return "\n".join(lines)
    rows = [["" if c is None else c for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(heads)]  # fmt: skip
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]  # fmt: skip
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"
              for r in rows]  # fmt: skip
    return "\n".join(lines)


def _compact_row(cells: Sequence[str | None]) -> str:
    return "|" + "".join(" |" if c is None else f" {c} |" for c in cells)


def csv_records(records: Sequence[Mapping[str, Any]]) -> str:
    """CSV of dict rows: the columns are every key, in the order they first appear."""
    keys: list[str] = []
    for r in records:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(records)
    return buf.getvalue()


def csv_rows(heads: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """CSV of a header and value rows (``None`` becomes an empty field)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(heads)
    w.writerows(rows)
    return buf.getvalue()


def print_and_write(text: str, out: str | Path | None, *, newline: bool = False) -> None:
    """A benchmark's result: printed, and with ``--out`` written to that file (plus a final
    newline when ``newline``; its folder is made), the same text that is committed under
    ``benchmarks/results/``."""
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + ("\n" if newline else ""))
