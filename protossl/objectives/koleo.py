"""The Kozachenko-Leonenko (KoLeo) entropy estimator, on embeddings or on prototypes.

KoLeo (Sablayrolles et al., "Spreading vectors for similarity search", 2019;
used on embeddings in DINOv2) rewards every vector for being far from its
nearest neighbour. Applied to the prototypes themselves (KoLeo-proto,
Govindarajan et al., "On Partial Prototype Collapse in Clustering-Based
Self-Supervised Learning") it keeps prototypes from collapsing onto each other.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Floor on squared distances before the square root. d sqrt(u)/du is infinite at
# u = 0, and for exactly duplicated rows the chain rule then multiplies 0 * inf
# = NaN. Clamping makes the gradient of such a pair exactly zero while keeping
# 1 / sqrt(floor) far from float32 overflow; real distances between distinct
# unit vectors in float32 are never this small, so the value is unaffected.
_MIN_SQUARED_DISTANCE = 1e-24


def nearest_neighbor_indices(x: Tensor) -> Tensor:
    """Index of the nearest other row for each row of ``x`` (rows assumed unit-norm).

    For unit vectors the nearest neighbour in Euclidean distance is the one with
    the largest inner product; the diagonal is masked so a row never picks itself.
    The choice is discrete, so it is made without gradient.
    """
    with torch.no_grad():
        sims = x @ x.T
        sims.fill_diagonal_(float("-inf"))
        return sims.argmax(dim=1)


def koleo_loss(x: Tensor, eps: float = 1e-8) -> Tensor:
    """KoLeo estimator ``-(1/N) sum_i log(min_{j != i} ||x_i - x_j|| + eps)`` on L2-normalized rows.

    From Sablayrolles et al., "Spreading vectors for similarity search" (2019),
    as used in DINOv2. The nearest neighbour is chosen without gradient, then the
    distance to it is recomputed differentiably. The loss and its gradient stay
    finite when rows are exact duplicates.

    Args:
        x: Vectors as rows, shape [N, d] with N >= 2; normalized here.
        eps: Added to each distance inside the log (default 1e-8).

    Returns:
        Scalar loss tensor (float32 for half-precision input).

    Example:
        >>> x = torch.randn(32, 8, requires_grad=True)
        >>> loss = koleo_loss(x, eps=1e-8)
        >>> loss.backward()
    """
    if x.dim() != 2:
        raise ValueError(f"x must have shape [N, d] (got {tuple(x.shape)})")
    if x.shape[0] < 2:
        raise ValueError(f"KoLeo needs at least 2 rows (got {x.shape[0]})")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0 (got {eps})")
    # Distances of nearly collapsed vectors are tiny; half precision cannot hold them.
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    x = F.normalize(x, p=2, dim=1, eps=1e-12)
    neighbors = nearest_neighbor_indices(x)
    squared = (x - x[neighbors]).pow(2).sum(dim=1)
    distances = squared.clamp(min=_MIN_SQUARED_DISTANCE).sqrt()
    return -torch.log(distances + eps).mean()


def koleo_proto_loss(prototypes: Tensor, eps: float = 1e-8) -> Tensor:
    """KoLeo-proto: the KoLeo estimator on the K prototype vectors.

    From Govindarajan et al., "On Partial Prototype Collapse in Clustering-Based
    Self-Supervised Learning": ``L_KP = -(1/K) sum_i log(min_{j != i}
    ||mu_i - mu_j|| + eps)`` with ``mu_i = w_i / ||w_i||``.

    Args:
        prototypes: Prototype layer weight, shape [K, d] with K >= 2 (one row per
            prototype, as in ``nn.Linear(d, K).weight``).
        eps: Added to each distance inside the log (default 1e-8).

    Example:
        >>> prototypes = torch.randn(64, 16, requires_grad=True)
        >>> loss = koleo_proto_loss(prototypes)
        >>> loss.backward()
    """
    if prototypes.dim() != 2:
        raise ValueError(f"prototypes must have shape [K, d] (got {tuple(prototypes.shape)})")
    return koleo_loss(prototypes, eps=eps)


class KoLeoProto(nn.Module):
    """Weighted KoLeo-proto regularizer, ``weight * L_KP`` on the student prototypes.

    From Govindarajan et al., "On Partial Prototype Collapse in Clustering-Based
    Self-Supervised Learning": spreading the prototypes uniformly on the sphere
    prevents partial prototype collapse. Apply it to the student's prototype
    weights only (the teacher follows by EMA).

    Args:
        weight: Multiplier lambda of the loss, >= 0 (default 0.1).
        eps: Added to each distance inside the log (default 1e-8).

    Example:
        >>> regularizer = KoLeoProto(weight=0.1)
        >>> prototypes = nn.Linear(16, 64, bias=False).weight
        >>> loss = regularizer(prototypes)
    """

    def __init__(self, weight: float = 0.1, eps: float = 1e-8) -> None:
        super().__init__()
        if not weight >= 0:
            raise ValueError(f"weight must be >= 0 (got {weight})")
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0 (got {eps})")
        self.weight = float(weight)
        self.eps = float(eps)

    def forward(self, prototypes: Tensor) -> Tensor:
        """``weight * koleo_proto_loss(prototypes)`` for prototypes of shape [K, d]."""
        return self.weight * koleo_proto_loss(prototypes, eps=self.eps)

    def extra_repr(self) -> str:
        return f"weight={self.weight}, eps={self.eps}"
