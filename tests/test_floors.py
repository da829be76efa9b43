"""The floors of DESIGN.md hold: `lint-imports` passes on the package and fails on a planted
upward import (so the contract can fail, and `make test` would catch the arrow)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")
pytestmark = pytest.mark.skipif(not LINT.exists(), reason="import-linter not installed (opdf[dev])")


def _lint(src: Path, config: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run(
        [str(LINT), "--config", str(config), "--no-cache"],
        capture_output=True,
        text=True,
        env=env,
        cwd=src,
        timeout=120,
    )


def test_floors_and_no_circles_hold() -> None:
    result = _lint(ROOT / "src", ROOT / "pyproject.toml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "planted", "broken"),
    [
        ("mpo/shapes.py", "import opdf.overparam  # noqa\n", "floors: imports point down"),
        ("distill/kd.py", "import opdf.run.checkpoint  # noqa\n", "floors: imports point down"),
    ],
)
def test_a_planted_upward_import_breaks_the_contract(
    tmp_path: Path, module: str, planted: str, broken: str
) -> None:
    src = tmp_path / "src"
    shutil.copytree(
        ROOT / "src" / "opdf", src / "opdf", ignore=shutil.ignore_patterns("__pycache__")
    )
    target = src / "opdf" / module
    target.write_text(planted + target.read_text())
    result = _lint(src, ROOT / "pyproject.toml")
    assert result.returncode != 0
    assert f"{broken} BROKEN" in result.stdout
