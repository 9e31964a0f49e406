"""`protossl sweep`: a grid of trainings and evaluations with a results table."""

from __future__ import annotations

import argparse
import json

from protossl.commands.common import positive_int

NAME = "sweep"
# Imported before the command runs, so the parser itself stays light (cli.main).
NEEDS = ("protossl.sweep",)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``protossl sweep`` and its flags."""
    sweep = sub.add_parser(
        "sweep", help="run a grid of trainings and evaluations, collect results.csv"
    )
    sweep.add_argument("sweep", help="sweep YAML file (preset, set, grid, eval)")
    sweep.add_argument("--out", required=True, help="sweep directory (one folder per run)")
    sweep.add_argument("--jobs", type=positive_int, default=1, help="runs at a time")
    sweep.add_argument("--gpus", help="comma-separated GPU ids: one run per GPU at a time")
    sweep.add_argument("--json", action="store_true", help="print the results as JSON")
    sweep.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from protossl.sweep import run_sweep

    gpus = [g for g in (args.gpus or "").split(",") if g.strip()]
    rows = run_sweep(args.sweep, args.out, jobs=args.jobs if not gpus else len(gpus), gpus=gpus)
    if args.json:
        print(json.dumps(rows))
    return 0 if all(row["status"] == "done" for row in rows) else 1
