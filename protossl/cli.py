"""The ``protossl`` command.

Each sub-command is a small function; user errors become one line on stderr
and exit status 2 (no traceback). ``--json`` output is one JSON object on
stdout; everything meant for people goes to stderr.

Example:
    $ protossl train --preset dino-kp --data digits --out runs/dino-kp --epochs 5
    $ protossl analyze runs/dino-kp --json
    $ protossl eval runs/dino-kp --data digits --json
"""

from __future__ import annotations

import argparse
import errno
import importlib
import json
import math
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from protossl.core.errors import UserError, one_line
from protossl.core.run_layout import RunPaths

PROG = "protossl"


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one line (exit 2) instead of usage + error."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see '{self.prog} --help')", file=sys.stderr)
        raise SystemExit(2)


# ---------------------------------------------------------------- sub-commands


def _cmd_train(args: argparse.Namespace) -> int:
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


def _cmd_analyze(args: argparse.Namespace) -> int:
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


def _cmd_dedupe(args: argparse.Namespace) -> int:
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


def _cmd_eval(args: argparse.Namespace) -> int:
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
        progress=not args.json and sys.stderr.isatty(),
    )
    if args.json:
        print(json.dumps(result))
    else:
        print(format_results(result), file=sys.stderr)
    return 0


def _cmd_presets(args: argparse.Namespace) -> int:
    from protossl.config import available_presets, load_config, preset_description

    if args.show:
        import yaml

        print(yaml.safe_dump(load_config(args.show).to_dict(), sort_keys=False), end="")
        return 0
    for name in available_presets():
        print(f"{name:<14} {preset_description(name)}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from protossl.demo import run_demo

    run_demo(Path(args.out), epochs=args.epochs, parallel=not args.sequential)
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from protossl.sweep import run_sweep

    gpus = [g for g in (args.gpus or "").split(",") if g.strip()]
    rows = run_sweep(args.sweep, args.out, jobs=args.jobs if not gpus else len(gpus), gpus=gpus)
    if args.json:
        print(json.dumps(rows))
    return 0 if all(row["status"] == "done" for row in rows) else 1


def _cmd_report(args: argparse.Namespace) -> int:
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


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description=__doc__.split("\n\n")[0])
    from protossl import __version__

    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

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
    train.add_argument("--epochs", type=_positive_int, help="number of epochs")
    train.add_argument("--max-steps", type=_positive_int, help="cap on optimizer steps")
    train.add_argument(
        "--resume", action="store_true", help="continue from OUT/checkpoints/last.pt"
    )
    train.add_argument(
        "--stop-after-epochs",
        type=_positive_int,
        help="pause after this many epochs (continue later with --resume)",
    )
    train.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    train.set_defaults(func=_cmd_train)

    analyze = sub.add_parser("analyze", help="count unique prototypes in a checkpoint")
    analyze.add_argument("checkpoint", help="run directory or checkpoint file")
    analyze.add_argument(
        "--format",
        default="auto",
        choices=["auto", "protossl", "dino", "ibot", "dinov2", "msn", "swav", "esvit"],
        help="checkpoint layout (default: detect it)",
    )
    analyze.add_argument(
        "--key",
        metavar="NAME",
        help="read exactly this 2-D tensor (or weight-normalized layer) as the prototypes",
    )
    analyze.add_argument("--eps", type=_positive_float, default=0.025, help="linking distance")
    analyze.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    analyze.set_defaults(func=_cmd_analyze)

    dedupe = sub.add_parser("dedupe", help="merge duplicate prototypes into a compact head")
    dedupe.add_argument("checkpoint", help="run directory or checkpoint file")
    dedupe.add_argument("--out", required=True, help="output .safetensors file")
    dedupe.add_argument(
        "--format",
        default="auto",
        choices=["auto", "protossl", "dino", "ibot", "dinov2", "msn", "swav", "esvit"],
        help="checkpoint layout (default: detect it)",
    )
    dedupe.add_argument("--key", metavar="NAME", help="read exactly this tensor as prototypes")
    dedupe.add_argument("--eps", type=_positive_float, default=0.025, help="linking distance")
    dedupe.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    dedupe.add_argument("--force", action="store_true", help="replace an existing --out file")
    dedupe.set_defaults(func=_cmd_dedupe)

    evaluate = sub.add_parser(
        "eval", help="evaluate frozen features (kNN, linear, few-shot, clustering, long-tail)"
    )
    evaluate.add_argument("run", help="run directory or checkpoint file")
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
    evaluate.add_argument("--batch-size", type=_positive_int, default=256, help="images per pass")
    evaluate.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    evaluate.add_argument("--cache-dir", help="feature cache folder (default: RUN/cache)")
    evaluate.add_argument("--no-cache", action="store_true", help="neither read nor write it")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    evaluate.set_defaults(func=_cmd_eval)

    sweep = sub.add_parser(
        "sweep", help="run a grid of trainings and evaluations, collect results.csv"
    )
    sweep.add_argument("sweep", help="sweep YAML file (preset, set, grid, eval)")
    sweep.add_argument("--out", required=True, help="sweep directory (one folder per run)")
    sweep.add_argument("--jobs", type=_positive_int, default=1, help="runs at a time")
    sweep.add_argument("--gpus", help="comma-separated GPU ids: one run per GPU at a time")
    sweep.add_argument("--json", action="store_true", help="print the results as JSON")
    sweep.set_defaults(func=_cmd_sweep)

    report = sub.add_parser("report", help="figures and one static index.html for a run or sweep")
    report.add_argument("run", help="run directory or sweep directory")
    report.add_argument("--out", help="output folder (default: RUN_OR_SWEEP_DIR/report)")
    report.add_argument(
        "--samples", type=_positive_int, default=1000, help="test images per run (default 1000)"
    )
    report.add_argument(
        "--max-prototypes",
        type=_positive_int,
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
    report.set_defaults(func=_cmd_report)

    presets = sub.add_parser("presets", help="list the bundled recipes")
    presets.add_argument("--show", metavar="NAME", help="print a preset's fully resolved config")
    presets.set_defaults(func=_cmd_presets)

    demo = sub.add_parser("demo", help="DINO vs DINO + KoLeo-proto on digits, side by side")
    demo.add_argument("--out", default="demo_runs", help="folder for the two runs and the table")
    demo.add_argument("--epochs", type=_positive_int, default=None, help="epochs per run")
    demo.add_argument("--sequential", action="store_true", help="run one after the other")
    demo.set_defaults(func=_cmd_demo)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got '{text}'") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a positive number, got '{text}'")
    return value


