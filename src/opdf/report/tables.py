"""Tables of run summaries (``summary.json`` files written by the runner)."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable
from pathlib import Path

import yaml

from opdf.choices import NEUTRAL_KEYS
from opdf.errors import OpdfError
from opdf.report.render import csv_rows, markdown_table

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


#: config keys that do not make runs different settings: the seed they repeat over, where they
#: are written, how many threads computed them (opdf.choices.NEUTRAL_KEYS: nor what is cached)
SAME_SETTING_KEYS = ("seed", "output_dir", "threads")


def setting(config: dict | None, summary: dict) -> dict:
    """What makes runs one setting, flattened to dotted keys: the run's config.yaml without its
    seed (and keys that change nothing measured); from the summary for a run without one."""
    if not isinstance(config, dict):
        keys = ("method", "overparam", "unit_modes", "align", "steps", "batch_size", "data",
                "method_options", "student_model", "student_layers")  # fmt: skip
        config = {k: summary.get(k) for k in keys}
    flat = _flatten(config)
    skip = (*SAME_SETTING_KEYS, *NEUTRAL_KEYS)
    return {k: v for k, v in flat.items() if k not in skip and k.split(".")[0] not in skip}


def _flatten(d, prefix: str = "") -> dict:
    if not isinstance(d, dict) or not d:
        return {prefix: d}
    out: dict = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _read_config(summary_file: Path) -> dict | None:
    try:
        data = yaml.safe_load((summary_file.parent / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def load_rows(paths: Iterable[str | Path]) -> list[dict]:
    files = find_summaries(paths)
    if not files:
        raise OpdfError("no summary.json found under the given paths (finished runs write one)")
    rows, skipped = [], []
    for f in files:
        try:
            summary = json.loads(f.read_text())
        except json.JSONDecodeError as e:
            skipped.append(f"{f}: not valid JSON ({e})")
            continue
        if not isinstance(summary, dict) or "method" not in summary:
            skipped.append(f"{f}: not an opdf run summary (a JSON object with its method)")
            continue
        rows.append({**row(summary, f), "setting": setting(_read_config(f), summary)})
    if not rows:  # nothing to show: each problem is the error
        raise OpdfError("; ".join(skipped))
    for why in skipped:  # one damaged file does not hide every other run; it is named
        warnings.warn(f"skipped {why}", UserWarning, stacklevel=2)
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
        return f"{value:.1f}" if value < 10 else f"{value:.0f}"
    return str(value)


def _plain(value):
    """A CSV cell: floats rounded to 10 decimals (a mean of 0.0642 is not 0.06420000000000001;
    a wall time of 123456.7 s keeps its digits)."""
    return round(value, 10) if isinstance(value, float) else value


def group_rows(rows: list[dict]) -> list[dict]:
    """Mean (and std over seeds) of dev/test per setting: runs of one config but for its seed
    (:func:`setting`). Settings of one (method, variant) are told apart in the run column by the
    keys where they differ; a setting whose runs repeat a seed gets a note (its runs are not
    independent samples)."""
    import numpy as np  # here, not at the top: `opdf --help` imports this module and no numpy

    def key(r: dict) -> tuple:
        return (r["method"], r["variant"], json.dumps(r.get("setting") or {}, sort_keys=True,
                                                      default=str))  # fmt: skip

    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(key(r), []).append(r)
    out = []
    for (method, var, _), rs in groups.items():
        others = [g[0].get("setting") or {} for k, g in groups.items() if k[:2] == (method, var)]
        mine = rs[0].get("setting") or {}
        differs = sorted(k for k in set().union(*others)
                         if len({str(o.get(k)) for o in others}) > 1)  # fmt: skip
        label = ", ".join(f"{k}={mine.get(k)}" for k in differs)
        seeds = [r["seed"] for r in rs]
        agg = dict(rs[0], run=f"{len(rs)} run(s)" + (f" ({label})" if label else ""),
                   seed=",".join(str(x) for x in seeds))  # fmt: skip
        repeated = sorted({str(x) for x in seeds if seeds.count(x) > 1})
        if repeated:
            agg["note"] = (
                f"{method} {var}{f' ({label})' if label else ''}: seed {', '.join(repeated)} "
                f"repeats in its {len(rs)} runs of one config: they are not independent samples"
            )
        agg["test_std"] = None  # a column of every grouped table (set below from 2 seeds on)
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
    if fmt == "csv":  # fractions, as in summary.json; a grouped table's spread: the last column
        if any("test_std" in r for r in rows):
            keys.append("test_std")
        return csv_rows(keys, [[_plain(r.get(k)) for k in keys] for r in rows])
    lines = [markdown_table(heads, cells)]
    notes = sorted({r["subsample"] for r in rows if r.get("subsample")})
    notes += [r["note"] for r in rows if r.get("note")]
    if notes:
        lines.append("")
        lines += [f"note: {n}" for n in notes]
    return "\n".join(lines)
