"""Which files in an output folder opdf wrote: the only ones it may ever delete.

Every folder opdf creates for its output (a run's ``output_dir``, a bench cell, a cached teacher)
gets a marker, ``.opdf-owner.json``, written before anything else: the run's identity (kind, a
random id, when, the command) and the list of paths opdf has written there since. Deleting
(``--overwrite``, a failed start-up reused, a finished bench cell's checkpoints, ``opdf finetune
--force``) removes listed paths only, and refuses when the folder holds anything else, naming it:
opdf never removes a path it did not create.

Folders written by opdf versions without the marker are recognised by what only opdf writes (a
``config.yaml`` with every key of a run config, a ``summary.json`` with a ``config_hash``, a
teacher's ``opdf-finetune.json``): then the files of opdf's known layout are adopted as its own,
and anything else in the folder still is not.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

from opdf.errors import OpdfError
from opdf.storage import atomic_write_json

MARKER = ".opdf-owner.json"
LOCK = ".opdf.lock"  # opdf.run.lock.LOCK_FILE (not imported: this module sits below it)
FORMAT = 1
#: an atomic write's temporary file (``tempfile.mkstemp(prefix=".NAME.", suffix=".tmp")``, or
#: ``.NAME.tmp-PID``): left behind only by a process killed mid-write
TEMPORARY = re.compile(r"^\..+\.([a-z0-9_]{8}\.tmp|tmp-\d+)$")

# what older opdf versions wrote (their folders have no marker): only these names are adopted
_MODEL_FILES = frozenset({
    "config.json", "model.safetensors", "pytorch_model.bin", "tokenizer.json",
    "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json", "merges.txt",
    "added_tokens.json", "spiece.model", "sentencepiece.bpe.model", "generation_config.json",
    "architecture.json", "chat_template.jinja",
})  # fmt: skip
_LEGACY_TOP = frozenset({"config.yaml", "metrics.jsonl", "summary.json", "opdf-finetune.json"})
_LEGACY_CKPT = frozenset({"last.pt", "previous.pt", "best.pt", "manifest.json"})
_LEGACY_MODEL_DIRS = ("student", "merged-best", "merged-last", "checkpoints/student-architecture")
#: keys every run config opdf has written holds (opdf.run.config.dump_config)
_RUN_KEYS = frozenset({"method", "overparam", "unit_modes", "teacher", "student", "data",
                       "output_dir", "seed"})  # fmt: skip


class NotOwnedError(OpdfError):
    """A folder holds paths opdf did not write: nothing in it is deleted."""


def _rel(folder: Path, path: Path) -> str:
    return path.relative_to(folder).as_posix()


def read(folder: Path) -> dict | None:
    """The marker of ``folder`` (None when it has none or it is unreadable)."""
    try:
        data = json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("paths"), list) else None


def _write(folder: Path, data: dict) -> None:
    atomic_write_json(Path(folder) / MARKER, data)


def identity(kind: str) -> dict:
    """A new marker's identity: what wrote the folder, when, and a random run id."""
    return {
        "format": FORMAT, "kind": kind, "id": uuid.uuid4().hex, "pid": os.getpid(),
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(["opdf", *sys.argv[1:]]) if sys.argv else "", "paths": [],
    }  # fmt: skip


