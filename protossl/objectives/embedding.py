"""KoLeo on embeddings: DINOv2's spreading term on a batch of student embeddings.

From Oquab et al., "DINOv2: Learning Robust Visual Features without
Supervision" (2023), after Sablayrolles et al. (2019): for each global crop,
``-(1/B) sum_i log(min_{j != i} ||x_i - x_j|| + eps)`` on the L2-normalized
class-token embeddings of the batch, summed over the crops and weighted
(DINOv2: 0.1).

Example:
    >>> reg = KoLeoEmbedding(weight=0.1)
    >>> loss = reg(torch.randn(2, 32, 96))  # [crops, batch, dim]
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from protossl.objectives.koleo import koleo_loss
from protossl.objectives.registry import register_embedding_regularizer


@register_embedding_regularizer("koleo")
class KoLeoEmbedding(nn.Module):
    """``weight * sum_crops KoLeo(embeddings of that crop)``, as DINOv2 applies it.

    Args:
        weight: Multiplier of the summed KoLeo terms (DINOv2's koleo_loss_weight, 0.1).
        eps: Added to each nearest-neighbour distance inside the log (1e-8).
    """

    def __init__(self, weight: float = 0.1, eps: float = 1e-8) -> None:
        super().__init__()
        if not weight >= 0:
            raise ValueError(f"weight must be >= 0 (got {weight})")
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0 (got {eps})")
        self.weight = float(weight)
        self.eps = float(eps)

    def forward(self, embeddings: Tensor) -> Tensor:
        """``embeddings``: [crops, B, d] (or [B, d] for one crop); B >= 2."""
        if embeddings.dim() == 2:
            embeddings = embeddings.unsqueeze(0)
        if embeddings.dim() != 3:
            raise ValueError(f"embeddings must be [crops, B, d] (got {tuple(embeddings.shape)})")
        total = torch.stack([koleo_loss(crop, eps=self.eps) for crop in embeddings]).sum()
        return self.weight * total

    def extra_repr(self) -> str:
        return f"weight={self.weight}, eps={self.eps}"
