"""The demo: DINO with and without KoLeo-proto on ``digits``, side by side.

Both runs use the same seed, model, K and steps; only the prototype
regularizer differs. They run as two processes with one thread each (the
fastest use of a 2-core laptop), and the demo prints one table with both
faces of collapse: unique prototypes M (duplicates) and how many prototypes
any test image picks (usage), next to kNN accuracy and wall time. Two reference
rows under the runs say what the kNN numbers mean: the same backbone at its
random initialization, and the raw pixels, which any backbone must beat.

Example:
    $ protossl demo --out demo_runs
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from protossl.config import Config, load_config
from protossl.core.errors import UserError
from protossl.core.files import atomic_write_text
from protossl.core.run_layout import RunPaths
from protossl.diagnostics import summarize_prototypes
from protossl.engine.monitor import CollapseMonitor, monitor_images
from protossl.evaluation.knn_eval import evaluate_knn, knn_of_features
from protossl.methods import Method, build_method
from protossl.reports.curves import plot_runs

DEMO_PRESETS = ("dino", "dino-kp")
DEMO_EPOCHS = 90  # 11 steps of 128 images each: 990 steps, about 7 minutes per run on one core
# Settings shared by both demo runs (docs/recipe.md says why each is there); the presets
# hold DINO's defaults for everything else.
DEMO_OVERRIDES = (
    "data.spec=digits",
    # K = 1,024: 100 times the 10 classes, room for collapse. With this recipe a step costs
    # about what it costs at K 256 (0.43 against 0.37 s on one core) and the targets hold
    # (docs/recipe.md, section 6, measured).
    "model.num_prototypes=1024",
    "model.backbone=cnn_tiny",  # a plain 3-layer CNN: thousands of cheap steps
    # A BatchNorm head (DINO's use_bn_in_head): without it the head maps every image to
    # one embedding within ~5 steps and the run sits at ln K (docs/recipe.md, section 2).
    "model.use_bn_in_head=true",
    # The digits at their native 8 px: 8 px global crops, 4 px local crops.
    "data.image_size=8",
    "data.local_size=4",
    "data.global_scale=[0.4,1.0]",
    "data.local_scale=[0.1,0.4]",
    "data.batch_size=128",
    "optim.lr=4e-3",  # DINO scales by batch/256: 2e-3 per step
    # Teacher temperature 0.02 (DINO: 0.04-0.07 at K 65,536): at 0.04 the teacher's targets
    # kept an entropy of ~3.5-4.4 nats of ln 256 = 5.5 for a whole K-256 run, and the
    # cross-entropy cannot fall below it (docs/recipe.md, section 5, measured).
    "objective.teacher_temp=0.02",
    "objective.warmup_teacher_temp=0.02",
)
UNTRAINED_ROW = "untrained backbone"
PIXELS_ROW = "raw pixels"
REFERENCE_NOTE = (
    f"{UNTRAINED_ROW}: the same backbone at its random initialization (the runs' seed, "
    "before any step).\n"
    f"{PIXELS_ROW}: the pixels themselves (weighted kNN on the flattened evaluation images): "
    "what a backbone must beat."
)


def _train_command(preset: str, out: Path, epochs: int, threads: int) -> list[str]:
    command = [sys.executable, "-m", "protossl", "train", "--preset", preset, "--out", str(out)]
    command += ["--epochs", str(epochs), "--set", f"num_threads={threads}"]
    for override in DEMO_OVERRIDES:
        command += ["--set", override]
    return command


def _epochs_done(run_dir: Path) -> int:
    metrics = RunPaths(run_dir).metrics
    if not metrics.exists():
        return 0
    return sum(1 for line in metrics.read_text().splitlines() if line.strip())


def _run_all(out: Path, epochs: int, parallel: bool) -> None:
    threads = 1 if parallel else max(1, os.cpu_count() or 1)
    jobs: list[tuple[str, subprocess.Popen[bytes], Path]] = []
    bar = tqdm(total=epochs * len(DEMO_PRESETS), desc="demo", unit="epoch", dynamic_ncols=True)

    def wait_for(batch: list[tuple[str, subprocess.Popen[bytes], Path]]) -> None:
        while any(proc.poll() is None for _, proc, _ in batch):
            time.sleep(1.0)
            done = sum(_epochs_done(out / name) for name in DEMO_PRESETS)
            if done != bar.n:  # redraw only on progress: logs stay short when piped
                bar.update(done - bar.n)
        for name, proc, log in batch:
            if proc.returncode != 0:
                tail = log.read_text().strip().splitlines()[-1:] if log.exists() else []
                raise UserError(f"demo run '{name}' failed: {' '.join(tail)} (log: {log})")

    for name in DEMO_PRESETS:
        run_dir = out / name
        run_dir.mkdir(parents=True, exist_ok=True)
        log = out / f"{name}.log"
        command = _train_command(name, run_dir, epochs, threads)
        if RunPaths(run_dir).last_checkpoint.exists():
            command.append("--resume")
        with log.open("w") as handle:
            proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=handle)
        jobs.append((name, proc, log))
        if not parallel:
            wait_for(jobs[-1:])
    wait_for(jobs)
    bar.close()


def run_config(run_dir: Path) -> Config:
    """The resolved configuration a run saved in its ``config.yaml``."""
    return load_config(preset=None, config_file=RunPaths(run_dir).config)


def untrained_method(cfg: Config) -> Method:
    """The method of ``cfg`` at initialization, built as a run builds it (same seed).

    The global random state is restored afterwards, so calling this changes nothing else.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return build_method(cfg)


