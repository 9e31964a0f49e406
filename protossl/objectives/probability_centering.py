"""Probability centering: the teacher target of DINO-vMF.

DINO centers the teacher's logits: ``softmax((l_t - c) / tau_t)`` with c an
EMA of the mean logits. With vMF logits (Govindarajan et al., "DINO as a von
Mises-Fisher mixture model", ICLR 2023) that would undo the method: the center
of prototype k absorbs its batch-constant term ``log C_p(kappa_k)``, so the
teacher would no longer see the vMF normalizer. DINO-vMF centers in probability
space instead: c is an EMA of the mean teacher *probabilities*, and each
probability is divided by the center before renormalizing,

    p_t^(k)(x) = (softmax(l_t(x) / tau_t)^(k) / c^(k)) / sum_j (... / c^(j))
               = softmax(l_t(x) / tau_t - log c)^(k),
    c <- m c + (1 - m) mean_batch softmax(l_t / tau_t).

A prototype that the batch uses more than uniformly is damped and one used
less is boosted, the same balancing effect as DINO's centering, acting on the
quantity (the marginal latent class distribution) it is meant to balance.
"""

from __future__ import annotations

import torch
from torch import Tensor

from protossl.core.distributed import all_reduce_mean
from protossl.objectives.registry import register_target_builder
from protossl.objectives.targets import TargetBuilder, check_teacher_temp

# The center's floor before its logarithm. An unused prototype's center decays
# geometrically and would reach 0 in float32 after about a thousand steps;
# log(0) = -inf would then make its target logit +inf and the targets NaN.
# At the floor -log c is about 87: finite, and reached only by a prototype that
# no sample has picked for about a thousand steps.
_MIN_CENTER = torch.finfo(torch.float32).tiny


@register_target_builder("probability-centering")
class ProbabilityCentering(TargetBuilder):
    """Teacher targets centered in probability space (DINO-vMF).

    From Govindarajan et al., "DINO as a von Mises-Fisher mixture model" (ICLR
    2023): ``target = softmax(l_t / teacher_temp - log c)``, where the center c
    (a distribution over the K prototypes, uniform at the start) is an
    exponential moving average of the mean teacher probabilities
    ``softmax(l_t / teacher_temp)`` over crops, batch and processes.

    :meth:`update` needs the teacher temperature of the step, because the
    probabilities depend on it. A method that calls ``update(teacher_logits)``
    without it gets ``teacher_temp`` from the constructor (the config's
    ``objective.teacher_temp``).

    Args:
        num_prototypes: Number of prototypes K (size of the last dimension).
        momentum: EMA momentum m of the center, in [0, 1) (default 0.9, as DINO).
        teacher_temp: Temperature :meth:`update` uses when it is given none
            (default 0.04, DINO's and DINO-vMF's teacher temperature).

    Example:
        >>> centering = ProbabilityCentering(num_prototypes=16, momentum=0.9)
        >>> probs = centering.targets(torch.randn(2, 4, 16), teacher_temp=0.04)
        >>> centering.update(torch.randn(2, 4, 16), teacher_temp=0.04)  # after the loss
    """

    center: Tensor

    def __init__(
        self, num_prototypes: int, momentum: float = 0.9, teacher_temp: float = 0.04
    ) -> None:
        super().__init__()
        if isinstance(num_prototypes, bool) or not isinstance(num_prototypes, int):
            raise ValueError(f"num_prototypes must be an integer (got {num_prototypes!r})")
        if num_prototypes < 1:
            raise ValueError(f"num_prototypes must be >= 1 (got {num_prototypes})")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1) (got {momentum})")
        check_teacher_temp(teacher_temp)
        self.num_prototypes = num_prototypes
        self.momentum = float(momentum)
        self.teacher_temp = float(teacher_temp)
        # Uniform: a constant center leaves the first targets plain softmaxes.
        self.register_buffer("center", torch.full((1, num_prototypes), 1.0 / num_prototypes))

    def _check_logits(self, teacher_logits: Tensor) -> None:
        if teacher_logits.dim() < 2 or teacher_logits.shape[-1] != self.num_prototypes:
            raise ValueError(
                f"teacher_logits must have shape [..., {self.num_prototypes}] "
                f"(got {tuple(teacher_logits.shape)})"
            )

    @staticmethod
    def _scaled(teacher_logits: Tensor, teacher_temp: float) -> Tensor:
        # At least float32: at teacher_temp = 0.04 the scaled logits are large.
        logits = teacher_logits.detach()
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        return logits / teacher_temp

    @torch.no_grad()
    def targets(self, teacher_logits: Tensor, teacher_temp: float) -> Tensor:
        """``softmax(teacher_logits / teacher_temp - log center)`` for [T, B, K] or [N, K]."""
        check_teacher_temp(teacher_temp)
        self._check_logits(teacher_logits)
        log_center = torch.log(self.center.clamp_min(_MIN_CENTER))
        scaled = self._scaled(teacher_logits, teacher_temp)
        return torch.softmax(scaled - log_center.to(scaled.dtype), dim=-1)

    @torch.no_grad()
    def update(self, teacher_logits: Tensor, teacher_temp: float | None = None) -> None:
        """EMA update of the center with the mean teacher probabilities over crops, batch, ranks."""
        temp = self.teacher_temp if teacher_temp is None else teacher_temp
        check_teacher_temp(temp)
        self._check_logits(teacher_logits)
        flat = self._scaled(teacher_logits, temp).reshape(-1, self.num_prototypes)
        if flat.shape[0] == 0:
            raise ValueError("cannot update the center from an empty batch")
        batch_center = torch.softmax(flat, dim=-1).mean(dim=0, keepdim=True)
        # Equal per-process batches, so the mean of means is the global mean.
        batch_center = all_reduce_mean(batch_center.to(self.center.dtype))
        self.center.mul_(self.momentum).add_(batch_center, alpha=1.0 - self.momentum)

    @torch.no_grad()
    def reset_rows(self, index: Tensor) -> None:
        """Center entries of prototypes ``index`` back to their initial 1 / K.

        Only those entries: the center then no longer sums to exactly 1, which the
        targets do not need (they renormalize) and the EMA corrects as it moves.
        """
        self.center[:, index.to(self.center.device)] = 1.0 / self.num_prototypes

    def extra_repr(self) -> str:
        return (
            f"num_prototypes={self.num_prototypes}, momentum={self.momentum}, "
            f"teacher_temp={self.teacher_temp}"
        )
