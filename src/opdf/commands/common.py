"""What the verbs that take a config share: ``CONFIG [key=value ...] [--flags]`` arguments, and
flags given after the overrides (argparse's REMAINDER would keep them as overrides)."""

from __future__ import annotations

import argparse


def add_config_arguments(p: argparse.ArgumentParser, config_help: str, overrides_help: str):
    """``config`` and the dotted ``overrides``; remembers ``p`` for :func:`split_late_flags`."""
    p.add_argument("config", help=config_help)
    p.add_argument("overrides", nargs=argparse.REMAINDER, metavar="key=value", help=overrides_help)
    p.set_defaults(flags_parser=p)


def split_late_flags(args: argparse.Namespace) -> argparse.Namespace:
    """Options given after the overrides (``CONFIG seed=1 --resume``) are parsed here."""
    flags = [o for o in args.overrides if o.startswith("-")]
    if flags:
        late = args.flags_parser.parse_args([*flags, args.config])
        for key, value in vars(late).items():
            if key not in ("config", "overrides") and value:
                setattr(args, key, value)
    args.overrides = [o for o in args.overrides if not o.startswith("-")]
    return args
