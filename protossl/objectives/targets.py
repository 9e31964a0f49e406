"""Teacher target builders: turn teacher logits into target probabilities.

This is the pluggable part of the objective (dinov2's split): centering (DINO),
later Sinkhorn-Knopp, probability centering and the other MLCD regularizers.
A builder has two separate steps so that nothing happens behind the caller's
back: :meth:`TargetBuilder.targets` is a pure function of its inputs and the
current state, and :meth:`TargetBuilder.update` advances running statistics and
is called once per step, after the loss has been computed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn

from protossl.core.distributed import all_reduce_mean


def check_teacher_temp(teacher_temp: float) -> None:
    """Raise ValueError unless ``teacher_temp`` is a positive number."""
    if not teacher_temp > 0:  # also rejects NaN
        raise ValueError(f"teacher_temp must be > 0 (got {teacher_temp})")


def centered_softmax(logits: Tensor, center: Tensor, teacher_temp: float) -> Tensor:
    """``softmax((logits - center) / teacher_temp)`` over the last dimension.

    Computed in at least float32: with teacher_temp = 0.04 the scaled logits are
    large, and a half-precision softmax would round small targets to zero.
    """
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    return torch.softmax((logits - center) / teacher_temp, dim=-1)


class TargetBuilder(nn.Module, ABC):
    """Base class of the teacher target builders.

    Subclasses implement :meth:`targets` (no side effects, no gradient) and, if
    they keep running statistics, :meth:`update`. Running statistics must live in
    registered buffers so that they are saved in ``state_dict`` and checkpoints.
    Calling the module is the same as calling :meth:`targets`.
    """

    @abstractmethod
    def targets(self, teacher_logits: Tensor, teacher_temp: float) -> Tensor:
        """Target probabilities with the shape of ``teacher_logits``, without gradient."""

    def update(  # noqa: B027 - optional hook
        self, teacher_logits: Tensor, teacher_temp: float | None = None
    ) -> None:
        """Advance running statistics with this step's teacher logits (default: none).

        ``teacher_temp`` is this step's teacher temperature, for builders whose
        statistics are probabilities (probability centering); others ignore it.
        """

    def reset_rows(self, index: Tensor) -> None:  # noqa: B027 - optional hook
        """Forget the running statistics of prototypes ``index`` (default: none kept).

        Called when a prototype strategy re-seeds those prototypes: a builder with
        per-prototype state sets their entries to what a freshly built one holds.
        """

    def forward(self, teacher_logits: Tensor, teacher_temp: float) -> Tensor:
        return self.targets(teacher_logits, teacher_temp)


class Centering(TargetBuilder):
    """Teacher centering and sharpening, the target of DINO.

    From DINO (Caron et al., "Emerging Properties in Self-Supervised Vision
    Transformers", 2021): ``target = softmax((l_t - c) / teacher_temp)``, where the
    center c is an exponential moving average of the mean teacher logits,
    ``c <- m c + (1 - m) mean(l_t)``, averaged over all processes.

    Args:
        num_prototypes: Number of prototypes K (size of the last dimension).
        momentum: EMA momentum m of the center, in [0, 1) (default 0.9).

    Example:
        >>> centering = Centering(num_prototypes=16, momentum=0.9)
        >>> probs = centering.targets(torch.randn(2, 4, 16), teacher_temp=0.04)
        >>> centering.update(torch.randn(2, 4, 16))  # after the loss is computed
    """

    center: Tensor

    def __init__(self, num_prototypes: int, momentum: float = 0.9) -> None:
        super().__init__()
        if num_prototypes < 1:
            raise ValueError(f"num_prototypes must be >= 1 (got {num_prototypes})")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1) (got {momentum})")
        self.num_prototypes = int(num_prototypes)
        self.momentum = float(momentum)
        # A buffer, not a plain attribute: saved with the model and moved by .to().
        self.register_buffer("center", torch.zeros(1, self.num_prototypes))

    def _check_logits(self, teacher_logits: Tensor) -> None:
        if teacher_logits.dim() < 2 or teacher_logits.shape[-1] != self.num_prototypes:
            raise ValueError(
                f"teacher_logits must have shape [..., {self.num_prototypes}] "
                f"(got {tuple(teacher_logits.shape)})"
            )

    @torch.no_grad()
    def targets(self, teacher_logits: Tensor, teacher_temp: float) -> Tensor:
        """``softmax((teacher_logits - center) / teacher_temp)`` for [T, B, K] or [N, K]."""
        check_teacher_temp(teacher_temp)
        self._check_logits(teacher_logits)
        return centered_softmax(teacher_logits, self.center, teacher_temp)

    @torch.no_grad()
    def update(self, teacher_logits: Tensor, teacher_temp: float | None = None) -> None:
        """EMA update of the center with the mean teacher logits over crops, batch and processes."""
        self._check_logits(teacher_logits)
        flat = teacher_logits.detach().reshape(-1, self.num_prototypes)
        if flat.shape[0] == 0:
            raise ValueError("cannot update the center from an empty batch")
        batch_center = flat.to(self.center.dtype).mean(dim=0, keepdim=True)
        # Equal per-process batches, so the mean of means is the global mean.
        batch_center = all_reduce_mean(batch_center)
        self.center.mul_(self.momentum).add_(batch_center, alpha=1.0 - self.momentum)

    @torch.no_grad()
    def reset_rows(self, index: Tensor) -> None:
        """Center entries of prototypes ``index`` back to their initial 0."""
        self.center[:, index.to(self.center.device)] = 0.0

    def extra_repr(self) -> str:
        return f"num_prototypes={self.num_prototypes}, momentum={self.momentum}"
