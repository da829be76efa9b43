"""``opdf methods``: the registered distillation methods and their options."""

from __future__ import annotations

import dataclasses
import textwrap

import yaml


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "methods",
        help="list the registered distillation methods and their options",
        description="Each registered method (the values of `method:` in a config) with a one-line "
        "description and its options with their defaults (the keys of the config section named "
        "after the method, e.g. `kd: {temperature: 2}` or the override kd.temperature=2).",
    )
    form = p.add_mutually_exclusive_group()
    form.add_argument("--brief", action="store_true", help="one line per method, no options")
    form.add_argument("--options", action="store_true",
                      help="one line per option, with its type")  # fmt: skip
    p.set_defaults(run=run)


def default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def yaml_value(value) -> str:
    """A value as it is written in a config (null, true, [a, b])."""
    return yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("...")


def _type(f: dataclasses.Field) -> str:
    return f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))


def run(args) -> int:
    from opdf.distill import methods

    registered = methods()
    width = max(len(n) for n in registered)
    for name, cls in registered.items():
        print(f"{name:<{width}}  {cls.description}")
        fields = dataclasses.fields(cls.Options)
        if args.brief or not fields:
            continue
        if args.options:
            for f in fields:
                print(f"{'':<{width}}    {name}.{f.name}: {yaml_value(default(f)).strip()}"
                      f"  ({_type(f)})")  # fmt: skip
            continue
        text = " ".join(f"{f.name}={yaml_value(default(f)).strip()}" for f in fields)
        indent = " " * (width + 4)
        print(textwrap.fill(text, width=100, initial_indent=indent, subsequent_indent=indent,
                            break_on_hyphens=False, break_long_words=False))  # fmt: skip
    return 0
