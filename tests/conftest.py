"""Shared fixtures: the whole test session uses its own opdf cache, never the user's."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def opdf_cache(tmp_path_factory):
    """One cache for the whole session (the tiny teacher is fine-tuned once, built-ins prepared
    once), under pytest's temporary folder."""
    path = tmp_path_factory.getbasetemp() / "opdf-cache"
    old = os.environ.get("OPDF_CACHE")
    os.environ["OPDF_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("OPDF_CACHE", None)
    else:
        os.environ["OPDF_CACHE"] = old
