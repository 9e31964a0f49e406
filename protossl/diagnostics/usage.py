"""Prototype usage: how many prototypes any sample actually picks.

Partial prototype collapse (Govindarajan et al., "On Partial Prototype Collapse in
the DINO Family of Self-Supervised Methods") has a second face besides duplicate
prototypes: most prototypes may never be anyone's argmax, even while all of them
stay distinct. DINO (Caron et al. 2021) counters the uniform and one-hot extremes
with centering and sharpening; these statistics show where a run actually sits:
the empirical assignment histogram, its entropy and perplexity (the effective
number of prototypes in use), and the dead prototypes that no sample chooses.

Example:
    >>> import torch
    >>> stats = prototype_usage(torch.tensor([0, 0, 1, 3]), num_prototypes=5)
    >>> (stats.num_used, stats.num_dead)
    (3, 2)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True, eq=False)
class UsageStats:
    """Histogram statistics of argmax prototype assignments.

    Attributes:
        counts: int64 array [K]; how many samples picked each prototype.
        entropy: entropy of the empirical assignment distribution, in nats
            (log K when usage is uniform, 0 when one prototype takes everything).
        perplexity: exp(entropy), the effective number of prototypes in use.
        num_used: prototypes picked by at least one sample.
        num_dead: prototypes picked by none (K - num_used).
        num_prototypes: K.

    Example:
        >>> prototype_usage(torch.tensor([0, 1]), 2).perplexity
        2.0
    """

    counts: np.ndarray
    entropy: float
    perplexity: float
    num_used: int
    num_dead: int
    num_prototypes: int


def prototype_usage(assignments: torch.Tensor, num_prototypes: int) -> UsageStats:
    """Usage statistics of argmax prototype indices (any shape; flattened).

    Args:
        assignments: integer tensor of prototype indices in [0, num_prototypes),
            e.g. ``logits.argmax(-1)`` of a DINO head over a test set.
        num_prototypes: K; prototypes never chosen count as dead.

    Example:
        >>> s = prototype_usage(torch.tensor([2, 2, 2, 0]), num_prototypes=4)
        >>> s.counts.tolist(), s.num_dead
        ([1, 0, 3, 0], 2)
    """
    if num_prototypes < 1:
        raise ValueError(f"num_prototypes must be >= 1 (got {num_prototypes})")
    dtype = assignments.dtype
    if dtype.is_floating_point or dtype.is_complex or dtype == torch.bool:
        raise ValueError(f"assignments must be integer indices (got dtype {assignments.dtype})")
    flat = assignments.detach().reshape(-1).to("cpu", torch.int64)
    if flat.numel() == 0:
        raise ValueError("assignments is empty; usage needs at least one sample")
    low, high = int(flat.min()), int(flat.max())
    if low < 0 or high >= num_prototypes:
        raise ValueError(
            f"assignments must lie in [0, {num_prototypes}) (got values in [{low}, {high}])"
        )
    counts = torch.bincount(flat, minlength=num_prototypes).numpy()
    return _stats_from_counts(counts)


def usage_from_logits(logits: torch.Tensor) -> UsageStats:
    """Usage statistics of ``logits.argmax(-1)``; K is the size of the last dimension.

    Example:
        >>> usage_from_logits(torch.tensor([[0.1, 2.0, 0.3], [5.0, 0.0, 0.0]])).counts.tolist()
        [1, 1, 0]
    """
    if logits.dim() < 1 or logits.shape[-1] < 1:
        raise ValueError(f"logits must have a non-empty last dimension (got {tuple(logits.shape)})")
    return prototype_usage(logits.detach().argmax(dim=-1), num_prototypes=logits.shape[-1])


def _stats_from_counts(counts: np.ndarray) -> UsageStats:
    counts = counts.astype(np.int64, copy=False)
    counts.flags.writeable = False  # the stats are frozen; so is their array
    probs = counts[counts > 0] / counts.sum()
    # 0 log 0 = 0: dead prototypes contribute nothing, hence the filter above.
    entropy = float(-(probs * np.log(probs)).sum())
    num_used = int((counts > 0).sum())
    return UsageStats(
        counts=counts,
        entropy=entropy,
        perplexity=math.exp(entropy),
        num_used=num_used,
        num_dead=int(counts.size - num_used),
        num_prototypes=int(counts.size),
    )
