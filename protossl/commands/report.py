"""`protossl report`: figures and one static index.html for a run or a sweep."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from protossl.commands.common import positive_int

NAME = "report"
# Imported before the command runs, so the parser itself stays light (cli.main).
NEEDS = ("protossl.reports.report",)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``protossl report`` and its flags."""
    report = sub.add_parser("report", help="figures and one static index.html for a run or sweep")
    report.add_argument("run", help="run directory or sweep directory")
    report.add_argument("--out", help="output folder (default: RUN_OR_SWEEP_DIR/report)")
    report.add_argument(
        "--samples", type=positive_int, default=1000, help="test images per run (default 1000)"
    )
    report.add_argument(
        "--max-prototypes",
        type=positive_int,
        default=2000,
        help="prototypes per t-SNE map, a seeded subset beyond it (default 2000)",
    )
    report.add_argument("--device", default="cpu", help="cpu or cuda for the forward passes")
    report.add_argument("--no-cache", action="store_true", help="neither read nor write RUN/cache")
    report.add_argument(
        "--force", action="store_true", help="write into an existing --out folder / --results-md"
    )
    report.add_argument(
        "--results-md",
        metavar="FILE",
        help="also write a sweep's headline table (mean ± std over seeds) as Markdown",
    )
    report.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from protossl.reports.report import ReportOptions, write_report
    from protossl.runs.outputs import check_output_file, check_output_folder

    source = Path(args.run)
    out = Path(args.out) if args.out else source / "report"
    check_output_folder(out, force=args.force, inputs=[source], default=args.out is None)
    if args.results_md:
        check_output_file(args.results_md, force=args.force, what="--results-md")
    options = ReportOptions(
        samples=args.samples,
        max_prototypes=args.max_prototypes,
        device=args.device,
        cache=not args.no_cache,
    )
    index = write_report(
        source,
        out,
        options=options,
        progress=sys.stderr.isatty(),
        results_md=Path(args.results_md) if args.results_md else None,
    )
    print(f"report written to {index}", file=sys.stderr)
    if args.results_md:
        print(f"results table written to {args.results_md}", file=sys.stderr)
    return 0
