"""`protossl eval`: frozen-feature evaluation protocols of a run or checkpoint."""

from __future__ import annotations

import argparse
import json
import sys

from protossl.commands.common import positive_int

NAME = "eval"
# Imported before the command runs, so the parser itself stays light (cli.main).
NEEDS = ("protossl.evaluation.run_eval",)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``protossl eval`` and its flags."""
    evaluate = sub.add_parser(
        "eval", help="evaluate frozen features (kNN, linear, few-shot, clustering, long-tail)"
    )
    evaluate.add_argument(
        "run",
        help="run directory, checkpoint file, or a released DINO / iBOT / DINOv2 ViT file",
    )
    evaluate.add_argument(
        "--data", required=True, help="data spec whose train split is the labelled pool"
    )
    evaluate.add_argument("--test-data", help="test data spec (default: the test split of --data)")
    evaluate.add_argument(
        "--protocols",
        default="knn",
        help="comma-separated subset of knn,linear,fewshot,cluster,longtail (default: knn)",
    )
    evaluate.add_argument(
        "--features",
        default="backbone",
        choices=["backbone", "bottleneck"],
        help="teacher backbone output or the head's bottleneck (default: backbone)",
    )
    evaluate.add_argument(
        "--image-size",
        type=positive_int,
        help="evaluation image size (default: the run's; a released backbone's native size)",
    )
    evaluate.add_argument("--batch-size", type=positive_int, default=256, help="images per pass")
    evaluate.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    evaluate.add_argument("--cache-dir", help="feature cache folder (default: RUN/cache)")
    evaluate.add_argument("--no-cache", action="store_true", help="neither read nor write it")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    evaluate.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from protossl.evaluation.run_eval import evaluate_run, format_results

    result = evaluate_run(
        args.run,
        args.data,
        args.test_data,
        args.protocols,
        features=args.features,
        cache=not args.no_cache,
        cache_dir=args.cache_dir,
        device=args.device,
        batch_size=args.batch_size,
        image_size=args.image_size,
        progress=not args.json and sys.stderr.isatty(),
    )
    if args.json:
        print(json.dumps(result))
    else:
        print(format_results(result), file=sys.stderr)
    return 0
