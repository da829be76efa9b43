"""The ``opdf`` command line: one sub-command per module in :mod:`opdf.commands`.

Each verb module exposes ``add_parser(subparsers)`` and ``run(args) -> int``. User errors
(:class:`opdf.errors.OpdfError` and its :class:`~opdf.errors.ConfigError`, raised wherever the
user's input is at fault; ``OSError`` such as a missing file or a broken ``config.json``; a
damaged YAML or pickle file) are printed as one line and exit with code 2, never as a traceback;
``OPDF_DEBUG=1`` shows the traceback. A reader that closes the pipe early (``| head``) ends the
command quietly (exit 141, no message). A run that diverged (:class:`opdf.errors.DivergedError`: a
NaN/inf loss or gradient) exits with code 3, its message naming the step and the loss terms.
Anything else (a plain ``ValueError``, ``KeyError``, ...) is a bug in opdf and shows its
traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import pickle
import sys
import warnings
from collections.abc import Sequence

import yaml

from opdf.choices import suggest
from opdf.errors import DivergedError, OpdfError

# Verb name -> module under opdf.commands. Order is the order of `opdf --help`.
VERBS = ["inspect", "finetune", "distill", "merge", "export", "bench", "report", "methods"]
# What the user can fix: printed as one line (exit code 2). ConfigError is an OpdfError.
USER_ERRORS = (OpdfError, OSError, yaml.YAMLError, pickle.UnpicklingError)
EXIT_USER_ERROR, EXIT_DIVERGED = 2, 3


class _Version(argparse.Action):
    """``--version``: the package metadata is read only when asked."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        import opdf

        print(f"opdf {opdf.__version__}")  # on stdout, as argparse's own version action
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="opdf",
        description=(
            "Knowledge distillation with an over-parameterized student: every chosen weight is "
            "trained as a matrix product operator (MPO) and merged back after training, so the "
            "deployed student keeps its size and latency."
        ),
    )
    parser.add_argument("--version", action=_Version, help="show opdf's version and exit")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb in VERBS:
        try:
            module = importlib.import_module(f"opdf.commands.{verb}")
        except ModuleNotFoundError as exc:
            if exc.name == f"opdf.commands.{verb}":
                continue  # verb not built yet
            raise
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    if words and not words[0].startswith("-") and words[0] not in VERBS:
        hint = suggest(words[0], VERBS)  # argparse suggests only from 3.14, when asked to
        if hint:
            parser.error(f"unknown verb {words[0]!r}{hint}; verbs: {', '.join(VERBS)}")
    args = parser.parse_args(argv)
    if not getattr(args, "verb", None):
        parser.print_help()
        return 2
    try:
        with _one_line_warnings(args.verb):
            code = int(args.run(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return code
    except BrokenPipeError:
        return _pipe_closed()
    except USER_ERRORS as exc:
        if os.environ.get("OPDF_DEBUG"):
            raise
        message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        print(f"opdf {args.verb}: error: {message}", file=sys.stderr)
        return EXIT_DIVERGED if isinstance(exc, DivergedError) else EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"opdf {args.verb}: interrupted", file=sys.stderr)
        return 130


@contextlib.contextmanager
def _one_line_warnings(verb: str):
    """opdf's own warnings (a damaged checkpoint passed over, what --overwrite removed, a skipped
    summary) as ``opdf VERB: warning: ...`` lines, not Python's file:line and source echo;
    other libraries' warnings keep their usual form."""
    original = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, UserWarning) and f"{os.sep}opdf{os.sep}" in str(filename):
            text = " ".join(str(message).split())
            print(f"opdf {verb}: warning: {text}", file=file or sys.stderr)
        else:
            original(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = original


EXIT_PIPE_CLOSED = 141  # 128 + SIGPIPE, what a shell reports for a tool that stopped this way


def _pipe_closed() -> int:
    """The reader of our output went away (``opdf report ... | head -1``): normal for a pipe, so
    stop quietly. stdout is pointed at /dev/null, so that the interpreter's last flush of the
    unwritten rest does not print an error either."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return EXIT_PIPE_CLOSED


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
