"""`protossl train`: train a method into a run folder (or continue one with --resume)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from protossl.commands.common import positive_int
from protossl.core.errors import UserError

NAME = "train"
# Imported before the command runs, so the parser itself stays light (cli.main).
NEEDS = ("protossl.engine.trainer",)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``protossl train`` and its flags."""
    train = sub.add_parser("train", help="train a method (DINO, DINO + KoLeo-proto, ...)")
    train.add_argument(
        "--preset", default=None, help="recipe name (default: dino; see 'protossl presets')"
    )
    train.add_argument("--config", help="YAML file with config keys, applied after the preset")
    train.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override one key (repeatable)"
    )
    train.add_argument("--data", help="data spec: digits | folder:PATH (default from the preset)")
    train.add_argument("--out", default="runs/latest", help="run directory")
    train.add_argument("--epochs", type=positive_int, help="number of epochs")
    train.add_argument("--max-steps", type=positive_int, help="cap on optimizer steps")
    train.add_argument(
        "--resume", action="store_true", help="continue from OUT/checkpoints/last.pt"
    )
    train.add_argument(
        "--stop-after-epochs",
        type=positive_int,
        help="pause after this many epochs (continue later with --resume)",
    )
    train.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    train.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from protossl.config import load_config
    from protossl.engine.trainer import Trainer

    overrides = list(args.set or [])
    if args.data is not None:
        overrides.append(f"data.spec={args.data}")
    if args.epochs is not None:
        overrides.append(f"optim.epochs={args.epochs}")
    if args.max_steps is not None:
        overrides.append(f"optim.max_steps={args.max_steps}")
    out = Path(args.out)
    if args.resume:
        from protossl.config import apply_overrides

        if args.preset is not None or args.config is not None:
            raise UserError(
                "--resume continues the run with its own saved config; drop --preset/--config"
            )
        _check_resume_overrides(overrides)
        cfg = apply_overrides(Trainer.config_of_run(out), overrides)
    else:
        cfg = load_config(args.preset or "dino", args.config, overrides)
    from protossl.core import distributed

    try:
        summary = Trainer(cfg, out, resume=args.resume).fit(
            stop_after_epochs=args.stop_after_epochs
        )
        if distributed.is_main_process():
            _print_summary(summary, out, as_json=args.json)
    finally:
        distributed.shutdown()
    return 0


# Keys a resumed run may change without breaking its equality with an uninterrupted run
# (epochs and max_steps lengthen the schedules: the run continues under the new plan).
RESUME_KEYS = ("optim.epochs", "optim.max_steps", "num_threads", "data.num_workers", "monitor.")


def _check_resume_overrides(overrides: list[str]) -> None:
    for override in overrides:
        key = override.split("=", 1)[0].strip()
        if not key.startswith(RESUME_KEYS):
            raise UserError(
                f"--resume cannot change '{key}' (it would no longer be the same run); "
                f"allowed: {', '.join(RESUME_KEYS)}*; start a new run with --out instead"
            )


def _print_summary(summary: dict[str, Any], out: Path, as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary))
        return
    knn = summary.get("eval", {})
    knn_text = ", ".join(f"{k} {v:.3f}" for k, v in knn.items() if "top1" in k)
    print(
        f"{summary['method']}: K {summary['K']}, M {summary['M']} "
        f"(M/K {summary['M_over_K']:.3f} at eps {summary['eps']}), "
        f"prototypes used {summary['usage']['prototypes_used']}, {knn_text or 'no kNN yet'}, "
        f"{summary['wall_time_seconds'] / 60:.1f} min -> {out}",
        file=sys.stderr,
    )
