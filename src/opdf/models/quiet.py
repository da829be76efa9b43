"""Silence transformers' notices and progress bars during opdf's own loads and saves."""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def quiet_transformers():
    """No "newly initialized weights" notices (a new head is expected) and no progress bars."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()
