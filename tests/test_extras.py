"""Optional parts: a missing extra is one error naming it, never a bare ModuleNotFoundError."""

from __future__ import annotations

import sys

import pytest

from opdf.errors import OpdfError
from opdf.extras import EXTRAS, MissingExtraError, require


def _missing(monkeypatch, *names):
    for name in list(sys.modules):
        if name.split(".")[0] in names:
            monkeypatch.delitem(sys.modules, name)
    for name in names:
        monkeypatch.setitem(sys.modules, name, None)  # `import name` now fails as if absent


def test_report_plots_without_matplotlib_name_the_report_extra(monkeypatch):
    from opdf.report import plots

    _missing(monkeypatch, "matplotlib")
    with pytest.raises(MissingExtraError, match=r"pip install 'opdf\[report\]'") as exc:
        plots._pyplot()
    assert isinstance(exc.value, OpdfError) and isinstance(exc.value, ImportError)
    assert str(exc.value).startswith("opdf report's plots needs matplotlib")


def test_the_trainer_integration_without_accelerate_names_the_hf_extra(monkeypatch):
    import transformers
    from transformers.utils import is_accelerate_available

    # as in a session that imported transformers first: it has seen accelerate installed, and
    # its Trainer module is not loaded yet
    assert is_accelerate_available()
    monkeypatch.delattr(transformers, "Trainer", raising=False)
    for name in [n for n in sys.modules if n.startswith("transformers.trainer")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.delitem(sys.modules, "opdf.integrations.transformers", raising=False)
    _missing(monkeypatch, "accelerate")
    with pytest.raises(MissingExtraError, match=r"needs accelerate.*pip install 'opdf\[hf\]'"):
        import opdf.integrations.transformers  # noqa: F401


def test_a_broken_install_is_not_reported_as_a_missing_extra(monkeypatch):
    def broken(name, *args, **kwargs):
        raise ModuleNotFoundError("No module named 'kiwisolver'", name="kiwisolver")

    monkeypatch.setattr("importlib.import_module", broken)
    with pytest.raises(ModuleNotFoundError) as exc:
        require("matplotlib", "plots")
    assert not isinstance(exc.value, MissingExtraError)


def test_every_extra_named_here_is_declared_in_pyproject():
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    for module, extra in EXTRAS.items():
        assert any(req.startswith(module) for req in extras[extra]), (module, extra)
        assert not any(req.startswith(module) for req in project["dependencies"])
