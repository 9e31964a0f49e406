"""`protossl analyze`: unique prototypes M, uniqueness curve and NN distances of a checkpoint."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from protossl.commands.common import CHECKPOINT_FORMATS, positive_float
from protossl.core.errors import UserError

NAME = "analyze"
# Imported before the command runs, so the parser itself stays light (cli.main).
NEEDS = ("protossl.diagnostics.checkpoints",)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``protossl analyze`` and its flags."""
    analyze = sub.add_parser("analyze", help="count unique prototypes in a checkpoint")
    analyze.add_argument("checkpoint", help="run directory or checkpoint file")
    analyze.add_argument(
        "--format",
        default="auto",
        choices=CHECKPOINT_FORMATS,
        help="checkpoint layout (default: detect it)",
    )
    analyze.add_argument(
        "--key",
        metavar="NAME",
        help="read exactly this 2-D tensor (or weight-normalized layer) as the prototypes",
    )
    analyze.add_argument("--eps", type=positive_float, default=0.025, help="linking distance")
    analyze.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    analyze.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from protossl.diagnostics import summarize_prototypes
    from protossl.diagnostics.checkpoints import read_prototype_heads

    fmt, heads = read_prototype_heads(args.checkpoint, format=args.format, key=args.key)
    summaries: dict[str, dict[str, Any]] = {}
    for name, weights in heads.items():
        try:
            summaries[name] = summarize_prototypes(weights, eps=args.eps)
        except ValueError as exc:
            raise UserError(f"{args.checkpoint}: head '{name}': {exc}") from None
    result: dict[str, Any] = {"checkpoint": str(args.checkpoint), "format": fmt}
    if args.key is not None:
        result["key"] = args.key
    result["heads"] = summaries
    if args.json:
        print(json.dumps(result))
        return 0
    how = "auto-detected" if args.format == "auto" and args.key is None else "as requested"
    source = f"tensor '{args.key}'" if args.key is not None else f"format {fmt}"
    print(f"{args.checkpoint}: {source} ({how}), {len(summaries)} head(s)", file=sys.stderr)
    for name, head in summaries.items():
        curve = "  ".join(f"{eps:g}:{m}" for eps, m in head["uniqueness_curve"])
        nn = head["nn_distance_quantiles"]
        nn_text = f"q10 {nn['q10']:.3f}  median {nn['q50']:.3f}  q90 {nn['q90']:.3f}" if nn else "-"
        norms = head["norm_quantiles"]
        if norms["q100"] - norms["q0"] <= 1e-6 * max(abs(norms["q100"]), 1e-12):
            norm_text = f"all {norms['q50']:.4g} (directions only)"
        else:
            norm_text = (
                f"min {norms['q0']:.4g}  q10 {norms['q10']:.4g}  median {norms['q50']:.4g}"
                f"  q90 {norms['q90']:.4g}  max {norms['q100']:.4g}"
            )
        print(
            f"{name}: K {head['K']}  M {head['M']}  M/K {head['M_over_K']:.3f}"
            f"  (eps {head['eps']})\n"
            f"  uniqueness curve (eps:M)  {curve}\n"
            f"  largest groups            {head['largest_groups']}\n"
            f"  nearest-neighbour dist    {nn_text}\n"
            f"  prototype norms           {norm_text}",
            file=sys.stderr,
        )
    return 0
