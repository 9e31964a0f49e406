"""`protossl presets`: list the bundled recipes, or print one resolved."""

from __future__ import annotations

import argparse

NAME = "presets"
# Imported before the command runs, so the parser itself stays light (cli.main).
NEEDS = ("protossl.config",)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``protossl presets`` and its flags."""
    presets = sub.add_parser("presets", help="list the bundled recipes")
    presets.add_argument("--show", metavar="NAME", help="print a preset's fully resolved config")
    presets.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from protossl.config import available_presets, load_config, preset_description

    if args.show:
        import yaml

        print(yaml.safe_dump(load_config(args.show).to_dict(), sort_keys=False), end="")
        return 0
    for name in available_presets():
        print(f"{name:<14} {preset_description(name)}")
    return 0
