"""benchmarks/perf.py: the overrides of its methods x variants section load for every method config.

The script itself takes minutes (``python benchmarks/perf.py --quick``); what can break as methods
land is how its four variants combine with each config (``variant:`` keys, explicit ``overparam``),
which loading the configs checks in a second.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from opdf.run.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def _perf():
    spec = importlib.util.spec_from_file_location("perf", ROOT / "benchmarks" / "perf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


perf = _perf()
CONFIGS = [c for mode in perf.METHOD_CONFIGS.values() for c in mode.values()]
EXPECTED = {"base": ("none", False), "svd": ("svd", False), "mpo": ("mpo", False),
            "opdf": ("mpo", True)}  # fmt: skip


def test_every_method_config_exists():
    missing = [c for c in CONFIGS if not (ROOT / c).is_file()]
    assert not missing, f"perf.py names configs that do not exist: {missing}"


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("variant", list(perf.VARIANTS))
def test_variant_overrides_load(config, variant):
    cfg = load_config(ROOT / config, perf.variant_overrides(variant, 3))
    scheme, aligned = EXPECTED[variant]
    assert cfg.variant == variant
    assert cfg.overparam == scheme
    assert (cfg.align.weight > 0) == aligned
    if scheme == "mpo":
        assert cfg.unit_modes == 3