def torch_distributed_errors() -> tuple[type[BaseException], ...]:
    """The exceptions torch.distributed raises when a peer process dies or times out."""
    import torch.distributed as dist

    from protossl.core.distributed import CollectiveError

    found = (CollectiveError,) + tuple(
        err
        for name in ("DistError", "DistBackendError", "DistNetworkError")
        if isinstance(err := getattr(dist, name, None), type)
    )
    return found


# The modules each command needs, imported before the command runs (see main).
COMMAND_MODULES = {
    "train": ("protossl.engine.trainer",),
    "analyze": ("protossl.diagnostics.checkpoints",),
    "dedupe": ("protossl.diagnostics.dedupe",),
    "eval": ("protossl.evaluation.run_eval",),
    "sweep": ("protossl.sweep",),
    "report": ("protossl.reports.report",),
    "presets": ("protossl.config",),
    "demo": ("protossl.demo",),
}
INTERRUPTED = f"{PROG}: interrupted"
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def exit_at_once(signum: int, frame: object) -> None:
    """SIGINT handler while nothing has been written: leave now, exit status 130.

    Raising KeyboardInterrupt in the middle of ``import torch`` leaves torch half
    imported, and the next import of it prints pages of tracebacks; exiting from the
    handler leaves nothing half-done, because nothing has started yet.
    """
    os.write(2, f"{INTERRUPTED} before anything was written\n".encode())
    os._exit(130)


def _os_error_line(exc: OSError) -> str:
    where = f" {exc.filename}" if exc.filename else ""
    if exc.errno in _DISK_FULL:
        return one_line(
            f"{PROG}: error: no space left to write{where} ({exc.strerror or exc}); what was "
            "written before is intact (checkpoints are replaced atomically): free space, "
            "then run the command again (train: with --resume)"
        )
    return one_line(f"{PROG}: error: cannot access{where}: {exc.strerror or exc}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``protossl`` console script.

    Ctrl-C at any point ends with one line and exit status 130: during start-up (argument
    parsing and the heavy imports) the process leaves at once; once the command runs,
    the interrupt unwinds it (atomic writes clean up after themselves), so the last
    checkpoint is always intact. A second Ctrl-C while the first is reported is ignored.
    """
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, exit_at_once) if in_main_thread else None
    try:
        args = build_parser().parse_args(argv)
        for module in COMMAND_MODULES.get(args.command, ()):
            importlib.import_module(module)
        if in_main_thread:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        return _run(args)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _run(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args))
    except UserError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a read-only folder, a full disk, --out naming a file
        print(_os_error_line(exc), file=sys.stderr)
        return 2
    except torch_distributed_errors() as exc:
        # Another training process died or stopped answering (torchrun): no hang, and
        # the last checkpoint (written atomically by rank 0) is intact.
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(
            f"{PROG}: error: a training process stopped ({first[:200]}); the last checkpoint "
            "is kept: continue with --resume",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C: same answer
        hint = " (continue with --resume)" if args.command == "train" else ""
        print(f"{INTERRUPTED}; every checkpoint written so far is intact{hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
