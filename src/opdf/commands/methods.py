"""``opdf methods``: the registered distillation methods, one line each."""

from __future__ import annotations

import dataclasses


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "methods",
        help="list the registered distillation methods",
        description="One line per registered method (the values of `method:` in a config); "
        "with --options, each method's options and defaults (its config section).",
    )
    p.add_argument("--options", action="store_true", help="also print each method's options")
    p.set_defaults(run=run)


def run(args) -> int:
    from opdf.distill import methods

    registered = methods()
    width = max(len(n) for n in registered)
    for name, cls in registered.items():
        print(f"{name:<{width}}  {cls.description}")
        if args.options:
            for f in dataclasses.fields(cls.Options):
                default = f.default if f.default is not dataclasses.MISSING else None
                print(f"{'':<{width}}    {name}.{f.name}: {default!r}")
    return 0
