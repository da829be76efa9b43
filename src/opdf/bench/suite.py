"""Suites: a grid of ``opdf distill`` runs over one base config (``opdf bench SUITE.yaml``).

A suite file (everything but ``name`` and ``config`` optional)::

    # benchmarks/suites/rt-polarity-kd.yaml
    name: rt-polarity-kd                          # results in runs/suites/<name>/ unless --out
    config: ../../configs/rt-polarity-kd-base.yaml  # relative to this file
    set:                                          # overrides applied to every cell
      data.max_train_samples: 2000
      epochs: 2
      threads: 1
    variants:                                     # named override sets = the first axis
      base: {overparam: none}
      opdf: {overparam: mpo, unit_modes: 3, align.weight: 100}
    grid:                                         # further axes: any config key
      lr: [5e-5, 1e-4, 2e-4]
      seed: [1, 2, 3, 4, 5]
    # optional, read by `opdf report` and `opdf bench`:
    tune: [lr]          # axes chosen on dev per variant (default: [lr] when lr is an axis)
    replicates: seed    # the axis averaged over and paired on (default: seed)
    baseline: base      # the variant every other one is compared with (default: the first)
    reuse: [other-suite]  # sibling suite folders whose finished, identical cells count as done
    exclude: ["svd__lr=8e-4__*"]  # cell ids (shell patterns) left out of the grid: not run, not
                                  # counted, not reported
    keep_checkpoints: false  # a finished cell's checkpoints/ (resume state) are removed
    keep_students: true      # false: its merged student/ (~70 MB a text cell) is removed too
    tiny: {set: {...}, grid: {seed: [1]}}   # `--tiny`: overrides for a seconds-long CPU check

Keys are dotted config keys, as in ``opdf distill CONFIG key=value``; a value replaces the key's
whole value (``data: {...}`` would replace the whole data section, ``data.max_length`` only that
key). A key may appear in only one of ``set``, a variant and ``grid``.

Several base configs (e.g. one per KD method): ``config: {theseus: a.yaml, lgtm: b.yaml}``; the
cell's first id component is then ``<config name>-<variant>`` (``theseus-opdf``), or the config
name alone without variants. A variant may instead carry its own ``config: path`` (with a single
suite config only). Cells whose config file does not exist yet are *blocked*: listed, not run,
not failures, so a suite can name methods that have not landed.

``exclude`` makes a grid sparse where a full one would waste hours, e.g. learning rates next to
one at which a variant already diverges: the cells whose id matches a pattern are not part of the
suite. A pattern that matches no cell is an error (a typo would silently exclude nothing).

Cell ids and folders: ``<out>/<first>__<key>=<value>__<key>=<value>``, the grid keys in suite
order, the values as written in the YAML (PyYAML reads ``5e-5`` as the string ``5e-5``: kept
as is; ints as digits, floats in Python's shortest round-trip form, booleans true/false, lists
joined by ``,``), e.g. ``runs/suites/rt-polarity-kd/opdf__lr=5e-5__seed=3``.

A cell runs as its own process, ``opdf distill <config> <variant> <set> <grid overrides>
output_dir=<cell> --no-progress`` plus ``--resume`` when ``<cell>/checkpoints/last.pt`` exists,
``--overwrite`` otherwise; stdout and stderr go to ``<cell>.log``. It is done when
``<cell>/summary.json`` exists; then its ``checkpoints/`` folder (the resume state: ~4x the
student, 270 MB for the rt-polarity student, 40 GB over a 150-cell suite) is removed unless
``keep_checkpoints: true``; config, summary, metrics, log and the merged ``student/`` stay
(``keep_students: false`` removes the student too: a report needs none, and a 280-cell text
suite keeps 14 GB of them).
A cell whose folder a live run holds (``opdf.run.lock``) is left alone. Cells run with the LAST
grid axis outermost (whole seeds first), then the earlier axes, the variants innermost.

This module only reads files (no torch): parsing, cell ids, run order and on-disk status.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import itertools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from opdf.choices import suggest
from opdf.errors import ConfigError, yaml_file_error

SUITE_KEYS = ("name", "config", "set", "variants", "grid", "tune", "replicates", "baseline",
              "reuse", "exclude", "keep_checkpoints", "keep_students", "tiny",
              "description")  # fmt: skip
TINY_KEYS = ("set", "grid")
SEP = "__"
_SAFE = re.compile(r"[^A-Za-z0-9._+,=-]")


def format_value(value: Any) -> str:
    """A grid value as it appears in a cell id (see the module docstring)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        return repr(value)  # shortest round-trip form: 0.0001, 5e-05, 1.0
    if isinstance(value, list | tuple):
        return ",".join(format_value(v) for v in value)
    text = str(value)
    return _SAFE.sub("_", text)


