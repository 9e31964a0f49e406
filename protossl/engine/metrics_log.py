"""What training writes per epoch: ``metrics.jsonl`` lines and TensorBoard scalars.

One job: the run's metrics. :func:`epoch_record` builds an epoch's record (mean loss
terms, this step's scheduled values, the collapse monitor and timings);
:class:`MetricsLog` appends it to ``metrics.jsonl`` and TensorBoard, drops the lines of
epochs that a resume recomputes, and takes the live monitor's scalars between epochs.
Only the main process writes.

Example:
    >>> log = MetricsLog(RunPaths(Path("runs/dino")))  # doctest: +SKIP
    >>> log.open(start_epoch=0, start_step=0)  # doctest: +SKIP
    >>> log.append({"epoch": 0, "step": 10, "loss": 2.7})  # doctest: +SKIP
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from protossl.core import distributed
from protossl.core.files import atomic_write_text
from protossl.core.run_layout import RunPaths
from protossl.engine.monitor import CollapseMonitor
from protossl.engine.schedules import Schedules
from protossl.methods import Method

__all__ = ["TIMING_KEYS", "MetricsLog", "epoch_record", "format_record"]

# Keys of metrics.jsonl that depend on the wall clock, not on the computation.
TIMING_KEYS = ("seconds", "images_per_second", "monitor_seconds")


def epoch_record(
    epoch: int,
    step: int,
    sums: Mapping[str, float],
    count: int,
    seconds: float,
    *,
    schedules: Schedules,
    monitor: CollapseMonitor,
    method: Method,
    batch_size: int,
) -> dict[str, Any]:
    """The record of ``epoch``, whose last step is ``step``: mean terms over ``count``
    steps, the schedules at ``step``, and (main process only) the collapse monitor and
    timings."""
    record: dict[str, Any] = {"epoch": epoch, "step": step + 1}
    record.update({key: value / max(count, 1) for key, value in sums.items()})
    record.update(schedules.values(step))
    if not distributed.is_main_process():
        return record  # only the main process measures, logs and writes
    monitor_started = time.perf_counter()
    record.update(monitor.measure(method))
    # The monitor's own cost, so users can see that leaving it on is cheap.
    record["monitor_seconds"] = time.perf_counter() - monitor_started
    record["seconds"] = seconds
    record["images_per_second"] = count * batch_size / max(seconds, 1e-9)
    return record


def format_record(method: str, record: Mapping[str, Any]) -> str:
    """One line on stderr per epoch, when there is no progress bar."""
    return (
        f"[{method}] epoch {record['epoch']} step {record['step']} loss {record['loss']:.4f} "
        f"M {record['M']}/{record['K']} used {record['prototypes_used']} "
        f"({record['images_per_second']:.0f} img/s)"
    )


class MetricsLog:
    """``metrics.jsonl`` and the TensorBoard events of one run (main process only)."""

    def __init__(self, paths: RunPaths) -> None:
        self.paths = paths
        self.writer: Any = None  # a SummaryWriter while open, if tensorboard is installed

    def open(self, start_epoch: int, start_step: int) -> None:
        """Drop the lines of epochs from ``start_epoch`` on (a resume recomputes them) and
        open TensorBoard, purging its events from ``start_step`` on."""
        self._truncate(start_epoch)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional at run time
            self.writer = None
            return
        self.writer = SummaryWriter(log_dir=str(self.paths.tensorboard), purge_step=start_step)

    def append(self, record: Mapping[str, Any]) -> None:
        """One epoch's record: a line of ``metrics.jsonl`` and a TensorBoard scalar per number."""
        with self.paths.metrics.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if key not in ("epoch", "step") and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, record["step"])
            self.writer.flush()

    def add_scalars(self, prefix: str, values: Mapping[str, float], step: int) -> None:
        """TensorBoard scalars ``prefix/key`` at ``step`` (nothing without TensorBoard)."""
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(f"{prefix}/{key}", value, step)

    def close(self) -> None:
        """Close TensorBoard (``metrics.jsonl`` is closed after every line)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def _truncate(self, epoch: int) -> None:
        if not self.paths.metrics.exists():
            return
        kept = []
        for line in self.paths.metrics.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill: recomputed anyway
                continue
            if isinstance(record, dict) and record.get("epoch", epoch) < epoch:
                kept.append(line)
        atomic_write_text(self.paths.metrics, "".join(line + "\n" for line in kept))
