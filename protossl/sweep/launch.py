"""The sweep's child processes: started with their logs, stopped with the sweep.

No child may outlive the sweep, or a restarted sweep would train beside an orphan
writing into the same run folder: each child gets a parent-death signal
(``die_with_parent``, for a SIGKILL of the sweep), SIGTERM becomes ``SystemExit`` in the
sweep so its ``finally`` runs, and that ``finally`` stops every child still running.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from protossl.runs.folder import die_with_parent, write_marker
from protossl.sweep.plan import Step
from protossl.sweep.tasks import SweepRun


@dataclass
class Slot:
    """A run in progress: its remaining steps and the process of the current one."""

    run: SweepRun
    steps: Iterator[Step]
    gpu: str | None
    begun: float
    step: Step | None = None
    proc: subprocess.Popen[bytes] | None = None
    offset: int = 0  # where the current step's output starts in its log


def launch(slot: Slot) -> bool:
    """Start the slot's next step; False when none is left."""
    step = next(slot.steps, None)
    slot.step, slot.proc = step, None
    if step is None:
        return False
    # The marker first: the run folder is protossl's before train.log is written into it.
    write_marker(step.log.parent)
    with step.log.open("ab") as log:
        slot.offset = log.tell()
        log.write(f"$ {' '.join(step.command)}\n".encode())
        log.flush()
        slot.proc = subprocess.Popen(
            step.command, stdout=log, stderr=log, env=step.env, preexec_fn=die_with_parent
        )
    return True


def stop_children(slots: dict[str, Slot], grace: float = 10.0) -> None:
    """Terminate every running child, then kill those still alive after ``grace`` s."""
    procs = [s.proc for s in slots.values() if s.proc is not None and s.proc.poll() is None]
    for proc in procs:
        proc.terminate()
    deadline = time.monotonic() + grace  # one grace period for all, not one each
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def raise_on_sigterm(signum: int, frame: Any) -> NoReturn:
    """SIGTERM handler: unwind like Ctrl-C does, so the children are stopped too."""
    raise SystemExit(128 + signum)


def last_error_line(log: Path, offset: int = 0) -> str:
    """The last line mentioning an error written to ``log`` after ``offset`` bytes."""
    if not log.is_file():
        return "no log"
    with log.open("rb") as handle:
        handle.seek(offset)
        text = handle.read().decode(errors="replace")
    # "$ ..." lines are the commands the sweep logged, not output.
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("$ ")]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or ["no output"])[-1].strip()[:300]
