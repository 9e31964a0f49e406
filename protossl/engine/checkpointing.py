"""The trainer's checkpoints: open a run folder for a new or resumed run, restore, save.

One job: everything a resumed run needs crosses the checkpoint here. A checkpoint at
an epoch boundary holds the method (student, teacher, running targets and caches),
the optimizer, the next epoch, the global step, the wall time so far and every hook's
state; hooks may add entries of their own (:meth:`TrainerHook.on_checkpoint`). The
file format itself (versions, atomic writes, periodic copies) is
:mod:`protossl.runs.checkpoint`'s.

Example:
    >>> checkpointer = Checkpointer(RunPaths(Path("runs/dino")))  # doctest: +SKIP
    >>> state = checkpointer.open(resume=True)  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from protossl.core.errors import UserError
from protossl.core.run_layout import RunPaths
from protossl.engine.hooks import TrainerHook
from protossl.methods import Method
from protossl.runs.checkpoint import (
    read_training_checkpoint,
    save_training_checkpoint,
    training_state,
)

if TYPE_CHECKING:  # the trainer imports this module
    from protossl.engine.trainer import Trainer

__all__ = ["Checkpointer", "Progress"]


@dataclass(frozen=True)
class Progress:
    """Where a restored run continues: its next epoch and the wall time already spent."""

    start_epoch: int = 0
    elapsed_seconds: float = 0.0


class Checkpointer:
    """Reads and writes the training checkpoint of one run folder (``checkpoints/``)."""

    def __init__(self, paths: RunPaths) -> None:
        self.paths = paths

    def open(self, resume: bool) -> dict[str, Any] | None:
        """The checkpoint to resume from (None for a new run), read before anything is built.

        Raises:
            UserError: ``resume`` without a checkpoint, or a new run in a folder that
                already holds one.
        """
        last = self.paths.last_checkpoint
        if resume:
            if not last.is_file():
                raise UserError(
                    f"cannot resume: {last} does not exist; start a new run without --resume"
                )
            return read_training_checkpoint(last)
        if last.exists():
            raise UserError(
                f"{self.paths.root} already holds a run; pass --resume to continue it "
                "or choose another --out"
            )
        return None

    def restore(
        self,
        state: dict[str, Any],
        method: Method,
        optimizer: torch.optim.Optimizer,
        hooks: list[TrainerHook],
    ) -> Progress:
        """Load ``state`` into the method, the optimizer and the hooks.

        Raises:
            UserError: the checkpoint does not fit this configuration (one line).
        """
        try:
            method.load_state_dict(state["method"])
            optimizer.load_state_dict(state["optimizer"])
            start_epoch = int(state["epoch"])
            hook_states = state.get("hooks", [{} for _ in hooks])
            for hook, hook_state in zip(hooks, hook_states, strict=True):
                hook.load_state_dict(hook_state)
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(
                f"{self.paths.last_checkpoint} does not match this configuration ({first}); "
                "resume with the run's own config.yaml"
            ) from None
        return Progress(start_epoch, float(state.get("elapsed_seconds", 0.0)))

    def save(self, trainer: Trainer, next_epoch: int, step: int, elapsed: float) -> None:
        """Write ``last.pt`` (and the periodic copy) for the end of epoch ``next_epoch - 1``.

        Every hook sees the state before it is written and may add to it.
        """
        state = training_state(
            trainer.cfg.to_dict(),
            next_epoch,
            step,
            elapsed,
            trainer.method.state_dict(),
            trainer.optimizer.state_dict(),
            [hook.state_dict() for hook in trainer.hooks],
        )
        for hook in trainer.hooks:
            hook.on_checkpoint(trainer, state)
        save_training_checkpoint(self.paths, state, trainer.cfg.monitor.checkpoint_every_epochs)
