"""MSN's targets (sharpened, optionally Sinkhorn-balanced) and its anchor cross-entropy.

From Assran et al., "Masked Siamese Networks for Label-Efficient Learning"
(ECCV 2022), as in the official ``src/losses.py``:

- the target of a view is the EMA target encoder's prototype assignment
  ``p = softmax(s / T_teacher)`` (cosine scores s, T_teacher = 0.1), sharpened
  ``p^(1/T) / sum_k p_k^(1/T)`` (T = 0.25); with ``use_sinkhorn`` the sharpened
  targets then go through Sinkhorn-Knopp (3 iterations) *taken as the initial
  matrix itself* (``distributed_sinkhorn(targets)``: no exponentiation, i.e.
  epsilon = 1 on log-targets). The order is the official one: sharpen first,
  then Sinkhorn (lightly's ``MSNLoss`` does the same);
- every anchor view predicts the target of the (one) target view:
  ``L = mean_{anchor views a, images b} -sum_k q_b,k log softmax(s_a,b / T_student)_k``.

Sharpening is computed in log space: ``log_softmax(log_softmax(s / T_teacher) / T)``
equals the official ``p ** (1 / T)`` renormalized, and cannot underflow to a row
of zeros (0/0) the way ``p ** 4`` of tiny probabilities can in float32.

Example:
    >>> builder = SharpenedTargets(num_prototypes=16, sharpen_temp=0.25, use_sinkhorn=True)
    >>> targets = builder.targets(torch.randn(1, 8, 16), teacher_temp=0.1)  # [views, B, K]
    >>> loss = msn_cross_entropy(torch.randn(3, 8, 16), targets, student_temp=0.1)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from protossl.objectives.registry import register_target_builder
from protossl.objectives.sinkhorn import sinkhorn_knopp
from protossl.objectives.targets import TargetBuilder, check_teacher_temp

__all__ = ["SharpenedTargets", "msn_cross_entropy", "sharpened_targets"]


@torch.no_grad()
def sharpened_targets(
    teacher_logits: Tensor,
    teacher_temp: float,
    sharpen_temp: float = 0.25,
    sinkhorn_iterations: int = 0,
) -> Tensor:
    """MSN targets for logits [N, K]: sharpen ``softmax(l / teacher_temp)``, then Sinkhorn.

    Args:
        teacher_logits: [N, K] teacher scores (MSN: cosine similarities).
        teacher_temp: Softmax temperature of the target (MSN: 0.1, as the anchors).
        sharpen_temp: Sharpening temperature T (MSN: 0.25); 1 leaves p unchanged.
        sinkhorn_iterations: 0 for none, else Sinkhorn-Knopp iterations on the
            sharpened targets (MSN: 3), balanced over the N rows (and processes).

    Returns:
        [N, K] targets whose rows sum to 1, float32 (float64 for float64 input).
    """
    check_teacher_temp(teacher_temp)
    if not sharpen_temp > 0:
        raise ValueError(f"sharpen_temp must be > 0 (got {sharpen_temp})")
    if teacher_logits.dim() != 2:
        raise ValueError(
            f"teacher_logits must have shape [N, K] (got {tuple(teacher_logits.shape)})"
        )
    out_dtype = torch.float64 if teacher_logits.dtype == torch.float64 else torch.float32
    log_p = F.log_softmax(teacher_logits.double() / teacher_temp, dim=-1)
    log_sharp = F.log_softmax(log_p / sharpen_temp, dim=-1)
    if sinkhorn_iterations > 0:
        # The official distributed_sinkhorn(Q) starts from Q = the sharpened targets,
        # which is sinkhorn_knopp on log Q with epsilon = 1 (exp(log Q / 1) = Q).
        return sinkhorn_knopp(log_sharp, epsilon=1.0, iterations=sinkhorn_iterations).to(out_dtype)
    return log_sharp.exp().to(out_dtype)


def msn_cross_entropy(anchor_logits: Tensor, targets: Tensor, student_temp: float = 0.1) -> Tensor:
    """MSN's loss: mean over anchor views and images of ``H(q, softmax(s_anchor / T))``.

    Args:
        anchor_logits: Anchor scores [A, B, K] (A anchor views), not yet divided
            by the temperature.
        targets: Target probabilities [B, K] or [1, B, K], shared by all anchor views
            (MSN: one target view per image).
        student_temp: Anchor temperature (MSN: 0.1).

    Returns:
        Scalar: ``mean_{a, b} -sum_k q[b, k] log softmax(anchor_logits[a, b] / T)_k``.

    Example:
        >>> q = torch.softmax(torch.randn(8, 16) / 0.025, dim=-1)
        >>> loss = msn_cross_entropy(torch.randn(11, 8, 16), q, student_temp=0.1)
    """
    if not student_temp > 0:
        raise ValueError(f"student_temp must be > 0 (got {student_temp})")
    if targets.dim() == 3 and targets.shape[0] == 1:
        targets = targets[0]
    if anchor_logits.dim() != 3 or targets.shape != anchor_logits.shape[1:]:
        raise ValueError(
            "anchor_logits must have shape [A, B, K] and targets [B, K] or [1, B, K] "
            f"(got {tuple(anchor_logits.shape)} and {tuple(targets.shape)})"
        )
    if anchor_logits.shape[0] == 0 or anchor_logits.shape[1] == 0:
        raise ValueError(
            f"need at least one anchor view and image (got {tuple(anchor_logits.shape)})"
        )
    # Log-probabilities in at least float32 (large K under autocast).
    if anchor_logits.dtype in (torch.float16, torch.bfloat16):
        anchor_logits = anchor_logits.float()
    log_probs = F.log_softmax(anchor_logits / student_temp, dim=-1)
    return -(targets.to(log_probs.dtype) * log_probs).sum(-1).mean()


@register_target_builder("sharpen")
class SharpenedTargets(TargetBuilder):
    """MSN's target: ``softmax(l / teacher_temp)`` sharpened by T, optionally Sinkhorn-balanced.

    See the module docstring for the formula and the order (sharpen, then
    Sinkhorn-Knopp on the sharpened targets, as official MSN). All target crops are
    balanced together ([V, B, K] flattened to [V * B, K]; MSN has one target view).
    No running state, so :meth:`update` does nothing.

    Args:
        num_prototypes: K.
        sharpen_temp: T (MSN: 0.25); the MSN method passes ``msn.sharpen_temp``.
        use_sinkhorn: Balance the sharpened targets with Sinkhorn-Knopp (MSN's
            ViT-S config: true); the MSN method passes ``msn.use_sinkhorn``. False
            when the builder is used on its own (e.g. by DINO).
        iterations: Sinkhorn-Knopp iterations (MSN: 3).

    Example:
        >>> builder = SharpenedTargets(num_prototypes=16, sharpen_temp=0.25)
        >>> probs = builder.targets(torch.randn(2, 4, 16), teacher_temp=0.1)
        >>> probs.shape
        torch.Size([2, 4, 16])
    """

    def __init__(
        self,
        num_prototypes: int,
        sharpen_temp: float = 0.25,
        use_sinkhorn: bool = False,
        iterations: int = 3,
    ) -> None:
        super().__init__()
        if isinstance(num_prototypes, bool) or not isinstance(num_prototypes, int):
            raise ValueError(f"num_prototypes must be an integer (got {num_prototypes!r})")
        if num_prototypes < 1:
            raise ValueError(f"num_prototypes must be >= 1 (got {num_prototypes})")
        if isinstance(sharpen_temp, bool) or not isinstance(sharpen_temp, (int, float)):
            raise ValueError(f"sharpen_temp must be a number (got {sharpen_temp!r})")
        if not sharpen_temp > 0:
            raise ValueError(f"sharpen_temp must be > 0 (got {sharpen_temp})")
        if not isinstance(use_sinkhorn, bool):
            raise ValueError(f"use_sinkhorn must be true or false (got {use_sinkhorn!r})")
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise ValueError(f"iterations must be an integer >= 1 (got {iterations!r})")
        self.num_prototypes = int(num_prototypes)
        self.sharpen_temp = float(sharpen_temp)
        self.use_sinkhorn = use_sinkhorn
        self.iterations = int(iterations)

    @torch.no_grad()
    def targets(self, teacher_logits: Tensor, teacher_temp: float) -> Tensor:
        """Targets with the shape of ``teacher_logits`` ([V, B, K] or [N, K]); rows sum to 1."""
        if teacher_logits.dim() < 2 or teacher_logits.shape[-1] != self.num_prototypes:
            raise ValueError(
                f"teacher_logits must have shape [..., {self.num_prototypes}] "
                f"(got {tuple(teacher_logits.shape)})"
            )
        flat = teacher_logits.reshape(-1, self.num_prototypes)
        iterations = self.iterations if self.use_sinkhorn else 0
        out = sharpened_targets(flat, teacher_temp, self.sharpen_temp, iterations)
        return out.view(teacher_logits.shape)

    def extra_repr(self) -> str:
        return (
            f"num_prototypes={self.num_prototypes}, sharpen_temp={self.sharpen_temp}, "
            f"use_sinkhorn={self.use_sinkhorn}, iterations={self.iterations}"
        )
