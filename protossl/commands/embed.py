"""`protossl embed`: features and prototype assignments of every image of a data set."""

from __future__ import annotations

import argparse
import json
import sys

from protossl.commands.common import positive_int

NAME = "embed"
# Imported before the command runs, so the parser itself stays light (cli.main).
NEEDS = ("protossl.evaluation.embed",)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``protossl embed`` and its flags."""
    embed = sub.add_parser("embed", help="features and prototype of every image, to disk")
    embed.add_argument(
        "run", help="run directory, checkpoint file, or a released DINO / iBOT / DINOv2 ViT file"
    )
    embed.add_argument("--data", required=True, help="data spec (digits, folder:PATH, ...)")
    embed.add_argument("--out", required=True, help="output folder (the same command resumes)")
    embed.add_argument("--split", default="train", choices=("train", "test"), help="split")
    embed.add_argument("--batch-size", type=positive_int, default=256, help="images per pass")
    embed.add_argument("--image-size", type=positive_int, help="input size (default: the run's)")
    embed.add_argument(
        "--chunk-rows", type=positive_int, default=4096, help="rows between progress records"
    )
    embed.add_argument("--force", action="store_true", help="start over in a non-empty --out")
    embed.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    embed.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from protossl.evaluation.embed import embed

    result = embed(
        args.run,
        args.data,
        args.out,
        split=args.split,
        batch_size=args.batch_size,
        image_size=args.image_size,
        chunk_rows=args.chunk_rows,
        progress=not args.json and sys.stderr.isatty(),
        force=args.force,
    )
    summary = {
        "folder": str(result.folder),
        "rows": result.rows,
        "dim": result.dim,
        "resumed_from": result.resumed_from,
        "assignments": result.assignments,
    }
    if args.json:
        print(json.dumps(summary))
    else:
        resumed = f", resumed at row {result.resumed_from}" if result.resumed_from else ""
        print(
            f"{result.rows} rows of {result.dim} features -> {result.folder}{resumed}",
            file=sys.stderr,
        )
    return 0
