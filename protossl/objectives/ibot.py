"""iBOT's masked patch-token cross-entropy (masked image modeling with an online tokenizer).

From iBOT (Zhou et al., "iBOT: Image BERT Pre-Training with Online Tokenizer",
ICLR 2022), as in the official ``iBOTLoss``: for each global view, the
student's patch tokens of the *masked* view predict the teacher's patch
distributions of the *same, unmasked* view. Per image, the token
cross-entropies are averaged over the masked patches (an image without masked
patches contributes 0: ``sum / clamp(count, 1)``), then averaged over the
images and over the views:

    L_MIM = 1/V sum_v 1/B sum_b [sum_n m_vbn H(q_vbn, p_vbn)] / max(1, sum_n m_vbn),
    H(q, p) = -sum_k q_k log softmax(l / tau_s)_k.

The teacher targets q (centering, ...) are built by a
:class:`~protossl.objectives.TargetBuilder` with its own running statistics.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MaskedPatchCrossEntropy", "masked_patch_cross_entropy"]


def masked_patch_cross_entropy(
    student_logits: Tensor,
    teacher_probs: Tensor,
    mask: Tensor,
    student_temp: float = 0.1,
) -> Tensor:
    """iBOT's patch loss, averaged over masked patches per image, then images and views.

    Args:
        student_logits: Student patch logits [..., B, N, K] (leading dims: views),
            not yet divided by the temperature.
        teacher_probs: Teacher patch targets with the same shape.
        mask: Bool [..., B, N] or [..., B, rows, cols] (rows * cols = N); True
            marks the patches the student saw masked.
        student_temp: Student temperature (iBOT: 0.1).

    Returns:
        Scalar loss: the mean over views and images of each image's mean
        cross-entropy over its masked patches (0 for an image with none).

    Example:
        >>> logits, probs = torch.randn(2, 4, 16, 32), torch.softmax(torch.randn(2, 4, 16, 32), -1)
        >>> mask = torch.rand(2, 4, 16) < 0.3
        >>> loss = masked_patch_cross_entropy(logits, probs, mask, student_temp=0.1)
    """
    if not student_temp > 0:
        raise ValueError(f"student_temp must be > 0 (got {student_temp})")
    if student_logits.dim() < 3 or student_logits.shape != teacher_probs.shape:
        raise ValueError(
            "student_logits and teacher_probs must have the same shape [..., B, N, K] "
            f"(got {tuple(student_logits.shape)} and {tuple(teacher_probs.shape)})"
        )
    tokens_shape = student_logits.shape[:-1]
    if mask.shape != tokens_shape:
        # A spatial [..., rows, cols] mask: flatten its grid to the N tokens.
        if mask.dim() == len(tokens_shape) + 1 and mask.shape[:-2] == tokens_shape[:-1]:
            mask = mask.flatten(-2)
        if mask.shape != tokens_shape:
            raise ValueError(
                f"mask must have shape {tuple(tokens_shape)} or a [rows, cols] grid of N "
                f"patches (got {tuple(mask.shape)})"
            )
    # Log-probabilities in at least float32 (large K under autocast).
    if student_logits.dtype in (torch.float16, torch.bfloat16):
        student_logits = student_logits.float()
    log_probs = F.log_softmax(student_logits / student_temp, dim=-1)
    token_loss = -(teacher_probs.to(log_probs.dtype) * log_probs).sum(-1)  # [..., B, N]
    weights = mask.to(token_loss.dtype)
    per_image = (token_loss * weights).sum(-1) / weights.sum(-1).clamp(min=1.0)  # [..., B]
    return per_image.mean()


class MaskedPatchCrossEntropy(nn.Module):
    """iBOT's masked image modeling loss on patch tokens (see the module docstring).

    Args:
        student_temp: Student temperature (default 0.1, as iBOT).

    Example:
        >>> loss_fn = MaskedPatchCrossEntropy(student_temp=0.1)
        >>> probs = torch.softmax(torch.randn(2, 4, 16, 32) / 0.04, dim=-1)
        >>> loss = loss_fn(torch.randn(2, 4, 16, 32), probs, torch.rand(2, 4, 4, 4) < 0.3)
    """

    def __init__(self, student_temp: float = 0.1) -> None:
        super().__init__()
        if not student_temp > 0:
            raise ValueError(f"student_temp must be > 0 (got {student_temp})")
        self.student_temp = float(student_temp)

    def forward(self, student_logits: Tensor, teacher_probs: Tensor, mask: Tensor) -> Tensor:
        """Loss for logits and targets [V, B, N, K] and masks [V, B, N] or [V, B, rows, cols]."""
        return masked_patch_cross_entropy(student_logits, teacher_probs, mask, self.student_temp)

    def extra_repr(self) -> str:
        return f"student_temp={self.student_temp}"