def untrained_backbone_row(cfg: Config) -> dict[str, Any]:
    """The reference row of the runs' method at initialization, shaped like a run summary.

    Prototype columns: the initial student prototypes (as the trainer's summary) and
    the usage of the untrained teacher's argmax on the monitor images; kNN: the
    runs' protocol (:func:`~protossl.evaluation.knn_eval.evaluate_knn`).
    """
    method = untrained_method(cfg)
    measured = CollapseMonitor(monitor_images(cfg), eps=cfg.monitor.eps).measure(method)
    usage_keys = ("usage_entropy", "usage_perplexity", "prototypes_used", "dead_prototypes")
    return {
        "run": UNTRAINED_ROW,
        "reference": True,
        "K": measured["K"],
        "M": measured["M"],
        "M_over_K": measured["M_over_K"],
        "eps": cfg.monitor.eps,
        "usage": {key: measured[key] for key in usage_keys},
        "prototypes": summarize_prototypes(
            method.student_prototypes().detach(), eps=cfg.monitor.eps
        ),
        "eval": evaluate_knn(method, cfg),
    }


def _flatten_pixels(images: torch.Tensor) -> torch.Tensor:
    """Images [N, C, H, W] as pixel vectors [N, C*H*W]."""
    return images.flatten(1)


def raw_pixel_knn(cfg: Config) -> dict[str, float]:
    """Weighted kNN (the runs' k and T) on the flattened evaluation-transformed pixels.

    Same splits, transform and class count as :func:`~protossl.evaluation.knn_eval.evaluate_knn`.
    """
    return knn_of_features(_flatten_pixels, cfg)


def raw_pixels_row(cfg: Config) -> dict[str, Any]:
    """The reference row of kNN on raw pixels; it has no prototypes and no training."""
    return {"run": PIXELS_ROW, "reference": True, "eval": raw_pixel_knn(cfg)}


def reference_rows(run_dir: Path) -> list[dict[str, Any]]:
    """Both reference rows, for the data, model and seed of the run in ``run_dir``."""
    cfg = run_config(run_dir)
    return [untrained_backbone_row(cfg), raw_pixels_row(cfg)]


TABLE_HEADER = ("run", "K", "M", "M/K", "used", "usage H", "NN median", "kNN top-1", "minutes")


def _number(value: Any, spec: str = "") -> str:
    """``value`` formatted with ``spec``, or "-" where it is absent."""
    return "-" if value is None else format(value, spec)


