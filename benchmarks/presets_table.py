"""Every bundled preset after one short, identical run on ``digits``.

Protocol (the closing table of the "DINO family" issue):
- every preset returned by ``protossl presets`` (or the ones named with
  ``--presets``) is trained with ``protossl train --preset NAME`` and the same
  overrides: seed 0, ``vit_tiny`` backbone (iBOT and MSN need a ViT, so all use
  one), K = 256, batch 64, ``--epochs E`` (22 steps of 64 images per epoch), the
  demo's crop scales for 8x8 digits upsampled to 16 px, one torch thread;
- `--jobs` runs at a time (default 2: the machine has 2 cores), one thread each;
- after training, the run's own summary gives K, M (eps 0.025), prototypes used
  by the test images' teacher argmax, the nearest-neighbour median distance, and
  weighted kNN top-1 (k 20, T 0.07) on the teacher backbone;
- the table is written to ``docs/presets.md`` from those summaries (never typed).

These runs are far too short to rank the methods; the table shows that every
preset trains and what each one's prototypes look like after the same budget.

Usage:
    python benchmarks/presets_table.py --out /tmp/presets_runs --epochs 5
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from protossl.config import available_presets, load_config  # noqa: E402

OVERRIDES = (
    "seed=0",
    "num_threads=1",
    "data.spec=digits",
    "model.backbone=vit_tiny",
    "model.num_prototypes=256",
    "data.batch_size=64",
    "data.global_scale=[0.5,1.0]",
    "data.local_scale=[0.2,0.5]",
)


def command(preset: str, out: Path, epochs: int) -> list[str]:
    cmd = [sys.executable, "-m", "protossl", "train", "--preset", preset, "--out", str(out)]
    cmd += ["--epochs", str(epochs)]
    for item in OVERRIDES:
        cmd += ["--set", item]
    return cmd


def run_all(presets: list[str], out: Path, epochs: int, jobs: int) -> dict[str, float]:
    pending = list(presets)
    running: dict[str, tuple[subprocess.Popen[bytes], float]] = {}
    seconds: dict[str, float] = {}
    env = dict(os.environ, OMP_NUM_THREADS="1")
    while pending or running:
        while pending and len(running) < jobs:
            name = pending.pop(0)
            if (out / name / "summary.json").exists():
                summary = json.loads((out / name / "summary.json").read_text())
                if summary.get("finished"):
                    print(f"{name}: already done", flush=True)
                    continue
            log = (out / f"{name}.log").open("wb")
            proc = subprocess.Popen(
                command(name, out / name, epochs), stdout=log, stderr=log, env=env
            )
            running[name] = (proc, time.perf_counter())
            print(f"{name}: started", flush=True)
        time.sleep(2.0)
        for name, (proc, start) in list(running.items()):
            if proc.poll() is not None:
                seconds[name] = time.perf_counter() - start
                status = "done" if proc.returncode == 0 else f"FAILED ({proc.returncode})"
                print(f"{name}: {status} in {seconds[name]:.0f} s", flush=True)
                del running[name]
    return seconds


def row(preset: str, out: Path) -> dict[str, Any]:
    path = out / preset / "summary.json"
    if not path.exists():
        return {"preset": preset, "failed": True}
    s = json.loads(path.read_text())
    cfg = load_config(preset)
    o = cfg.objective
    metrics = [
        json.loads(x) for x in (out / preset / "metrics.jsonl").read_text().splitlines() if x
    ]
    return {
        "preset": preset,
        "method": cfg.method,
        "layer": cfg.model.prototype_layer,
        "target": o.target,
        "prototype_reg": o.prototype_regularizer,
        "mlcd": o.mlcd_regularizer,
        "K": s["K"],
        "M": s["M"],
        "M_over_K": s["M_over_K"],
        "used": s["usage"]["prototypes_used"],
        "nn_median": (s["prototypes"].get("nn_distance_quantiles") or {}).get("q50"),
        "knn": _knn_top1(s.get("eval") or {}),
        "loss_first": metrics[0]["loss"] if metrics else None,
        "loss_last": metrics[-1]["loss"] if metrics else None,
        "steps": s["steps"],
        "minutes": s["wall_time_seconds"] / 60,
    }


def _knn_top1(evaluation: dict[str, Any]) -> float | None:
    # The kNN result's key names the k ("knn_top1@20"); take k = 20 when present.
    flat = {k: v for k, v in evaluation.items() if isinstance(v, (int, float))}
    if "knn_top1@20" in flat:
        return float(flat["knn_top1@20"])
    hits = [v for k, v in flat.items() if k.startswith("knn_top1")]
    return float(hits[0]) if hits else None


def fmt(value: Any, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def write_table(
    rows: list[dict[str, Any]], epochs: int, jobs: int, path: Path, written: str
) -> None:
    lines = [
        "# Every preset after one short identical run on digits",
        "",
        f"Generated by `python benchmarks/presets_table.py --epochs {epochs} --jobs {jobs}` "
        f"(table written {written}; finished runs are reused); "
        "the protocol is the script's docstring. Overrides shared by every run: "
        + ", ".join(f"`{o}`" for o in OVERRIDES)
        + ". M counts unique prototypes at eps 0.025; *used*: prototypes that are some test "
        "image's teacher argmax (monitor images: the test split, at most 512); "
        "kNN: weighted kNN top-1 (k 20, T 0.07) "
        "on the teacher backbone, digits test split (359 images). Minutes are training wall "
        f"time with {jobs} run(s) at a time on the 2-core machine (other jobs may have run too).",
        "",
        "| preset | method | prototypes | target | prototype reg. | MLCD reg. | K | M | M/K | used "
        "| NN median | kNN top-1 | loss first -> last epoch | steps | minutes |",
        "|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        if r.get("failed"):
            lines.append(f"| {r['preset']} | failed (see its log) |" + " |" * 13)
            continue
        lines.append(
            f"| {r['preset']} | {r['method']} | {r['layer']} | {r['target']} | "
            f"{r['prototype_reg']} | {r['mlcd']} | {r['K']} | {r['M']} | {r['M_over_K']:.3f} | "
            f"{r['used']} | {fmt(r['nn_median'], '.3f')} | {fmt(r['knn'], '.3f')} | "
            f"{fmt(r['loss_first'], '.3f')} -> {fmt(r['loss_last'], '.3f')} | {r['steps']} | "
            f"{r['minutes']:.1f} |"
        )
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/presets_runs"))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--presets", nargs="*", default=None)
    parser.add_argument("--table", type=Path, default=ROOT / "docs" / "presets.md")
    args = parser.parse_args()
    presets = args.presets or available_presets()
    args.out.mkdir(parents=True, exist_ok=True)
    run_all(presets, args.out, args.epochs, args.jobs)
    rows = [row(p, args.out) for p in presets]
    write_table(rows, args.epochs, args.jobs, args.table, time.strftime("%Y-%m-%d %H:%M"))
    print(args.table.read_text())


if __name__ == "__main__":
    main()
