"""``protossl sweep``: a grid of training runs, resumable, collected into one table.

A sweep file names a base (preset and overrides) and a grid of config keys;
every combination is one run directory ``OUT/<name>``. Runs are separate
``protossl train`` processes (one after another, or ``--jobs N`` at a time, each
pinned to one GPU with ``--gpus``), so a broken run cannot take the sweep down:
it is recorded as failed with its last error line, and the others go on.
Finished runs are skipped; interrupted ones continue with ``--resume``. After
each run, every summary is collected into ``OUT/results.csv`` and
``OUT/results.json``.

Sweep file (YAML)::

    preset: dino                 # default preset of every run
    set:                         # overrides shared by every run
      optim.epochs: 30
    grid:                        # every combination is a run
      preset: [dino, dino-kp]    # "preset" may vary too
      model.num_prototypes: [256, 1024, 4096]
      seed: [0, 1]

Example:
    $ protossl sweep sweeps/cifar10.yaml --out sweeps/cifar10 --jobs 2
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from protossl.config import available_presets, load_config
from protossl.engine.checkpoint import atomic_write_text
from protossl.errors import UserError


@dataclass(frozen=True)
class SweepRun:
    """One point of the grid."""

    name: str
    preset: str
    overrides: tuple[str, ...]
    grid_values: dict[str, Any] = field(default_factory=dict)


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_format_value(v) for v in value) + "]"
    return str(value)


def _short(key: str) -> str:
    # model.num_prototypes -> num_prototypes: run names stay readable
    return key.split(".")[-1]


def load_sweep(path: str | Path) -> list[SweepRun]:
    """Parse and check a sweep file; every run's config is validated up front."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"sweep file not found: {path}")
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(
            f"sweep file {path} is not valid YAML: {str(exc).splitlines()[0]}"
        ) from None
    if not isinstance(spec, dict):
        raise UserError(f"sweep file {path} must hold a mapping with 'grid'")
    unknown = set(spec) - {"preset", "set", "grid"}
    if unknown:
        raise UserError(f"sweep file {path}: unknown keys {sorted(unknown)}; use preset, set, grid")
    base_preset = str(spec.get("preset", "dino"))
    shared = spec.get("set") or {}
    grid = spec.get("grid") or {}
    if not isinstance(shared, dict) or not isinstance(grid, dict):
        raise UserError(f"sweep file {path}: 'set' and 'grid' must be mappings of keys")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise UserError(f"sweep file {path}: grid.{key} must be a non-empty list")
    runs: list[SweepRun] = []
    keys = list(grid)
    for combo in itertools.product(*(grid[k] for k in keys)):
        values = dict(zip(keys, combo, strict=True))
        preset = str(values.get("preset", base_preset))
        if preset not in available_presets():
            raise UserError(f"sweep file {path}: unknown preset {preset!r}")
        overrides = [f"{k}={_format_value(v)}" for k, v in shared.items()]
        overrides += [f"{k}={_format_value(v)}" for k, v in values.items() if k != "preset"]
        load_config(preset, overrides=overrides)  # fail before anything runs
        parts = [preset] + [
            f"{_short(k)}-{_format_value(v)}" for k, v in values.items() if k != "preset"
        ]
        name = "_".join(parts).replace("/", "-").replace(" ", "")
        runs.append(SweepRun(name, preset, tuple(overrides), values))
    if not runs:
        raise UserError(f"sweep file {path} has an empty grid")
    if len({r.name for r in runs}) != len(runs):
        raise UserError(f"sweep file {path}: two grid points give the same run name")
    return runs


def run_status(run_dir: Path) -> str:
    """``done`` (finished summary), ``partial`` (a checkpoint to resume) or ``new``."""
    summary = run_dir / "summary.json"
    if summary.is_file():
        try:
            if json.loads(summary.read_text()).get("finished"):
                return "done"
        except json.JSONDecodeError:
            pass
    return "partial" if (run_dir / "checkpoints" / "last.pt").is_file() else "new"


