"""The demo: DINO with and without KoLeo-proto on ``digits``, side by side.

Both runs use the same seed, model, K and steps; only the prototype
regularizer differs. They run as two processes with one thread each (the
fastest use of a 2-core laptop), and the demo prints one table with both
faces of collapse: unique prototypes M (duplicates) and how many prototypes
any test image picks (usage), next to kNN accuracy and wall time.

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

from tqdm import tqdm

from protossl.engine.checkpoint import atomic_write_text
from protossl.errors import UserError
from protossl.reports.curves import plot_runs

DEMO_PRESETS = ("dino", "dino-kp")
DEMO_EPOCHS = 30  # 22 steps of 64 images each: 660 steps, about 5 minutes per run on one core
# Settings shared by both demo runs; the presets hold DINO's defaults for everything else.
DEMO_OVERRIDES = (
    "data.spec=digits",
    "model.num_prototypes=1024",
    "model.backbone=resnet_tiny",
    # A BatchNorm head (DINO's use_bn_in_head) spreads the first embeddings across
    # the batch; without it a small net starts with one prototype winning every argmax.
    "model.use_bn_in_head=true",
    "data.batch_size=64",  # more, cheaper steps for the same wall time
    "optim.lr=1e-3",
    # The images are 8x8 digits upsampled to 16 px: DINO's 5-40% local crops of them
    # are a few pixels of stroke, so both crop ranges are narrowed for this data set.
    "data.global_scale=[0.5,1.0]",
    "data.local_scale=[0.2,0.5]",
)


def _train_command(preset: str, out: Path, epochs: int, threads: int) -> list[str]:
    command = [sys.executable, "-m", "protossl", "train", "--preset", preset, "--out", str(out)]
    command += ["--epochs", str(epochs), "--set", f"num_threads={threads}"]
    for override in DEMO_OVERRIDES:
        command += ["--set", override]
    return command


def _epochs_done(run_dir: Path) -> int:
    metrics = run_dir / "metrics.jsonl"
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
        if (run_dir / "checkpoints" / "last.pt").exists():
            command.append("--resume")
        with log.open("w") as handle:
            proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=handle)
        jobs.append((name, proc, log))
        if not parallel:
            wait_for(jobs[-1:])
    wait_for(jobs)
    bar.close()


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of the demo runs."""
    header = ["run", "K", "M", "M/K", "used", "usage H", "NN median", "kNN top-1", "minutes"]
    lines = [header]
    for row in rows:
        knn = next((v for k, v in row.get("eval", {}).items() if k.startswith("knn_top1")), None)
        lines.append(
            [
                row["run"],
                str(row["K"]),
                str(row["M"]),
                f"{row['M_over_K']:.3f}",
                str(row["usage"]["prototypes_used"]),
                f"{row['usage']['usage_entropy']:.2f}",
                f"{row['prototypes']['nn_distance_quantiles'].get('q50', float('nan')):.3f}",
                "-" if knn is None else f"{knn:.3f}",
                f"{row['wall_time_seconds'] / 60:.1f}",
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    rows_text = ["  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
    return "\n".join(rows_text)


def run_demo(out: Path, epochs: int | None = None, parallel: bool = True) -> list[dict[str, Any]]:
    """Train both demo runs into ``out`` and print the comparison table."""
    epochs = epochs or DEMO_EPOCHS
    started = time.perf_counter()
    _run_all(out, epochs, parallel)
    rows = []
    for name in DEMO_PRESETS:
        summary = json.loads((out / name / "summary.json").read_text())
        rows.append({"run": name, **summary})
    table = format_table(rows)
    total = time.perf_counter() - started
    note = (
        f"K prototypes, M unique at eps {rows[0]['eps']} (design.md), 'used' = prototypes that "
        f"are some test image's teacher argmax, usage H = entropy of that choice (nats).\n"
        f"Both runs: same seed and steps; {epochs} epochs; total demo time {total / 60:.1f} min."
    )
    plot = plot_runs({name: out / name for name in DEMO_PRESETS}, out / "curves.png")
    atomic_write_text(out / "summary.md", f"```\n{table}\n```\n\n{note}\n\n![curves](curves.png)\n")
    atomic_write_text(out / "summary.json", json.dumps(rows, indent=2) + "\n")
    print(
        f"\n{table}\n\n{note}\nRun directories: {out}/dino, {out}/dino-kp; curves: {plot}",
        file=sys.stderr,
    )
    return rows
