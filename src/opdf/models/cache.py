"""Where prepared models live: ``<cache_dir()>/models`` (``$OPDF_CACHE`` or ``~/.cache/opdf``,
never in git). The cache root and the atomic folder write live in :mod:`opdf.storage`; their
names stay importable here."""

from __future__ import annotations

from pathlib import Path

from opdf.storage import atomic_dir, cache_dir

__all__ = ["atomic_dir", "cache_dir", "models_dir"]


def models_dir() -> Path:
    """Prepared built-in models: ``<cache_dir()>/models``."""
    return cache_dir() / "models"
