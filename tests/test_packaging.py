"""Packaging: opdf installs into an environment of one's own without replacing its torch.

pyproject.toml declares ranges (the exact, tested versions are in constraints.txt). The slow tests
build the wheel, install it with ``--no-deps`` into a fresh venv that already holds the pinned
torch and the other dependencies (a view of this environment's site-packages without opdf, on
the venv's path through a ``.pth`` file: not ``--system-site-packages``, which would also expose
the editable opdf), run the README's quick start there, and ask pip's resolver (``--dry-run
--report``, offline) what installing the wheel would change next to each supported torch.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
import tomllib
import venv
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
#: torch releases opdf supports (its lower bound up to the tested pin), and CUDA builds
SUPPORTED_TORCH = ["2.6.0", "2.7.1", "2.8.0", "2.9.1", "2.10.0", "2.11.0", "2.12.0", "2.13.0",
                   "2.6.0+cu124", "2.13.0+cu128"]  # fmt: skip
#: the ones pip's resolver is asked about (a lower bound only: the ends of the range decide)
RESOLVED_TORCH = ["2.6.0", "2.6.0+cu124", "2.13.0"]


def _pins(lines):
    return {Requirement(r).name.lower(): Requirement(r) for r in lines}


def test_dependencies_are_ranges_and_the_constraints_pin_every_one():
    deps = _pins(PROJECT["dependencies"])
    for req in deps.values():
        assert not any(s.operator in ("==", "===", "~=") for s in req.specifier), req
        assert any(s.operator == ">=" for s in req.specifier), f"{req}: no lower bound"
    assert {"matplotlib", "accelerate"}.isdisjoint(deps)  # extras: report, hf
    lock = [ln for ln in (ROOT / "constraints.txt").read_text().splitlines()
            if ln.strip() and not ln.startswith("#")]  # fmt: skip
    pinned = _pins(lock)
    assert all(len(r.specifier) == 1 and next(iter(r.specifier)).operator == "==" for r in
               pinned.values())  # fmt: skip
    extras = PROJECT["optional-dependencies"]
    for req in [*PROJECT["dependencies"], *(r for v in extras.values() for r in v)]:
        req = Requirement(req)
        if req.name == "opdf":
            continue
        exact = pinned.get(req.name.lower())
        assert exact is not None, f"{req.name} is not pinned in constraints.txt"
        version = next(iter(exact.specifier)).version
        assert req.specifier.contains(version), f"constraints.txt {exact} is outside {req}"
    # the supported torch releases are the declared range's
    torch_req = deps["torch"]
    assert all(torch_req.specifier.contains(Version(v)) for v in SUPPORTED_TORCH)
    lower = min(Version(s.version) for s in torch_req.specifier if s.operator == ">=")
    assert Version(SUPPORTED_TORCH[0]) == lower


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the sources (the checkout is left as it was)."""
    import shutil

    src = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "src", src / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))  # fmt: skip
    dist = tmp_path_factory.mktemp("dist")
    _pip(sys.executable, "wheel", "--no-deps", "--no-build-isolation", "-w", dist, src)
    (found,) = dist.glob("opdf-*.whl")
    return found