def _cells(row: dict[str, Any]) -> list[str]:
    """One table line; "-" for every column a row does not have (reference rows)."""
    usage = row.get("usage", {})
    quantiles = row.get("prototypes", {}).get("nn_distance_quantiles")
    knn = next((v for k, v in row.get("eval", {}).items() if k.startswith("knn_top1")), None)
    seconds = row.get("wall_time_seconds")
    return [
        row["run"],
        _number(row.get("K")),
        _number(row.get("M")),
        _number(row.get("M_over_K"), ".3f"),
        _number(usage.get("prototypes_used")),
        _number(usage.get("usage_entropy"), ".2f"),
        "-" if quantiles is None else f"{quantiles.get('q50', float('nan')):.3f}",
        _number(knn, ".3f"),
        "-" if seconds is None else f"{seconds / 60:.1f}",
    ]


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of the demo runs; reference rows (``"reference": True``) come
    last, under a rule of dashes."""
    runs = [_cells(row) for row in rows if not row.get("reference")]
    references = [_cells(row) for row in rows if row.get("reference")]
    lines = [list(TABLE_HEADER), *runs, *references]
    widths = [max(len(line[i]) for line in lines) for i in range(len(TABLE_HEADER))]

    def text(line: list[str]) -> str:
        name = line[0].ljust(widths[0])  # names left, numbers right
        return "  ".join([name] + [c.rjust(w) for c, w in zip(line[1:], widths[1:], strict=True)])

    out = [text(line) for line in [list(TABLE_HEADER), *runs]]
    if references:
        out.append("-" * len(out[0]))
        out += [text(line) for line in references]
    return "\n".join(out)


def demo_files() -> set[str]:
    """The names the demo writes in its folder: the runs, their logs, the table, the plot."""
    return {
        *DEMO_PRESETS,
        *(f"{name}.log" for name in DEMO_PRESETS),
        "summary.md",
        "summary.json",
        "curves.png",
    }


def check_demo_folder(out: Path) -> None:
    """Refuse an ``--out`` that holds anything but an earlier demo's files.

    The demo replaces its own summary, plot and logs on every run; in a folder of the
    user's (a run folder, a folder with its own ``summary.json``) that would lose data.

    Raises:
        UserError: ``out`` is a file, or a folder with entries the demo did not write.
    """
    if out.exists() and not out.is_dir():
        raise UserError(f"demo --out {out} is a file; name a new or empty folder")
    if not out.is_dir():
        return
    foreign = sorted(entry.name for entry in out.iterdir() if entry.name not in demo_files())
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise UserError(
            f"demo --out {out} holds files the demo did not write ({shown}); "
            "name a new or empty folder, or an earlier demo's folder"
        )


def run_demo(out: Path, epochs: int | None = None, parallel: bool = True) -> list[dict[str, Any]]:
    """Train both demo runs into ``out`` and print the comparison table."""
    check_demo_folder(out)
    epochs = epochs or DEMO_EPOCHS
    started = time.perf_counter()
    _run_all(out, epochs, parallel)
    rows = []
    for name in DEMO_PRESETS:
        summary = json.loads(RunPaths(out / name).summary.read_text())
        rows.append({"run": name, **summary})
    print("demo: measuring the reference rows (untrained backbone, raw pixels)", file=sys.stderr)
    rows += reference_rows(out / DEMO_PRESETS[0])
    table = format_table(rows)
    total = time.perf_counter() - started
    note = (
        f"K prototypes, M unique at eps {rows[0]['eps']} (prototypes within eps, chained, count "
        f"once), 'used' = prototypes that are some test image's teacher argmax, usage H = "
        f"entropy of that choice (nats).\n"
        f"Both runs: same seed and steps; {epochs} epochs; total demo time {total / 60:.1f} min.\n"
        f"{REFERENCE_NOTE}"
    )
    plot = plot_runs({name: out / name for name in DEMO_PRESETS}, out / "curves.png")
    paragraphs = note.replace("\n", "\n\n")  # one Markdown paragraph per note line
    markdown = f"```\n{table}\n```\n\n{paragraphs}\n\n![curves](curves.png)\n"
    atomic_write_text(out / "summary.md", markdown)
    atomic_write_text(out / "summary.json", json.dumps(rows, indent=2) + "\n")
    print(
        f"\n{table}\n\n{note}\nRun directories: {out}/dino, {out}/dino-kp; curves: {plot}",
        file=sys.stderr,
    )
    return rows
