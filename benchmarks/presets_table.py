"""Bundled presets after one identical run of the demo's recipe on ``digits``.

Protocol:
- every preset named with ``--presets`` (default: every preset whose method takes a
  convolutional backbone; iBOT and MSN need a ViT, and the recipe's backbone is
  ``cnn_tiny``) is trained with ``protossl train --preset NAME`` and the same overrides:
  seed 0, one torch thread, and the demo's recipe (``protossl.demo.DEMO_OVERRIDES``:
  cnn_tiny, BatchNorm head, K 1,024, digits at 8 px, batch 128, AdamW at 2e-3, teacher
  temperature 0.02; see docs/recipe.md), ``--epochs E`` (11 steps of 128 images each);
- `--jobs` runs at a time (default 2: the machine has 2 cores), one thread each;
- after training, the run's own summary gives K, M (eps 0.025), prototypes used
  by the test images' teacher argmax, the nearest-neighbour median distance, and
  weighted kNN top-1 (k 20, T 0.07) on the teacher backbone; beside it the same
  network at its initialization (same seed, same protocol);
- *learns* is "yes" when the trained kNN beats the untrained one by at least 0.01 (4 of
  the 359 test images) and the last epoch's cross-entropy is below 0.9 ln K;
- the table is written between the ``presets:recipe`` markers of ``docs/presets.md`` from
  those summaries (never typed).

One seed and one budget: the table says which presets learn with the recipe, it does not
rank them.

Usage:
    python benchmarks/presets_table.py --out /tmp/presets_runs --epochs 60
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

import math  # noqa: E402

from protossl.config import available_presets, load_config  # noqa: E402
from protossl.demo import DEMO_OVERRIDES, run_config, untrained_method  # noqa: E402
from protossl.evaluation.knn_eval import evaluate_knn  # noqa: E402

OVERRIDES = ("seed=0", "num_threads=1", *DEMO_OVERRIDES)
NEEDS_VIT = ("ibot", "msn")  # methods that need patch tokens
START, END = "<!-- presets:recipe:start -->", "<!-- presets:recipe:end -->"


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
    last = metrics[-1] if metrics else {}
    ce_last = last.get("cross_entropy", last.get("loss"))
    cfg_run = run_config(out / preset)
    untrained = _knn_top1(evaluate_knn(untrained_method(cfg_run), cfg_run))
    knn = _knn_top1(s.get("eval") or {})
    learns = (
        knn is not None
        and untrained is not None
        and knn >= untrained + 0.01
        and ce_last is not None
        and ce_last < 0.9 * math.log(s["K"])
    )
    return {
        "untrained_knn": untrained,
        "ce_over_lnk": None if ce_last is None else ce_last / math.log(s["K"]),
        "learns": learns,
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
        "knn": knn,
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


def _needs_vit(preset: str) -> bool:
    return load_config(preset).method in NEEDS_VIT


def fmt(value: Any, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def write_table(
    rows: list[dict[str, Any]], epochs: int, jobs: int, path: Path, written: str
) -> None:
    lines = [
        f"Generated by `python benchmarks/presets_table.py --epochs {epochs} --jobs {jobs}` "
        f"(table written {written}; finished runs are reused); "
        "the protocol is the script's docstring. Overrides shared by every run: "
        + ", ".join(f"`{o}`" for o in OVERRIDES)
        + ". M counts unique prototypes at eps 0.025; *used*: prototypes that are some test "
        "image's teacher argmax (monitor images: the test split, at most 512); "
        "kNN: weighted kNN top-1 (k 20, T 0.07) on the teacher backbone, digits test split "
        "(359 images), trained and at initialization; CE / ln K: the last epoch's "
        "cross-entropy. Minutes are training wall "
        f"time with {jobs} run(s) at a time on the 2-core machine.",
        "",
        "| preset | method | prototypes | target | prototype reg. | MLCD reg. | K | M | used "
        "| NN median | kNN top-1 | kNN untrained | CE / ln K | learns | steps | minutes |",
        "|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        if r.get("failed"):
            lines.append(f"| {r['preset']} | failed (see its log) |" + " |" * 14)
            continue
        lines.append(
            f"| {r['preset']} | {r['method']} | {r['layer']} | {r['target']} | "
            f"{r['prototype_reg']} | {r['mlcd']} | {r['K']} | {r['M']} | "
            f"{r['used']} | {fmt(r['nn_median'], '.3f')} | {fmt(r['knn'], '.3f')} | "
            f"{fmt(r['untrained_knn'], '.3f')} | {fmt(r['ce_over_lnk'], '.3f')} | "
            f"{'yes' if r['learns'] else 'no'} | {r['steps']} | {r['minutes']:.1f} |"
        )
    doc = path.read_text()
    head, rest = doc.split(START, 1)
    _, tail = rest.split(END, 1)
    path.write_text(head + START + "\n" + "\n".join(lines) + "\n" + END + tail)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/presets_runs"))
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--presets", nargs="*", default=None)
    parser.add_argument("--table", type=Path, default=ROOT / "docs" / "presets.md")
    args = parser.parse_args()
    presets = args.presets or [p for p in available_presets() if not _needs_vit(p)]
    args.out.mkdir(parents=True, exist_ok=True)
    run_all(presets, args.out, args.epochs, args.jobs)
    rows = [row(p, args.out) for p in presets]
    write_table(rows, args.epochs, args.jobs, args.table, time.strftime("%Y-%m-%d %H:%M"))
    print(args.table.read_text())


if __name__ == "__main__":
    main()