def contents(folder: Path) -> list[str]:
    """Every path under ``folder`` (files, links and folders; relative, sorted), except the marker
    and the run lock."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    out = []
    for root, dirs, files in os.walk(folder):
        base = Path(root)
        for name in dirs + files:
            rel = _rel(folder, base / name)
            if rel not in (MARKER, LOCK):
                out.append(rel)
    return sorted(out)


#: where opdf's atomic writes put their temporary files: the folder itself and checkpoints/
TEMPORARY_PLACES = ("", "checkpoints")


def _is_temporary(folder: Path, rel: str) -> bool:
    """A file a killed atomic write left (a plain file with such a name where opdf writes)."""
    parent, _, name = rel.rpartition("/")
    path = folder / rel
    return (parent in TEMPORARY_PLACES and bool(TEMPORARY.match(name)) and path.is_file()
            and not path.is_symlink())  # fmt: skip


def foreign(folder: Path, marker: dict | None = None) -> list[str]:
    """Paths in ``folder`` opdf did not write (top-most only: a foreign folder, not its files).
    A folder opdf created counts as foreign when it holds anything foreign."""
    folder = Path(folder)
    marker = marker if marker is not None else read(folder) or {"paths": []}
    owned = set(marker["paths"])
    alien = [p for p in contents(folder) if p not in owned and not _is_temporary(folder, p)]
    alien = [p for p in alien if not (folder / p).is_dir() or (folder / p).is_symlink()
             or not any(q.startswith(p + "/") for q in owned)]  # fmt: skip
    top = []
    for p in alien:
        if not any(p.startswith(t + "/") for t in top):
            top.append(p)
    return top


def describe(paths: list[str], limit: int = 4) -> str:
    shown = ", ".join(paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def legacy_paths(folder: Path) -> list[str] | None:
    """The files of an opdf folder written before markers existed, when ``folder`` is provably
    one (a run config with every key opdf writes, a summary with its config hash, a cached
    teacher's ``opdf-finetune.json``); else None. Only opdf's known names are listed."""
    import yaml

    folder = Path(folder)
    proof = False
    try:
        cfg = yaml.safe_load((folder / "config.yaml").read_text())
        proof = isinstance(cfg, dict) and set(cfg) >= _RUN_KEYS
    except (OSError, yaml.YAMLError):
        pass
    for name, key in (("summary.json", "config_hash"), ("opdf-finetune.json", "cache_key")):
        try:
            data = json.loads((folder / name).read_text())
        except (OSError, ValueError):
            continue
        proof = proof or (isinstance(data, dict) and key in data and "main_metric" in data)
    if not proof:
        return None
    found = [n for n in _LEGACY_TOP if (folder / n).is_file()]
    ckpts = folder / "checkpoints"
    if ckpts.is_dir() and not ckpts.is_symlink():
        found.append("checkpoints")
        found += [f"checkpoints/{n}" for n in _LEGACY_CKPT if (ckpts / n).is_file()]
    for d in _LEGACY_MODEL_DIRS:
        sub = folder / d
        if sub.is_dir() and not sub.is_symlink():
            found.append(d)
            found += [f"{d}/{f.name}" for f in sub.iterdir()
                      if f.name in _MODEL_FILES and f.is_file() and not f.is_symlink()]  # fmt: skip
    return sorted(found)


def claim(folder: Path, kind: str, *, what: str = "output_dir") -> dict:
    """Make ``folder`` opdf's before writing anything else in it: create it with a marker, or
    accept it when it already is opdf's (its marker, or a provable older opdf folder, which gets
    one now). Raises :class:`NotOwnedError` naming what it found otherwise."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    marker = read(folder)
    if marker is not None:
        return marker
    found = contents(folder)
    if (folder / MARKER).exists():  # not a marker opdf wrote (damaged, or a file of that name)
        found.append(MARKER)
    if not found:
        marker = identity(kind)
        _write(folder, marker)
        return marker
    legacy = legacy_paths(folder)
    if legacy is None:
        top = sorted({p.split("/", 1)[0] for p in found})
        raise NotOwnedError(
            f"{what} {str(folder)!r} holds {describe(top)}, which opdf did not write (no "
            f"{MARKER}); opdf never deletes or replaces such files: choose a new folder, or empty "
            "this one yourself"
        )
    marker = {**identity(kind), "adopted": True, "paths": legacy}
    _write(folder, marker)
    return marker


def record(folder: Path, *paths: str | Path, derived: bool = False) -> None:
    """Add paths opdf has just written under ``folder`` to its marker (a folder with every path
    under it now). ``derived``: written from the run by another command (``opdf merge`` /
    ``export`` into the run folder), listed as such too, so that the run's ``--overwrite`` can
    say it removes them. No-op for a folder without a marker (nothing to add to)."""
    folder = Path(folder)
    with _marker_locked(folder):
        _record(folder, paths, derived)


def derived(folder: Path) -> list[str]:
    """The top-level paths of ``folder`` that :func:`record` listed as ``derived`` and that
    still exist."""
    marker = read(folder) or {}
    return [p for p in marker.get("derived", []) if (Path(folder) / p).exists()]


