"""Shared fixtures: the whole test session uses its own opdf cache, never the user's."""

from __future__ import annotations

import os

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # one thread per worker (and per process a test starts): `make test` runs as many workers as
    # cores, and OpenMP oversubscription can make a step several times slower
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def opdf_cache(tmp_path_factory):
    """One cache for the whole session (the tiny teacher is fine-tuned once, built-ins prepared
    once), under pytest's temporary folder. Under pytest-xdist (``make test`` runs ``-n 2``) the
    workers share it: the session's root folder, not each worker's; its entries are written
    atomically, so two workers that build the same one at once keep one copy."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # pytest-of-<user>/pytest-<N>/, the parent of popen-gw<i>/
    path = base / "opdf-cache"
    old = os.environ.get("OPDF_CACHE")
    os.environ["OPDF_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("OPDF_CACHE", None)
    else:
        os.environ["OPDF_CACHE"] = old


@pytest.fixture
def contraction_modes(monkeypatch) -> set[tuple[bool, bool]]:
    """Every MPO contraction from now on, recorded as (grad enabled = a training forward, the
    contraction follows autocast): what the bf16-contraction opt-ins must switch, and when."""
    import torch

    import opdf.overparam as op

    seen: set[tuple[bool, bool]] = set()
    policy = op.contract_weight

    def recording(core_list, shape, *, follow_autocast=False):
        seen.add((torch.is_grad_enabled(), follow_autocast))
        return policy(core_list, shape, follow_autocast=follow_autocast)

    monkeypatch.setattr(op, "contract_weight", recording)
    return seen
