"""`protossl demo`: DINO against DINO + KoLeo-proto on digits, side by side."""

from __future__ import annotations

import argparse
from pathlib import Path

from protossl.commands.common import positive_int

NAME = "demo"
# Imported before the command runs, so the parser itself stays light (cli.main).
NEEDS = ("protossl.demo",)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``protossl demo`` and its flags."""
    demo = sub.add_parser("demo", help="DINO vs DINO + KoLeo-proto on digits, side by side")
    demo.add_argument("--out", default="demo_runs", help="folder for the two runs and the table")
    demo.add_argument("--epochs", type=positive_int, default=None, help="epochs per run")
    demo.add_argument("--sequential", action="store_true", help="run one after the other")
    demo.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from protossl.demo import run_demo

    run_demo(Path(args.out), epochs=args.epochs, parallel=not args.sequential)
    return 0
