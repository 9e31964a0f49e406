"""Trainer hooks: code that runs at fixed points of training without editing the trainer.

A hook sees the trainer at the start of training, after every optimizer step, after
every epoch and at every checkpoint (where it may add entries), and keeps its own state
in the checkpoint (``state_dict`` / ``load_state_dict``), so a resumed run continues
exactly. Prototype strategies (re-seed
dead or duplicate prototypes, re-estimate them outside the loss, fix them) are hooks
chosen by ``model.prototype_strategy`` from :data:`PROTOTYPE_STRATEGIES`; ``joint``
(prototypes learned by the loss, as in DINO) adds none.

Example:
    >>> @PROTOTYPE_STRATEGIES.register("every-10-steps")  # doctest: +SKIP
    ... class Every10(TrainerHook):
    ...     def on_step_end(self, trainer, step, epoch):
    ...         if (step + 1) % 10 == 0:
    ...             dim = trainer.method.student_prototypes().shape[1]
    ...             trainer.reset_prototype_rows([0], torch.randn(1, dim))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from protossl.config import Config
from protossl.core.registry import Registry

if TYPE_CHECKING:  # the trainer imports this module
    from protossl.engine.trainer import Trainer

__all__ = ["PROTOTYPE_STRATEGIES", "TrainerHook", "build_hooks"]


class TrainerHook:
    """Base class: every callback is a no-op, the state is empty.

    A hook must be deterministic given its state and the trainer's (it runs identically
    on every rank, and across a resume).
    """

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    def on_train_start(self, trainer: Trainer) -> None:
        """Once per ``fit``, after a resume has restored every state."""

    def on_step_end(self, trainer: Trainer, step: int, epoch: int) -> None:
        """After the optimizer step and the teacher update of global ``step``."""

    def on_epoch_end(self, trainer: Trainer, epoch: int, record: dict[str, Any]) -> None:
        """After ``epoch``'s metrics record is built, before its checkpoint is written."""

    def on_checkpoint(self, trainer: Trainer, state: dict[str, Any]) -> None:
        """Before an epoch's checkpoint ``state`` is written; may add entries to it (under
        a key of its own; the checkpoint read on resume is ``trainer.resumed_state``).
        Its own state belongs in :meth:`state_dict`, which is already in ``state``."""

    def state_dict(self) -> dict[str, Any]:
        """What the checkpoint keeps of this hook (tensors and plain values)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""


HookFactory = Callable[[Config], TrainerHook]
PROTOTYPE_STRATEGIES: Registry[HookFactory | None] = Registry("prototype strategy", "strategies")
# Prototypes learned jointly with the encoder by the method's loss: no hook.
PROTOTYPE_STRATEGIES.add("joint", None)


def build_hooks(cfg: Config) -> list[TrainerHook]:
    """The hooks a configuration asks for (its prototype strategy's, if any).

    Raises:
        UserError: an unknown ``model.prototype_strategy`` (with the known names).
    """
    factory = PROTOTYPE_STRATEGIES.lookup(cfg.model.prototype_strategy)
    return [] if factory is None else [factory(cfg)]
