"""The naive "sum of pairwise distances" prototype regularizer, for comparison.

Proposed by the reviewers of Govindarajan et al. as an alternative to
KoLeo-proto: maximize the mean squared distance between the normalized
prototypes, ``L = -(1/K^2) sum_{i,j} ||mu_i - mu_j||^2``. Because
``sum_{i,j} ||mu_i - mu_j||^2 = 2 K^2 - 2 ||sum_i mu_i||^2`` for unit vectors,
``L = 2 ||mean_i mu_i||^2 - 2``: it only pushes the *mean* prototype to the
origin, which any antipodal arrangement achieves, so it cannot keep
prototypes from collapsing onto a few directions (two groups of K/2 identical
prototypes pointing in opposite directions attain its minimum). protossl offers
it so that users can see this.

Example:
    >>> import torch
    >>> reg = PairwiseDistanceRegularizer(weight=0.1)
    >>> loss = reg(torch.randn(64, 16, requires_grad=True))
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from protossl.objectives.registry import register_prototype_regularizer


def pairwise_distance_loss(prototypes: Tensor) -> Tensor:
    """``-(1/K^2) sum_{i,j} ||mu_i - mu_j||^2`` in O(K d) via ``2 ||mean mu||^2 - 2``."""
    if prototypes.dim() != 2 or prototypes.shape[0] < 2:
        raise ValueError(f"prototypes must have shape [K >= 2, d] (got {tuple(prototypes.shape)})")
    unit = F.normalize(prototypes.float(), p=2, dim=1, eps=1e-12)
    mean = unit.mean(dim=0)
    return 2.0 * mean.pow(2).sum() - 2.0


@register_prototype_regularizer("pairwise")
class PairwiseDistanceRegularizer(nn.Module):
    """``weight * pairwise_distance_loss(prototypes)`` (see the module docstring).

    Args:
        weight: Multiplier lambda (default 0.1, as KoLeo-proto, for a like-for-like
            comparison).
    """

    def __init__(self, weight: float = 0.1) -> None:
        super().__init__()
        if not weight >= 0:
            raise ValueError(f"weight must be >= 0 (got {weight})")
        self.weight = float(weight)

    def forward(self, prototypes: Tensor) -> Tensor:
        return self.weight * pairwise_distance_loss(prototypes)

    def extra_repr(self) -> str:
        return f"weight={self.weight}"
