"""`protossl dedupe`: merge duplicate prototypes into a compact head (safetensors)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from protossl.commands.common import CHECKPOINT_FORMATS, positive_float
from protossl.core.errors import UserError
from protossl.core.run_layout import RunPaths

NAME = "dedupe"
# Imported before the command runs, so the parser itself stays light (cli.main).
NEEDS = ("protossl.diagnostics.dedupe",)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``protossl dedupe`` and its flags."""
    dedupe = sub.add_parser("dedupe", help="merge duplicate prototypes into a compact head")
    dedupe.add_argument("checkpoint", help="run directory or checkpoint file")
    dedupe.add_argument("--out", required=True, help="output .safetensors file")
    dedupe.add_argument(
        "--format",
        default="auto",
        choices=CHECKPOINT_FORMATS,
        help="checkpoint layout (default: detect it)",
    )
    dedupe.add_argument("--key", metavar="NAME", help="read exactly this tensor as prototypes")
    dedupe.add_argument("--eps", type=positive_float, default=0.025, help="linking distance")
    dedupe.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    dedupe.add_argument("--force", action="store_true", help="replace an existing --out file")
    dedupe.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch
    import torch.nn.functional as F

    from protossl.diagnostics.checkpoints import read_prototype_heads
    from protossl.diagnostics.dedupe import (
        assignment_agreement,
        dedupe_prototypes,
        save_compact_head,
    )
    from protossl.runs.outputs import check_output_file

    # Before reading anything: a slip in --out must never cost the input or a run's state.
    check_output_file(args.out, force=args.force, inputs=_checkpoint_inputs(args.checkpoint))
    fmt, heads = read_prototype_heads(args.checkpoint, format=args.format, key=args.key)
    compact = {}
    report: dict[str, Any] = {"checkpoint": str(args.checkpoint), "format": fmt, "heads": {}}
    for name, weights in heads.items():
        try:
            head = dedupe_prototypes(weights, eps=args.eps)
        except ValueError as exc:
            raise UserError(f"{args.checkpoint}: head '{name}': {exc}") from None
        # Agreement is measured on random unit directions (a fixed seed): no data needed.
        probes = F.normalize(
            torch.randn(10_000, weights.shape[1], generator=torch.Generator().manual_seed(0)),
            dim=1,
        )
        compact[name.replace("/", ".")] = head
        report["heads"][name] = {
            "K": int(weights.shape[0]),
            "M": int(head.prototypes.shape[0]),
            "bytes_saved": head.bytes_saved,
            "argmax_agreement_random_directions": assignment_agreement(weights, head, probes),
        }
    save_compact_head(compact, args.out)
    report["out"] = str(args.out)
    if args.json:
        print(json.dumps(report))
        return 0
    for name, info in report["heads"].items():
        print(
            f"{name}: K {info['K']} -> M {info['M']} prototypes, "
            f"{info['bytes_saved'] / 2**20:.2f} MiB saved, argmax agreement "
            f"{info['argmax_agreement_random_directions']:.4f} on 10,000 random directions",
            file=sys.stderr,
        )
    print(f"compact head ({fmt}) written to {args.out}", file=sys.stderr)
    return 0


def _checkpoint_inputs(path: str) -> list[Path]:
    """The files a command reading ``path`` (a checkpoint or a run folder) depends on."""
    source = Path(path)
    if source.is_dir():
        return [source, RunPaths(source).last_checkpoint]
    return [source]
