"""`protossl export`: a run's backbone as safetensors + JSON that timm rebuilds alone."""

from __future__ import annotations

import argparse
import json
import sys

NAME = "export"
# Imported before the command runs, so the parser itself stays light (cli.main).
NEEDS = ("protossl.export",)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``protossl export`` and its flags."""
    export = sub.add_parser("export", help="export a run's backbone and head for timm")
    export.add_argument("run", help="run directory or checkpoint file")
    export.add_argument("--out", required=True, help="output folder")
    export.add_argument(
        "--branch",
        default="teacher",
        choices=("teacher", "student"),
        help="which network to export (default: teacher, the one DINO evaluates)",
    )
    export.add_argument("--force", action="store_true", help="write into a non-empty --out")
    export.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    export.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from protossl.export import export_run

    result = export_run(args.run, args.out, branch=args.branch, force=args.force)
    summary = {
        "folder": str(result.folder),
        "backbone": result.backbone,
        "architecture": result.architecture,
        "backbone_tensors": result.num_backbone_tensors,
        "head_tensors": result.num_head_tensors,
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"{args.branch} backbone {result.backbone} ({result.architecture}) -> "
            f"{result.folder}/backbone.safetensors, backbone.json, head.safetensors, "
            "build_backbone.py",
            file=sys.stderr,
        )
    return 0
