"""Tables of run summaries (``summary.json`` files written by the runner)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from opdf.errors import OpdfError

COLUMNS = [
    ("run", "run"),
    ("method", "method"),
    ("variant", "variant"),
    ("seed", "seed"),
    ("dev", "dev"),
    ("test", "test"),
    ("train_params", "train params"),
    ("inference_params", "inference params"),
    ("seconds_per_step", "s/step"),
    ("wall_time", "wall (s)"),
]


def find_summaries(paths: Iterable[str | Path]) -> list[Path]:
    """``summary.json`` files: given directly, in a run folder, or anywhere below a folder."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            found.append(p)
        elif (p / "summary.json").is_file():
            found.append(p / "summary.json")
        elif p.is_dir():
            found += sorted(q for q in p.rglob("summary.json") if "checkpoints" not in q.parts)
        else:
            raise OpdfError(f"{p} does not exist (give run folders or summary.json files)")
    seen, out = set(), []
    for f in found:
        if f.resolve() not in seen:
            seen.add(f.resolve())
            out.append(f)
    return out


def variant(summary: dict) -> str:
    """``base``, ``+SVD``, ``+MPO(L=3)``, ``+OPDF(L=3)`` (MPO with the alignment loss)."""
    scheme = summary.get("overparam", "none")
    if scheme == "none":
        return "base"
    name = "+SVD" if scheme == "svd" else f"+MPO(L={summary.get('unit_modes')})"
    if summary.get("align"):
        name = name.replace("+MPO", "+OPDF") if scheme == "mpo" else name + "+align"
    return name


def _run_name(path: Path | None) -> str:
    """The run folder, relative to the working directory when below it."""
    if path is None:
        return ""
    folder = path.resolve().parent
    try:
        return str(folder.relative_to(Path.cwd()))
    except ValueError:
        return str(path.parent)


def row(summary: dict, path: Path | None = None) -> dict:
    main = summary.get("main_metric", "accuracy")
    return {
        "run": _run_name(path),
        "method": summary.get("method"),
        "variant": variant(summary),
        "seed": summary.get("seed"),
        "dev": (summary.get("dev") or {}).get(main),
        "test": (summary.get("test") or {}).get(main),
        "test_top5": (summary.get("test") or {}).get("top5"),
        "metric": main,
        "train_params": summary.get("train_params"),
        "inference_params": summary.get("inference_params"),
        "seconds_per_step": summary.get("seconds_per_step"),
        "wall_time": summary.get("wall_time"),
        "steps": summary.get("steps"),
        "subsample": summary.get("subsample"),
    }


def load_rows(paths: Iterable[str | Path]) -> list[dict]:
    files = find_summaries(paths)
    if not files:
        raise OpdfError("no summary.json found under the given paths (finished runs write one)")
    rows = []
    for f in files:
        try:
            summary = json.loads(f.read_text())
        except json.JSONDecodeError as e:
            raise OpdfError(f"{f}: not valid JSON ({e})") from None
        if not isinstance(summary, dict):
            raise OpdfError(f"{f}: expected a JSON object (an opdf run summary)")
        rows.append(row(summary, f))
    return rows


def _fmt(key: str, value) -> str:
    if value is None:
        return "-"
    if key in ("dev", "test", "test_top5"):
        return f"{100 * value:.2f}"
    if key in ("train_params", "inference_params"):
        return f"{value / 1e6:.2f}M"
    if key == "seconds_per_step":
        return f"{value:.3f}"
    if key == "wall_time":
        return f"{value:.0f}"
    return str(value)


def group_rows(rows: list[dict]) -> list[dict]:
    """Mean (and std over seeds) of dev/test per (method, variant)."""
    import numpy as np

    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["variant"]), []).append(r)
    out = []
    for (_method, _var), rs in groups.items():
        agg = dict(rs[0], run=f"{len(rs)} run(s)", seed=",".join(str(r["seed"]) for r in rs))
        for k in ("dev", "test", "test_top5", "seconds_per_step", "wall_time"):
            vals = [r[k] for r in rs if r[k] is not None]
            agg[k] = float(np.mean(vals)) if vals else None
            if k == "test" and len(vals) > 1:
                agg["test_std"] = float(np.std(vals, ddof=1))
        out.append(agg)
    return out


def format_table(rows: list[dict], fmt: str = "markdown") -> str:
    """A markdown (default) or CSV table; dev/test in percent of the main metric (plus test top-5
    accuracy when the runs report it: image classification)."""
    columns = list(COLUMNS)
    if any(r.get("test_top5") is not None for r in rows):
        columns.insert([k for k, _ in columns].index("test") + 1, ("test_top5", "test top5"))
    keys = [k for k, _ in columns]
    heads = [h for _, h in columns]
    metric = {r.get("metric") for r in rows}
    if len(metric) == 1:
        m = metric.pop()
        heads[keys.index("dev")] = f"dev {m}"
        heads[keys.index("test")] = f"test {m}"
    cells = []
    for r in rows:
        line = [_fmt(k, r.get(k)) for k in keys]
        if r.get("test_std") is not None:
            line[keys.index("test")] += f" ± {100 * r['test_std']:.2f}"
        cells.append(line)
    if fmt == "csv":
        import csv
        import io

        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(keys)
        w.writerows([[r.get(k) for k in keys] for r in rows])
        return buf.getvalue()
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(heads)]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += [
        "| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |"
        for line in cells
    ]
    notes = sorted({r["subsample"] for r in rows if r.get("subsample")})
    if notes:
        lines.append("")
        lines += [f"note: {n}" for n in notes]
    return "\n".join(lines)