@contextlib.contextmanager
def _marker_locked(folder: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``folder`` itself (flock on the directory: no lock file that
    the ownership rules would have to list), so that two processes adding to one marker (a live
    run and `opdf merge` on it) cannot lose each other's paths. No-op without ``fcntl``."""
    try:
        import fcntl  # POSIX only: stdlib, but absent on Windows
    except ImportError:  # pragma: no cover
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _record(folder: Path, paths: tuple[str | Path, ...], derived: bool = False) -> None:
    marker = read(folder)
    if marker is None:
        return
    owned = set(marker["paths"])
    tops = set(marker.get("derived", []))
    before = (len(owned), len(tops))
    for p in paths:
        path = folder / p
        rel = _rel(folder, path) if path.is_absolute() else Path(p).as_posix()
        parts = rel.split("/")
        owned.update("/".join(parts[: i + 1]) for i in range(len(parts)))  # its parent folders
        if derived:
            tops.add(parts[0])
        if path.is_dir() and not path.is_symlink():
            owned.update(_rel(folder, q) for q in path.rglob("*"))
    if (len(owned), len(tops)) != before:
        marker["paths"] = sorted(owned)
        if tops:
            marker["derived"] = sorted(tops)
        _write(folder, marker)


def remove_temporaries(folder: Path, subfolders: Iterable[str] = TEMPORARY_PLACES) -> list[str]:
    """Delete what writes killed mid-way left in an opdf folder (``.last.pt.x8e2k1qz.tmp``);
    returns their names. Only in a folder that is opdf's (marker or provable older folder)."""
    folder = Path(folder)
    if read(folder) is None and legacy_paths(folder) is None:
        return []
    gone = []
    for sub in subfolders:
        d = folder / sub if sub else folder
        if not d.is_dir() or d.is_symlink():
            continue
        for f in d.iterdir():
            if _is_temporary(folder, _rel(folder, f)):
                f.unlink(missing_ok=True)
                gone.append(_rel(folder, f))
    return gone


def remove_owned(folder: Path, under: str = "", *, check: bool = True, what: str = "output_dir"
                 ) -> None:  # fmt: skip
    """Delete what opdf wrote in ``folder`` (or in its subfolder ``under``): listed files first,
    then listed folders left empty. ``check``: refuse (:class:`NotOwnedError`, nothing deleted)
    when anything else is there."""
    folder = Path(folder)
    marker = read(folder)
    if marker is None:
        raise NotOwnedError(f"{what} {str(folder)!r} has no {MARKER}: opdf deletes nothing in it")
    if check:
        alien = [p for p in foreign(folder, marker) if not under or p == under
                 or p.startswith(under + "/")]  # fmt: skip
        if alien:
            raise NotOwnedError(
                f"{what} {str(folder)!r} holds {describe(alien)}, which opdf did not write; "
                "nothing was deleted: move it away, or choose a new folder"
            )
    remove_temporaries(folder, [under] if under in TEMPORARY_PLACES else [])
    owned = set(marker["paths"])
    mine = [p for p in owned if not under or p == under or p.startswith(under + "/")]
    for p in sorted(mine, key=lambda s: s.count("/"), reverse=True):  # deepest first
        path = folder / p
        if _through_link(folder, p):
            continue  # a listed folder replaced by a link: what it points to is not opdf's
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir():
            try:
                path.rmdir()  # only when empty: a foreign file inside keeps its folder
            except OSError:
                continue
        owned.discard(p)
    marker["paths"] = sorted(owned)
    _write(folder, marker)


def _through_link(folder: Path, rel: str) -> bool:
    """Whether a parent of ``folder/rel`` inside ``folder`` is a symbolic link."""
    parts = rel.split("/")[:-1]
    return any((folder / "/".join(parts[: i + 1])).is_symlink() for i in range(len(parts)))


def renew(folder: Path, kind: str) -> dict:
    """A new run identity for an opdf folder (after its old run's files were removed); the paths
    still listed stay listed."""
    old = read(folder) or {"paths": []}
    marker = {**identity(kind), "paths": [p for p in old["paths"] if (Path(folder) / p).exists()]}
    _write(folder, marker)
    return marker


def remove_folder(folder: Path, kind: str, *, what: str = "output_dir") -> None:
    """Delete an opdf folder whole (a cached teacher to retrain): its marker or a provable older
    opdf folder is required, and nothing else may be in it (:class:`NotOwnedError`, nothing
    deleted)."""
    folder = Path(folder)
    if not folder.exists():
        return
    claim(folder, kind, what=what)
    remove_owned(folder, what=what)
    (folder / MARKER).unlink(missing_ok=True)
    folder.rmdir()
