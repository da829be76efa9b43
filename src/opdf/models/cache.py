"""Where prepared models live: ``$OPDF_CACHE`` or ``~/.cache/opdf`` (never in git)."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def cache_dir() -> Path:
    """The opdf cache root: env ``OPDF_CACHE`` if set, else ``~/.cache/opdf``."""
    root = os.environ.get("OPDF_CACHE") or "~/.cache/opdf"
    return Path(root).expanduser()


def models_dir() -> Path:
    """Prepared built-in models: ``<cache_dir()>/models``."""
    return cache_dir() / "models"


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a fresh temporary folder next to ``final``; on success rename it to ``final``.

    On error the temporary folder is removed and ``final`` is untouched. If another process
    created ``final`` meanwhile, its copy is kept and ours is discarded.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        try:
            os.replace(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
