"""Suites of runs: ``opdf bench SUITE.yaml`` (format in :mod:`opdf.bench.suite`)."""

from opdf.bench.suite import Cell, Suite, load_suite

__all__ = ["Cell", "Suite", "load_suite"]