def override_text(key: str, value: Any) -> str:
    """``key=value`` as ``opdf distill`` parses it back (YAML flow style), so that the value the
    run sees is exactly the one in the suite file (``5e-5`` stays the string PyYAML read)."""
    dumped = yaml.safe_dump(value, default_flow_style=True, width=1 << 20).strip()
    dumped = dumped.removesuffix("...").strip()  # the document end marker after a scalar
    if yaml.safe_load(dumped) != value:  # pragma: no cover - PyYAML round-trips plain data
        raise ConfigError(f"{key}: the value {value!r} cannot be passed on a command line")
    return f"{key}={dumped}"


#: a finished cell's small files: what an export copies and a restore brings back (never weights)
CELL_FILES = ("config.yaml", "summary.json", "metrics.jsonl")

#: the first line of ``opdf bench``'s copy of a suite file in the results folder
COPY_HEADER = "# copied by opdf bench from "
#: the first line ``opdf bench --tiny`` writes into the results folder's copy of the suite file
#: (``opdf report`` then counts the tiny grid's cells)
TINY_HEADER = "# copied by opdf bench --tiny from "


@dataclass(frozen=True)
class Cell:
    """One run of a suite: its id, base config and overrides (without ``output_dir``)."""

    id: str
    label: str  # the first id component: variant, <config name>-<variant>, or the config name
    config: str  # path of the base config, normalised (relative to the working directory)
    config_name: str | None
    variant: str | None
    values: tuple[tuple[str, Any], ...]  # grid axis -> value, suite order
    overrides: tuple[str, ...]
    order: int  # position in run order

    def value(self, key: str, default: Any = None) -> Any:
        return dict(self.values).get(key, default)

    def folder(self, out: str | Path) -> Path:
        return Path(out) / self.id

    def log(self, out: str | Path) -> Path:
        return Path(out) / f"{self.id}.log"


