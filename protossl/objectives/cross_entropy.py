"""Multi-crop cross-entropy between teacher targets and student predictions (DINO).

The teacher target (centering, Sinkhorn-Knopp, ...) is built elsewhere
(:mod:`protossl.objectives.targets`); this module only compares probabilities
with student logits, as in dinov2's split between target building and loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _check_temperature(name: str, value: float) -> None:
    if not value > 0:  # also rejects NaN
        raise ValueError(f"{name} must be > 0 (got {value})")


def multicrop_cross_entropy(
    student_logits: Tensor, teacher_probs: Tensor, student_temp: float = 0.1
) -> Tensor:
    """Mean cross-entropy over all (teacher crop, student crop) pairs of different views.

    From DINO (Caron et al., "Emerging Properties in Self-Supervised Vision
    Transformers", 2021), as in the official ``DINOLoss``: for every teacher
    crop t and every student crop s != t,
    ``mean_b sum_k -q_t[b, k] * log_softmax(l_s[b] / student_temp)[k]``, and the
    result is averaged over the ``T * S - T`` pairs.

    Args:
        student_logits: Raw student logits, shape [S, B, K]; the global crops come
            first, then the local crops.
        teacher_probs: Teacher target probabilities for the T global crops,
            shape [T, B, K] with T <= S; teacher crop t is the same view as
            student crop t, so that pair is skipped.
        student_temp: Student temperature (default 0.1).

    Returns:
        Scalar loss tensor.

    Example:
        >>> student_logits, teacher_probs = torch.randn(6, 4, 16), torch.rand(2, 4, 16)
        >>> teacher_probs = teacher_probs / teacher_probs.sum(-1, keepdim=True)
        >>> loss = multicrop_cross_entropy(student_logits, teacher_probs, student_temp=0.1)
    """
    _check_temperature("student_temp", student_temp)
    if student_logits.dim() != 3 or teacher_probs.dim() != 3:
        raise ValueError(
            "student_logits and teacher_probs must have shape [crops, batch, K] "
            f"(got {tuple(student_logits.shape)} and {tuple(teacher_probs.shape)})"
        )
    num_student, batch, k = student_logits.shape
    num_teacher = teacher_probs.shape[0]
    if teacher_probs.shape[1:] != (batch, k):
        raise ValueError(
            "teacher_probs must match student_logits in batch size and K "
            f"(got {tuple(teacher_probs.shape)} and {tuple(student_logits.shape)})"
        )
    if not 1 <= num_teacher <= num_student:
        raise ValueError(
            f"need 1 <= teacher crops <= student crops (got T={num_teacher}, S={num_student})"
        )
    num_pairs = num_teacher * num_student - num_teacher
    if num_pairs == 0:
        raise ValueError("one teacher crop and one student crop of the same view leave no pairs")
    if batch == 0 or k == 0:
        raise ValueError(f"batch size and K must be >= 1 (got B={batch}, K={k})")

    # Half-precision log-probabilities lose too much for K in the tens of
    # thousands; the products below are elementwise, so autocast leaves them in
    # the dtype chosen here.
    if student_logits.dtype in (torch.float16, torch.bfloat16):
        student_logits = student_logits.float()
    log_probs = F.log_softmax(student_logits / student_temp, dim=-1)  # [S, B, K]

    total = log_probs.new_zeros(())
    for t in range(num_teacher):
        # Cross-entropy of teacher crop t against every student crop: [S].
        per_crop = -(teacher_probs[t].to(log_probs.dtype) * log_probs).sum(-1).mean(-1)
        # Drop the same-view pair (s == t) by subtracting it instead of indexing,
        # which keeps one vectorized reduction per teacher crop.
        total = total + per_crop.sum() - per_crop[t]
    return total / num_pairs


class DINOCrossEntropy(nn.Module):
    """Multi-crop cross-entropy of DINO, on targets built by a :class:`TargetBuilder`.

    From DINO (Caron et al., "Emerging Properties in Self-Supervised Vision
    Transformers", 2021). Unlike lightly's ``DINOLoss`` it holds no center: the
    teacher target comes from a separate, pluggable target builder
    (:class:`protossl.objectives.Centering`, Sinkhorn-Knopp, ...).

    Args:
        student_temp: Student temperature (default 0.1).

    Example:
        >>> loss_fn = DINOCrossEntropy(student_temp=0.1)
        >>> teacher_probs = torch.softmax(torch.randn(2, 4, 16) / 0.04, dim=-1)
        >>> loss = loss_fn(torch.randn(6, 4, 16), teacher_probs)
    """

    def __init__(self, student_temp: float = 0.1) -> None:
        super().__init__()
        _check_temperature("student_temp", student_temp)
        self.student_temp = float(student_temp)

    def forward(self, student_logits: Tensor, teacher_probs: Tensor) -> Tensor:
        """Loss for student logits [S, B, K] and teacher probabilities [T, B, K]."""
        return multicrop_cross_entropy(student_logits, teacher_probs, self.student_temp)

    def extra_repr(self) -> str:
        return f"student_temp={self.student_temp}"
