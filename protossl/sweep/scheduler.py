"""``run_sweep``: the runs that still have work, ``--jobs`` at a time, with progress lines.

One sweep process per folder (a ``FolderLock``); its children die with it, so a
restarted sweep never runs beside an orphan. The table is rewritten after every
finished run, so an interrupted sweep leaves an up-to-date ``results.csv``.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from protossl.core.errors import UserError
from protossl.runs.folder import FolderLock
from protossl.sweep.launch import Slot, last_error_line, launch, raise_on_sigterm, stop_children
from protossl.sweep.plan import has_work, run_status, run_steps
from protossl.sweep.results import collect
from protossl.sweep.spec import load_sweep
from protossl.sweep.tasks import SweepRun


def _echo_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run_sweep(
    path: str | Path,
    out: str | Path,
    jobs: int = 1,
    gpus: list[str] | None = None,
    echo: Callable[[str], None] = _echo_stderr,
) -> list[dict[str, Any]]:
    """Train and evaluate every grid point not yet finished; returns the collected rows."""
    runs = load_sweep(path)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder; choose a folder")
    if jobs < 1:
        raise UserError("--jobs must be >= 1")
    # One sweep process per folder; its children die with it (signals below, and
    # die_with_parent for a SIGKILL), so a restarted sweep never runs beside an orphan.
    out.mkdir(parents=True, exist_ok=True)
    with FolderLock(out, "sweep folder"):
        if threading.current_thread() is not threading.main_thread():
            return _run_sweep(runs, out, jobs, gpus, echo)  # signals belong to the main thread
        previous = signal.signal(signal.SIGTERM, raise_on_sigterm)
        try:
            return _run_sweep(runs, out, jobs, gpus, echo)
        finally:
            signal.signal(signal.SIGTERM, previous)


def _run_sweep(
    runs: list[SweepRun],
    out: Path,
    jobs: int,
    gpus: list[str] | None,
    echo: Callable[[str], None],
) -> list[dict[str, Any]]:
    """The scheduling loop: fill free slots, poll children every 0.5 s, report and collect."""
    todo = [r for r in runs if has_work(r, out / r.name)]
    eval_only = sum(1 for r in todo if run_status(out / r.name) == "done")
    line = f"sweep: {len(runs)} runs, {len(runs) - len(todo)} already finished, {len(todo)} to run"
    echo(line + (f" ({eval_only} only to evaluate)" if eval_only else ""))
    errors: dict[str, str] = {}
    eval_errors: dict[str, list[str]] = {}
    slots: dict[str, Slot] = {}
    free_gpus = list(gpus or [])
    durations: list[float] = []
    started = time.perf_counter()
    pending = list(todo)
    finished = 0
    try:
        while pending or slots:
            while pending and len(slots) < jobs and (not gpus or free_gpus):
                run = pending.pop(0)
                gpu = free_gpus.pop(0) if gpus else None
                slot = Slot(run, run_steps(run, out / run.name, gpu), gpu, time.perf_counter())
                slots[run.name] = slot
                if launch(slot):
                    assert slot.step is not None
                    how = {"train": "started", "resumed": "resumed"}.get(
                        slot.step.kind, "evaluating"
                    )
                    echo(f"[{finished + len(slots)}/{len(todo)}] {run.name}: {how}")
            time.sleep(0.5)
            for name, slot in list(slots.items()):
                if slot.proc is not None and slot.proc.poll() is None:
                    continue
                if slot.proc is not None and slot.step is not None:
                    step = slot.step
                    if slot.proc.returncode != 0:
                        message = last_error_line(step.log, slot.offset)
                        if step.kind in ("train", "resumed"):
                            errors[name] = message
                            slot.steps = iter(())  # nothing to evaluate
                        else:
                            eval_errors.setdefault(name, []).append(f"{step.kind}: {message}")
                            echo(f"{name}: {step.kind} FAILED: {message}")
                    if launch(slot):
                        assert slot.step is not None
                        echo(f"{name}: {slot.step.kind}")
                        continue
                del slots[name]
                if slot.gpu is not None:
                    free_gpus.append(slot.gpu)
                finished += 1
                seconds = time.perf_counter() - slot.begun
                if name in errors:
                    state = f"FAILED: {errors[name]}"
                elif name in eval_errors:
                    state = f"trained, {len(eval_errors[name])} evaluation(s) FAILED"
                else:
                    # Only clean runs feed the ETA: a failure ends early and would skew it.
                    durations.append(seconds)
                    state = "done"
                left = len(todo) - finished
                mean = sum(durations) / len(durations) if durations else seconds
                eta = mean * left / max(jobs, 1)
                elapsed = (time.perf_counter() - started) / 60
                echo(
                    f"[{finished}/{len(todo)}] {name}: {state} in {seconds / 60:.1f} min; "
                    f"elapsed {elapsed:.1f} min, ETA {eta / 60:.1f} min"
                )
                collect(runs, out, errors, eval_errors)
    finally:  # Ctrl-C, SIGTERM or a crash: no child outlives the sweep
        stop_children(slots)
    rows = collect(runs, out, errors, eval_errors)
    failed = sum(1 for r in rows if r["status"] == "failed")
    echo(f"sweep: {len(rows) - failed} finished, {failed} failed -> {out / 'results.csv'}")
    return rows