@dataclass
class Suite:
    """A parsed suite file (see the module docstring)."""

    name: str
    path: Path
    configs: dict[str | None, str]  # config name (None: single) -> path as normalised
    set: dict[str, Any]
    variants: dict[str, dict[str, Any]]
    grid: dict[str, list[Any]]
    tune: list[str]
    replicates: str
    baseline: str | None
    reuse: list[str]
    tiny: dict[str, Any] | None
    variant_configs: dict[str, str] = field(default_factory=dict)
    description: str | None = None
    keep_checkpoints: bool = False
    keep_students: bool = True
    exclude: list[str] = field(default_factory=list)

    def default_out(self, tiny: bool = False) -> Path:
        return Path("runs") / "suites" / (f"{self.name}-tiny" if tiny else self.name)

    def sets_threads(self, tiny: bool = False) -> bool:
        keys = set(self.set) | set(self.grid)
        for v in self.variants.values():
            keys |= set(v)
        if tiny and self.tiny:
            keys |= set(self.tiny.get("set") or {})
        return "threads" in keys

    def cells(self, *, tiny: bool = False) -> list[Cell]:
        """Every cell, in run order: the last grid axis outermost, variants innermost; the
        cells ``exclude`` names are left out."""
        kept = [c for c in self.grid_cells(tiny=tiny) if not self.excluded(c.id)]
        return [dataclasses.replace(c, order=i) for i, c in enumerate(kept)]

    def excluded(self, cell_id: str) -> bool:
        return bool(self.excluding(cell_id))

    def excluding(self, cell_id: str) -> list[str]:
        """The ``exclude`` patterns that leave ``cell_id`` out."""
        return [pat for pat in self.exclude if fnmatch.fnmatchcase(cell_id, pat)]

    def grid_cells(self, *, tiny: bool = False) -> list[Cell]:
        """Every cell of the full grid, ``exclude`` not applied."""
        grid = dict(self.grid)
        extra: dict[str, Any] = {}
        if tiny:
            if not self.tiny:
                raise ConfigError(f"suite {self.name!r} has no 'tiny' section (for --tiny)")
            grid.update(self.tiny.get("grid") or {})
            extra = dict(self.tiny.get("set") or {})
        keys = list(grid)
        variants = list(self.variants) or [None]
        names = list(self.configs)
        cells: list[Cell] = []
        # itertools.product varies the last iterable fastest: list the axes outermost first
        outer_first = [grid[k] for k in reversed(keys)]
        for combo in itertools.product(*outer_first, variants, names):
            *rev_values, variant, cname = combo
            values = tuple(zip(keys, reversed(rev_values), strict=True))
            config = self.configs[cname]
            if variant is not None and variant in self.variant_configs:
                config = self.variant_configs[variant]
            first = "-".join(str(p) for p in (cname, variant) if p is not None)
            parts = ([first] if first else []) + [f"{k}={format_value(v)}" for k, v in values]
            overrides = [override_text(k, v) for k, v in (self.variants.get(variant) or {}).items()
                         if k != "config"]  # fmt: skip
            overrides += [override_text(k, v) for k, v in self.set.items()]
            overrides += [override_text(k, v) for k, v in values]
            overrides += [override_text(k, v) for k, v in extra.items()]
            cells.append(Cell(
                id=SEP.join(parts) or "run", label=first, config=config, config_name=cname,
                variant=variant, values=values, overrides=tuple(overrides), order=len(cells),
            ))  # fmt: skip
        seen: dict[str, Cell] = {}
        for c in cells:
            if c.id in seen:
                raise ConfigError(
                    f"suite {self.name!r}: two cells get the id {c.id!r} (values that print "
                    "alike); make the grid values distinct"
                )
            seen[c.id] = c
        return cells


