"""Which gradients a training step drops: the one prototype-freezing mechanism.

Two rules, asked once per step after the gradients are reduced and clipped, before the
optimizer step (a parameter without gradient is not moved, and AdamW leaves its moments
alone):

- DINO's ``freeze_last_layer`` (Caron et al. 2021): the method's
  ``prototype_parameters()`` during the first ``optim.freeze_last_layer_epochs`` epochs;
- the method's own rule, ``frozen_parameters(context)`` (SwAV freezes its prototypes
  for the first ``swav.freeze_prototypes_steps`` iterations, Caron et al. 2020).

Example:
    >>> freezer = GradientFreezer(method, freeze_last_layer_epochs=1)  # doctest: +SKIP
    >>> freezer.apply(StepContext(step=0, epoch=0))  # doctest: +SKIP
"""

from __future__ import annotations

from torch import nn

from protossl.methods import Method, StepContext

__all__ = ["GradientFreezer"]


class GradientFreezer:
    """Drops the gradients of the parameters frozen at a step (both rules combined)."""

    def __init__(self, method: Method, freeze_last_layer_epochs: int) -> None:
        self.method = method
        self.freeze_last_layer_epochs = freeze_last_layer_epochs

    def frozen(self, context: StepContext) -> list[nn.Parameter]:
        """The parameters frozen at ``context``'s step (a parameter may appear twice)."""
        frozen: list[nn.Parameter] = []
        if context.epoch < self.freeze_last_layer_epochs:
            # DINO freezes the prototypes during the first epoch(s) for stability.
            frozen.extend(self.method.prototype_parameters())
        frozen.extend(self.method.frozen_parameters(context))
        return frozen

    def apply(self, context: StepContext) -> None:
        """Set the gradient of every parameter frozen at this step to None."""
        for param in self.frozen(context):
            param.grad = None
