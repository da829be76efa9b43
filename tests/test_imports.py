"""The import graph has no cycle: every ``opdf`` module imports on its own, first, in a fresh
interpreter (a cycle shows up as an ImportError for the module that enters it first)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# One interpreter imports the third-party libraries once (never opdf), then forks a child per
# opdf module: each child starts with no opdf module loaded, as a fresh interpreter would, without
# paying for torch's import 47 times.
SCRIPT = textwrap.dedent(
    r"""
    import importlib, importlib.util, os, pathlib, sys, traceback

    import numpy, scipy.stats, sklearn.metrics, sklearn.model_selection, torch, tqdm.auto, yaml
    import torch.nn.utils.parametrize, torch.utils.data

    assert not any(m == "opdf" or m.startswith("opdf.") for m in sys.modules)
    root = pathlib.Path(importlib.util.find_spec("opdf").origin).parent
    names = []
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        if parts[-1] != "__main__":  # runs the CLI
            names.append(".".join(parts))
    failed = []
    for name in names:
        pid = os.fork()
        if pid == 0:
            try:
                importlib.import_module(name)
            except BaseException:
                traceback.print_exc()
                os._exit(1)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        if status:
            failed.append(name)
    print(len(names), "modules;", "failed:", " ".join(failed) or "none")
    sys.exit(1 if failed else 0)
    """
)


def test_every_module_imports_alone_in_a_fresh_interpreter():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    count = int(done.stdout.split()[0])
    assert count >= 40  # the walk found the package's modules


def test_help_and_version_do_not_import_torch():
    """`opdf --help` (and each verb's --help) builds every verb's parser: none may pay for torch."""
    script = textwrap.dedent(
        """
        import contextlib, io, sys
        from opdf.cli import main
        out = io.StringIO()
        for argv in (["--help"], ["--version"], ["distill", "--help"], ["inspect", "--help"]):
            with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
                main(argv)
        heavy = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "transformers", "numpy"})
        text = out.getvalue()
        print(heavy, text.count("usage: opdf"), "opdf 0" in text or text)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[0] == "[] 3 True", done.stdout
