"""The state of each run of a sweep, and the commands that finish it.

A run is ``done`` once its ``summary.json`` says ``finished``, ``partial`` while a
checkpoint waits to be resumed, and ``new`` otherwise; an evaluation counts as done
once its own record in the summary has results. This is all a restarted sweep looks
at, so resuming needs no state of its own.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protossl.core.run_layout import RunPaths
from protossl.sweep.tasks import EvalTask, SweepRun


def read_summary(run_dir: Path) -> dict[str, Any]:
    """The run's ``summary.json``, or ``{}`` when missing, unreadable or not a mapping."""
    try:
        summary = json.loads(RunPaths(run_dir).summary.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return summary if isinstance(summary, dict) else {}


def run_status(run_dir: Path) -> str:
    """``done`` (finished summary), ``partial`` (a checkpoint to resume) or ``new``."""
    if read_summary(run_dir).get("finished"):
        return "done"
    return "partial" if RunPaths(run_dir).last_checkpoint.is_file() else "new"


def pending_protocols(run_dir: Path, task: EvalTask) -> tuple[str, ...]:
    """The protocols of ``task`` whose results are not yet in the run's summary.json.

    A protocol counts as done when the evaluation's own record
    (``summary["eval"]["runs"][task.label]``) has a ``<protocol>_...`` entry, so results
    on other data (or the trainer's own kNN) never make an evaluation look done.
    """
    section = read_summary(run_dir).get("eval")
    runs = section.get("runs") if isinstance(section, dict) else None
    record = runs.get(task.label) if isinstance(runs, dict) else None
    keys = list(record) if isinstance(record, dict) else []
    return tuple(p for p in task.protocols if not any(k.startswith(f"{p}_") for k in keys))


def has_work(run: SweepRun, run_dir: Path) -> bool:
    """Whether the run still needs training or one of its evaluations."""
    if run_status(run_dir) != "done":
        return True
    return any(pending_protocols(run_dir, task) for task in run.evals)


def train_command(run: SweepRun, run_dir: Path, resume: bool) -> list[str]:
    """The ``protossl train`` command line of a run; ``--resume`` alone continues one
    (the run folder's saved config is the truth then, not the sweep file)."""
    cmd = [sys.executable, "-m", "protossl", "train", "--out", str(run_dir)]
    if resume:
        return cmd + ["--resume"]
    cmd += ["--preset", run.preset]
    for item in run.overrides:
        cmd += ["--set", item]
    return cmd


def eval_command(run_dir: Path, task: EvalTask, protocols: tuple[str, ...]) -> list[str]:
    """The ``protossl eval`` command line of ``task``, limited to ``protocols`` (the
    ones still pending)."""
    cmd = [sys.executable, "-m", "protossl", "eval", str(run_dir), "--data", task.data]
    if task.test_data:
        cmd += ["--test-data", task.test_data]
    cmd += ["--protocols", ",".join(protocols), "--features", task.features]
    return cmd + ["--device", task.device]


@dataclass
class Step:
    """One child process of a run: its command line, log file and environment."""

    kind: str  # "train", "resumed" or "eval N (protocols)"
    command: list[str]
    log: Path
    env: dict[str, str]


def run_steps(run: SweepRun, run_dir: Path, gpu: str | None) -> Iterator[Step]:
    """The run's remaining work, decided lazily: evaluations are looked at after training."""
    env = dict(os.environ)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    status = run_status(run_dir)
    if status != "done":
        cmd = train_command(run, run_dir, resume=status == "partial")
        yield Step("resumed" if status == "partial" else "train", cmd, run_dir / "train.log", env)
    eval_env = dict(env)
    if run.num_threads > 0:
        # protossl eval has no thread option; the run's own thread count keeps --jobs fair.
        eval_env.update(OMP_NUM_THREADS=str(run.num_threads), MKL_NUM_THREADS=str(run.num_threads))
    for i, task in enumerate(run.evals, start=1):
        missing = pending_protocols(run_dir, task)
        if missing:
            kind = f"eval {i} ({','.join(missing)})"
            yield Step(kind, eval_command(run_dir, task, missing), run_dir / "eval.log", eval_env)
