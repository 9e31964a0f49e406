"""Sinkhorn-Knopp: soft assignments with equal use of the K prototypes.

From Caron et al., "Unsupervised Learning of Visual Features by Contrasting
Cluster Assignments" (SwAV, NeurIPS 2020), also used by DINOv2 and MSN. Given
scores s [B, K], start from ``Q = exp(s / epsilon)`` viewed as a K x B matrix,
then alternate ``iterations`` times: normalize rows so each prototype holds
mass 1/K, normalize columns so each sample holds mass 1/B. The result is
returned per sample (rows of the output sum to 1). With several processes, the
row sums and B are global (through ``core/distributed.py``).

Example:
    >>> codes = sinkhorn_knopp(torch.randn(8, 16), epsilon=0.05, iterations=3)
    >>> torch.allclose(codes.sum(dim=1), torch.ones(8))  # each code is a distribution
    True

:class:`SinkhornKnoppTargets` is the same balancing used as a teacher target
builder (``objective.target: sinkhorn``, DINOv2).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from protossl.core.distributed import all_reduce_logsumexp, all_reduce_sum
from protossl.objectives.registry import register_target_builder
from protossl.objectives.targets import TargetBuilder, check_teacher_temp


@torch.no_grad()
def sinkhorn_knopp(scores: Tensor, epsilon: float = 0.05, iterations: int = 3) -> Tensor:
    """Codes [B, K] from scores [B, K] (SwAV's ``distributed_sinkhorn``).

    Computed in float64 in the log domain, so that ``exp(s / epsilon)`` neither
    overflows nor underflows for epsilon = 0.05 (the official code exponentiates
    directly; the normalizations are the same, so the result agrees up to
    rounding). The initial division by the total mass cancels in the first row
    normalization and is skipped.

    Args:
        scores: [B, K] scores (SwAV: prototype similarities; DINOv2: teacher logits).
        epsilon: Entropic regularization (SwAV: 0.05); smaller is sharper.
        iterations: Alternating normalizations (SwAV: 3).

    Returns:
        [B, K] codes, rows summing to 1, in the dtype of ``scores`` (at least float32).
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must have shape [B, K] (got {tuple(scores.shape)})")
    if not epsilon > 0:
        raise ValueError(f"epsilon must be > 0 (got {epsilon})")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1 (got {iterations})")
    out_dtype = scores.dtype if scores.dtype == torch.float64 else torch.float32
    # Log domain: exp(s / epsilon) over- or underflows for scores far apart
    # (a prototype whose column underflows to 0 would give 0/0).
    log_q = scores.detach().double().t() / epsilon  # [K, B]
    num_prototypes = log_q.shape[0]
    batch = all_reduce_sum(torch.tensor(float(log_q.shape[1]), dtype=torch.float64))
    for _ in range(iterations):
        # Each prototype's mass over the global batch -> 1/K.
        row_mass = all_reduce_logsumexp(torch.logsumexp(log_q, dim=1, keepdim=True))
        log_q = log_q - row_mass - math.log(num_prototypes)
        # Each sample's mass -> 1/B (columns are local to a process).
        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) - torch.log(batch)
    return torch.exp(log_q + torch.log(batch)).t().to(out_dtype)


@register_target_builder("sinkhorn")
class SinkhornKnoppTargets(TargetBuilder):
    """Sinkhorn-Knopp teacher targets, as DINOv2's ``sinkhorn_knopp_teacher``.

    From DINOv2 (Oquab et al., "DINOv2: Learning Robust Visual Features without
    Supervision", 2023), after SwAV (Caron et al. 2020): instead of centering and
    sharpening, the teacher's targets are the Sinkhorn-Knopp codes of
    ``teacher_logits / teacher_temp``, i.e. :func:`sinkhorn_knopp` with
    ``epsilon = teacher_temp``. As in DINOv2, all teacher crops are balanced
    together (the [T, B, K] logits are flattened to [T * B, K] before the
    normalizations, and the batch is global over processes). Keeps no running
    state, so :meth:`update` does nothing.

    Args:
        num_prototypes: Number of prototypes K (size of the last dimension).
        iterations: Alternating normalizations (DINOv2 and SwAV: 3).

    Example:
        >>> builder = SinkhornKnoppTargets(num_prototypes=16, iterations=3)
        >>> probs = builder.targets(torch.randn(2, 4, 16), teacher_temp=0.04)
        >>> probs.shape, bool(torch.allclose(probs.sum(-1), torch.ones(2, 4)))
        (torch.Size([2, 4, 16]), True)
    """

    def __init__(self, num_prototypes: int, iterations: int = 3) -> None:
        super().__init__()
        if num_prototypes < 1:
            raise ValueError(f"num_prototypes must be >= 1 (got {num_prototypes})")
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise ValueError(f"iterations must be an integer >= 1 (got {iterations!r})")
        self.num_prototypes = int(num_prototypes)
        self.iterations = int(iterations)

    @torch.no_grad()
    def targets(self, teacher_logits: Tensor, teacher_temp: float) -> Tensor:
        """Codes with the shape of ``teacher_logits`` ([T, B, K] or [N, K]); rows sum to 1."""
        check_teacher_temp(teacher_temp)
        if teacher_logits.dim() < 2 or teacher_logits.shape[-1] != self.num_prototypes:
            raise ValueError(
                f"teacher_logits must have shape [..., {self.num_prototypes}] "
                f"(got {tuple(teacher_logits.shape)})"
            )
        # One balancing problem over every teacher crop of the batch (DINOv2).
        flat = teacher_logits.reshape(-1, self.num_prototypes)
        codes = sinkhorn_knopp(flat, epsilon=teacher_temp, iterations=self.iterations)
        return codes.view(teacher_logits.shape)

    def extra_repr(self) -> str:
        return f"num_prototypes={self.num_prototypes}, iterations={self.iterations}"