def _norm_path(base: Path, value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: expected a path to a config file, got {value!r}")
    p = Path(os.path.normpath(base / Path(value).expanduser()))
    try:
        rel = os.path.relpath(p, Path.cwd())
    except ValueError:  # another drive (Windows)
        return str(p)
    return rel if not rel.startswith("..") else str(p.resolve())


def _mapping(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping of config keys to values, got {value!r}")
    for k in value:
        if not isinstance(k, str) or not k or any(not p for p in k.split(".")):
            raise ConfigError(f"{where}: {k!r} is not a config key (dotted, e.g. data.max_length)")
    return dict(value)


def _name(value: Any, where: str) -> str:
    text = str(value)
    if not text or _SAFE.search(text) or SEP in text or "=" in text:
        raise ConfigError(
            f"{where}: {text!r} is not a valid name (letters, digits, . _ + , - only, no '__')"
        )
    return text


def parse_suite(data: Any, path: Path) -> Suite:
    """Validate a suite mapping (read from ``path``) into a :class:`Suite`; the first problem
    found is a ConfigError that names the file and the key."""
    where = str(path)
    _check_keys(data, where)
    name = _name(data["name"], f"{where}: name")
    base = path.parent
    configs = _configs(data["config"], base, where)
    set_ = _mapping(data.get("set"), f"{where}: set")
    variants, variant_configs = _variants(data.get("variants") or {}, configs, base, where)
    grid = _grid(data.get("grid") or {}, where)
    _check_owners(set_, grid, variants, where)
    replicates = str(data.get("replicates", "seed"))
    tune = _tune(data.get("tune"), grid, replicates, where)
    baseline = data.get("baseline")
    if baseline is None and variants:
        baseline = next(iter(variants))
    if baseline is not None and baseline not in variants:
        raise ConfigError(f"{where}: baseline {baseline!r} is not a variant "
                          f"({', '.join(variants) or 'none defined'})")  # fmt: skip
    reuse = data.get("reuse") or []
    reuse = [_name(r, f"{where}: reuse") for r in ([reuse] if isinstance(reuse, str) else reuse)]
    tiny = data.get("tiny")
    if tiny is not None:
        _check_tiny(tiny, grid, where)
    keep = data.get("keep_checkpoints", False)
    if not isinstance(keep, bool):
        raise ConfigError(f"{where}: keep_checkpoints: expected true or false, got {keep!r}")
    students = data.get("keep_students", True)
    if not isinstance(students, bool):
        raise ConfigError(f"{where}: keep_students: expected true or false, got {students!r}")
    exclude = _exclude(data.get("exclude") or [], where)
    suite = Suite(
        name=name, path=path, configs=configs, set=set_, variants=variants, grid=grid,
        tune=tune, replicates=replicates, baseline=baseline, reuse=reuse, tiny=tiny,
        variant_configs=variant_configs, description=data.get("description"),
        keep_checkpoints=keep, keep_students=students, exclude=exclude,
    )  # fmt: skip
    if exclude:
        _check_excluded(suite, where)
    return suite


def _check_keys(data: Any, where: str) -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: a suite must be a mapping with name, config, grid, ...")
    unknown = [k for k in data if k not in SUITE_KEYS]
    if unknown:
        raise ConfigError(f"{where}: unknown suite key {unknown[0]!r}"
                          f"{suggest(unknown[0], SUITE_KEYS)}; valid keys: "
                          f"{', '.join(SUITE_KEYS)}")  # fmt: skip
    for need in ("name", "config"):
        if need not in data:
            raise ConfigError(f"{where}: missing the suite key {need!r}")


def _configs(raw: Any, base: Path, where: str) -> dict[str | None, str]:
    """``config``: one file (key None) or a mapping of names to files."""
    if not isinstance(raw, dict):
        return {None: _norm_path(base, raw, f"{where}: config")}
    if not raw:
        raise ConfigError(f"{where}: config: give at least one config")
    return {_name(k, f"{where}: config name"): _norm_path(base, v, f"{where}: config.{k}")
            for k, v in raw.items()}  # fmt: skip


def _variants(
    raw: Any, configs: dict, base: Path, where: str
) -> tuple[dict[str, dict], dict[str, str]]:
    """``variants``: name -> overrides, and the variants that carry their own config file."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: variants: expected a mapping of names to override mappings")
    variants, variant_configs = {}, {}
    for vname, overrides in raw.items():
        vname = _name(vname, f"{where}: variant name")
        overrides = _mapping(overrides, f"{where}: variants.{vname}")
        if "config" in overrides:
            if None not in configs:
                raise ConfigError(
                    f"{where}: variants.{vname}.config: a variant may carry its own config only "
                    "when the suite has a single config (not a mapping)"
                )
            variant_configs[vname] = _norm_path(base, overrides["config"],
                                                f"{where}: variants.{vname}.config")  # fmt: skip
        variants[vname] = overrides
    return variants, variant_configs


def _grid(raw: Any, where: str) -> dict[str, list]:
    grid = _mapping(raw, f"{where}: grid")
    for k, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: grid.{k}: expected a non-empty list of values")
        for v in values:
            if isinstance(v, dict):
                raise ConfigError(f"{where}: grid.{k}: {v!r}: grid values must be scalars or lists")
    return grid


def _check_owners(set_: dict, grid: dict, variants: dict[str, dict], where: str) -> None:
    """A config key is set in one place only (set, grid or a variant); never output_dir."""
    owners: dict[str, str] = {}
    for k in set_:
        owners[k] = "set"
    for k in grid:
        if k in owners:
            raise ConfigError(f"{where}: {k!r} is both in {owners[k]} and in grid; keep one")
        owners[k] = "grid"
    for vname, overrides in variants.items():
        for k in overrides:
            if k in ("config",):
                continue
            if k in ("output_dir",):
                raise ConfigError(f"{where}: variants.{vname}: output_dir is set by opdf bench")
            if owners.get(k) in ("set", "grid"):
                raise ConfigError(
                    f"{where}: {k!r} is both in variants.{vname} and in {owners[k]}; keep one"
                )
    if "output_dir" in set_ or "output_dir" in grid:
        raise ConfigError(f"{where}: output_dir is set by opdf bench (one folder per cell)")


def _tune(tune: Any, grid: dict, replicates: str, where: str) -> list[str]:
    """``tune``: grid axes chosen on dev (default: lr when it is an axis), never the replicate."""
    if tune is None:
        tune = ["lr"] if "lr" in grid else []
    if isinstance(tune, str):
        tune = [tune]
    for k in tune:
        if k not in grid:
            raise ConfigError(f"{where}: tune: {k!r} is not a grid axis ({', '.join(grid)})")
    if replicates in tune:
        raise ConfigError(f"{where}: the replicate axis {replicates!r} cannot be tuned")
    return list(tune)


def _check_tiny(tiny: Any, grid: dict, where: str) -> None:
    if not isinstance(tiny, dict) or any(k not in TINY_KEYS for k in tiny):
        raise ConfigError(f"{where}: tiny: expected a mapping with keys {', '.join(TINY_KEYS)}")
    _mapping(tiny.get("set"), f"{where}: tiny.set")
    for k, values in (tiny.get("grid") or {}).items():
        if k not in grid:
            raise ConfigError(f"{where}: tiny.grid.{k}: not an axis of grid")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: tiny.grid.{k}: expected a non-empty list")


def _exclude(exclude: Any, where: str) -> list[str]:
    if isinstance(exclude, str):
        exclude = [exclude]
    if not isinstance(exclude, list) or not all(isinstance(p, str) and p for p in exclude):
        raise ConfigError(f"{where}: exclude: expected a list of cell id patterns, e.g. "
                          f"['svd__lr=8e-4__*'], got {exclude!r}")  # fmt: skip
    return list(exclude)


def _check_excluded(suite: Suite, where: str) -> None:
    """Every ``exclude`` pattern matches a cell, and some cell is left to run."""
    ids = [c.id for c in suite.grid_cells()]
    for pat in suite.exclude:
        if not any(fnmatch.fnmatchcase(i, pat) for i in ids):
            raise ConfigError(f"{where}: exclude: {pat!r} matches no cell (ids look like "
                              f"{ids[0]!r})")  # fmt: skip
    if all(suite.excluded(i) for i in ids):
        raise ConfigError(f"{where}: exclude leaves no cell to run")


def load_suite(path: str | Path) -> Suite:
    """Read and validate a suite file (paths of configs are not checked here)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"suite file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise yaml_file_error(path, e) from None
    return parse_suite(data, path)


def is_suite_file(path: Path) -> bool:
    """A YAML file with the suite keys ``name`` and ``config`` and a ``grid`` or ``variants``."""
    if not path.is_file() or path.suffix not in (".yaml", ".yml"):
        return False
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return False
    return (
        isinstance(data, dict)
        and "name" in data
        and "config" in data
        and ("grid" in data or "variants" in data)
    )


# ----------------------------------------------------------------------------- on-disk status

DONE, RESUME, NEW, BLOCKED, REUSED = "done", "resume", "new", "blocked", "reused"
# opdf.run.checkpoint's layout (checkpoints/ + LAST), named here without importing torch; a test
# keeps the two equal
LAST_CHECKPOINT = ("checkpoints", "last.pt")


def cell_status(cell: Cell, out: str | Path) -> str:
    """``done`` (summary.json), ``resume`` (checkpoints/last.pt), ``blocked`` (config file
    missing) or ``new`` (nothing, or a start that left no checkpoint)."""
    folder = cell.folder(out)
    if (folder / "summary.json").is_file():
        return DONE
    if not Path(cell.config).is_file():
        return BLOCKED
    if folder.joinpath(*LAST_CHECKPOINT).is_file():
        return RESUME
    return NEW


def last_activity(cell: Cell, out: str | Path) -> float | None:
    """Newest modification time among the cell's log and its folder's top-level files."""
    times = []
    for p in (cell.log(out), cell.folder(out)):
        if p.exists():
            times.append(p.stat().st_mtime)
    folder = cell.folder(out)
    if folder.is_dir():
        times += [q.stat().st_mtime for q in folder.iterdir()]
        ck = folder / "checkpoints"
        if ck.is_dir():
            times += [q.stat().st_mtime for q in ck.iterdir()]
    return max(times) if times else None


def export_dir(base: str | Path, suite: Suite) -> Path:
    """``opdf report --export DIR`` and ``opdf bench --restore DIR``: the suite's folder is
    ``DIR/<suite name>``, or DIR itself when it already ends with the suite's name."""
    base = Path(base)
    return base if base.name == suite.name else base / suite.name
