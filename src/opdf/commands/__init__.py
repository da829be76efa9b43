"""CLI verbs, one module each: ``add_parser(subparsers)`` and ``run(args) -> int``.

The one place where imports of opdf sit inside functions, on purpose: ``opdf --help`` (and each
verb's ``--help``) imports every verb module to build its parser, so a verb module imports at its
top only what is light (argparse, :mod:`opdf.choices`, :mod:`opdf.errors`, suite files) and loads
its work (torch, transformers, numpy) when the verb runs. ``tests/test_imports.py`` holds this.
"""