def train_command(run: SweepRun, run_dir: Path, resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", "protossl", "train", "--out", str(run_dir)]
    if resume:
        return cmd + ["--resume"]
    cmd += ["--preset", run.preset]
    for item in run.overrides:
        cmd += ["--set", item]
    return cmd


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(value, (int, float, str, bool)) or value is None:
        out[prefix] = value


def collect(runs: list[SweepRun], out: Path, errors: dict[str, str]) -> list[dict[str, Any]]:
    """One row per run (grid values, status, summary numbers); written as CSV and JSON."""
    rows: list[dict[str, Any]] = []
    for run in runs:
        row: dict[str, Any] = {"run": run.name, "preset": run.preset}
        row.update({k: _format_value(v) for k, v in run.grid_values.items() if k != "preset"})
        status = run_status(out / run.name)
        row["status"] = "failed" if run.name in errors else status
        row["error"] = errors.get(run.name, "")
        summary_path = out / run.name / "summary.json"
        if summary_path.is_file() and run.name not in errors:
            summary = json.loads(summary_path.read_text())
            flat: dict[str, Any] = {}
            for key in ("K", "M", "M_over_K", "usage", "eval", "wall_time_seconds", "steps"):
                if key in summary:
                    _flatten(key, summary[key], flat)
            row.update(flat)
        rows.append(row)
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    atomic_write_text(out / "results.json", json.dumps(rows, indent=2) + "\n")
    lines: list[str] = []

    class _Sink:
        def write(self, text: str) -> int:
            lines.append(text)
            return len(text)

    writer = csv.DictWriter(_Sink(), fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "results.csv", "".join(lines))
    return rows


def _last_error_line(log: Path) -> str:
    if not log.is_file():
        return "no log"
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or ["no output"])[-1].strip()[:300]


def run_sweep(
    path: str | Path,
    out: str | Path,
    jobs: int = 1,
    gpus: list[str] | None = None,
    echo: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> list[dict[str, Any]]:
    """Run every grid point not yet finished; returns the collected rows."""
    runs = load_sweep(path)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if jobs < 1:
        raise UserError("--jobs must be >= 1")
    todo = [r for r in runs if run_status(out / r.name) != "done"]
    echo(f"sweep: {len(runs)} runs, {len(runs) - len(todo)} already finished, {len(todo)} to run")
    errors: dict[str, str] = {}
    running: dict[str, tuple[subprocess.Popen[bytes], float, str | None]] = {}
    free_gpus = list(gpus or [])
    durations: list[float] = []
    started = time.perf_counter()
    pending = list(todo)
    finished = 0
    while pending or running:
        while pending and len(running) < jobs and (not gpus or free_gpus):
            run = pending.pop(0)
            run_dir = out / run.name
            resume = run_status(run_dir) == "partial"
            run_dir.mkdir(parents=True, exist_ok=True)
            env = dict(os.environ)
            gpu = free_gpus.pop(0) if gpus else None
            if gpu is not None:
                env["CUDA_VISIBLE_DEVICES"] = gpu
            with (run_dir / "train.log").open("ab") as log:
                proc = subprocess.Popen(
                    train_command(run, run_dir, resume), stdout=log, stderr=log, env=env
                )
            running[run.name] = (proc, time.perf_counter(), gpu)
            how = "resumed" if resume else "started"
            echo(f"[{finished + len(running)}/{len(todo)}] {run.name}: {how}")
        time.sleep(0.5)
        for name, (proc, begun, gpu) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[name]
            if gpu is not None:
                free_gpus.append(gpu)
            finished += 1
            seconds = time.perf_counter() - begun
            if proc.returncode == 0:
                durations.append(seconds)
                state = "done"
            else:
                errors[name] = _last_error_line(out / name / "train.log")
                state = f"FAILED: {errors[name]}"
            left = len(todo) - finished
            mean = sum(durations) / len(durations) if durations else seconds
            eta = mean * left / max(jobs, 1)
            echo(
                f"[{finished}/{len(todo)}] {name}: {state} in {seconds / 60:.1f} min; "
                f"elapsed {(time.perf_counter() - started) / 60:.1f} min, ETA {eta / 60:.1f} min"
            )
            collect(runs, out, errors)
    rows = collect(runs, out, errors)
    failed = sum(1 for r in rows if r["status"] == "failed")
    echo(f"sweep: {len(rows) - failed} finished, {failed} failed -> {out / 'results.csv'}")
    return rows
