"""The live collapse monitor: TensorBoard's ``monitor/*`` scalars every few steps.

One job: between the per-epoch records, every ``monitor.every_steps`` optimizer steps,
measure the collapse monitor (:class:`~protossl.engine.monitor.CollapseMonitor`) and
write its numbers to TensorBoard. A built-in trainer hook: it keeps no state (nothing in
the checkpoint) and runs on the main process only, when TensorBoard is installed; the
measurement changes nothing in the run (evaluation mode, no gradients).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from protossl.engine.hooks import TrainerHook

if TYPE_CHECKING:  # the trainer imports this module
    from protossl.engine.trainer import Trainer

__all__ = ["LiveMonitor"]


class LiveMonitor(TrainerHook):
    """After every ``cfg.monitor.every_steps``-th step (0: never), the monitor's numbers
    at step ``step + 1`` under ``monitor/`` in TensorBoard."""

    def on_step_end(self, trainer: Trainer, step: int, epoch: int) -> None:
        every = self.cfg.monitor.every_steps
        log = trainer.metrics_log
        if log.writer is None or every <= 0 or (step + 1) % every:
            return
        log.add_scalars("monitor", trainer.monitor.measure(trainer.method), step + 1)
