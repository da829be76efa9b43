"""Offline assets shipped inside PyPI packages (data sets, model folders, ONNX files): a file of
an installed distribution, found through its metadata without importing it, or one error that
says which package to install and how."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

__all__ = ["installed_file"]

MAKE_HINT = "the Makefile's asset step installs it"


def installed_file(dist: str, relative: str, *, needed_for: str, pip: str,
                   must_hold: str | None = None) -> Path:  # fmt: skip
    """``relative`` (a file, or a folder holding ``must_hold``) inside the installed distribution
    ``dist``. FileNotFoundError names what needs it and the ``pip install`` arguments."""
    try:
        found = metadata.distribution(dist)
    except metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"{needed_for} needs the PyPI package {dist!r}: `pip install {pip}` ({MAKE_HINT})"
        ) from None
    path = Path(found.locate_file(relative))
    expected = path / must_hold if must_hold else path
    if not expected.is_file():
        raise FileNotFoundError(f"{dist} is installed but {expected} is missing; reinstall it")
    return path