def _clean_env() -> dict[str, str]:
    """No PYTHONPATH (the checkout), no pip configuration (files, PIP_* variables: find-links,
    indexes): pip sees the venv and the wheel, nothing else."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("PIP_")}
    return {**env, "PIP_CONFIG_FILE": os.devnull, "PIP_NO_INPUT": "1"}


def _pip(python, *args, check: bool = True):
    argv = [str(python), "-m", "pip", "--disable-pip-version-check", *map(str, args)]
    done = subprocess.run(argv, capture_output=True, text=True, env=_clean_env())
    assert done.returncode == 0 or not check, done.stdout + done.stderr
    return done


def _fresh_venv(path: Path, torch_version: str | None = None) -> Path:
    """A venv without pip or system site-packages whose path also holds this environment's
    site-packages less opdf (and, with ``torch_version``, a torch of that version instead)."""
    venv.EnvBuilder(with_pip=False, symlinks=True).create(path)
    python = path / "bin" / "python"
    own = Path(subprocess.check_output(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
    ).strip())  # fmt: skip
    deps = path / "deps"  # this environment's packages, opdf and (maybe) torch's metadata left out
    deps.mkdir()
    site = Path(sysconfig.get_paths()["purelib"])
    for entry in site.iterdir():
        name = entry.name.lower()
        if name.startswith(("opdf", "__editable__")) or name.endswith(".pth"):
            continue
        if torch_version and name.startswith("torch-") and name.endswith(".dist-info"):
            continue
        (deps / entry.name).symlink_to(entry)
    if torch_version:  # what pip reads to know an installed torch: its metadata
        meta = own / f"torch-{torch_version}.dist-info"
        meta.mkdir()
        (meta / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: torch\nVersion: {torch_version}\n"
        )
        (meta / "INSTALLER").write_text("pip\n")
        (meta / "RECORD").write_text("")
    (own / "shared-deps.pth").write_text(f"{deps}\n")
    return python


@pytest.mark.slow
def test_the_wheel_installs_with_no_deps_next_to_the_pinned_torch_and_runs_the_quick_start(
    wheel, tmp_path
):
    python = _fresh_venv(tmp_path / "venv")
    _pip(python, "install", "--no-index", "--no-deps", wheel)
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start (Python)", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    script = tmp_path / "quick_start.py"
    script.write_text(
        # the README's code verbatim, with BERT-base width shrunk to 64 (seconds, not minutes)
        "import torch, transformers\n"
        "class SmallBertConfig(transformers.BertConfig):\n"
        "    def __init__(self, **kw):\n"
        "        super().__init__(**{'hidden_size': 64, 'intermediate_size': 256,\n"
        "                            'num_attention_heads': 2, 'vocab_size': 1000, **kw})\n"
        "transformers.BertConfig = SmallBertConfig\n"
        "loader = [{'input_ids': torch.randint(0, 1000, (2, 8)), 'labels': torch.tensor([0, 1])}]\n"
        + code
        + "plain = BertForSequenceClassification(BertConfig(num_hidden_layers=6, num_labels=2))\n"
        "m = transformers.AutoModelForSequenceClassification.from_pretrained('student')\n"
        "print('opdf from', opdf.__file__)\n"
        "print('torch', torch.__version__)\n"
        "print('params merged/plain', sum(p.numel() for p in m.parameters()),\n"
        "      sum(p.numel() for p in plain.parameters()))\n"
    )  # fmt: skip
    env = _clean_env()
    done = subprocess.run([python, script], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert f"opdf from {tmp_path / 'venv'}" in out  # the installed wheel, not the checkout
    assert "torch 2.13.0" in out
    trained, (merged, plain) = int(out.split()[0]), re.search(r"plain (\d+) (\d+)", out).groups()
    assert merged == plain and trained > int(plain)  # over-parameterized, merged back exactly
    version = subprocess.run([tmp_path / "venv" / "bin" / "opdf", "--version"], env=env,
                             capture_output=True, text=True)  # fmt: skip
    assert version.returncode == 0 and PROJECT["version"] in version.stdout


@pytest.mark.slow
def test_installing_the_wheel_never_replaces_a_supported_torch(wheel, tmp_path):
    """pip's resolver, offline, next to each supported torch: it installs opdf and nothing else
    (with the report and hf extras too); a torch outside the range would have to be replaced,
    and pip, with no index, would fail to find one."""

    def would_install(version: str):
        python = _fresh_venv(tmp_path / version, torch_version=version)
        report = tmp_path / f"{version}.json"
        done = _pip(python, "install", "--no-index", "--dry-run", "--quiet", "--report", report,
                    f"opdf[report,hf] @ {wheel.as_uri()}", check=False)  # fmt: skip
        if done.returncode:
            return done.stdout + done.stderr
        install = json.loads(report.read_text())["install"]
        return sorted(item["metadata"]["name"] for item in install)

    for version in RESOLVED_TORCH:
        assert would_install(version) == ["opdf"], version
    # and the check can fail: a torch below the range would have to be replaced
    old = would_install("2.5.1")
    assert "torch" in old and old != ["opdf"], old
