"""Diagnostics of partial prototype collapse.

Unique prototypes M (Govindarajan et al., "On Partial Prototype Collapse in
the DINO Family of Self-Supervised Methods"), the uniqueness curve over eps,
nearest-neighbour distances, and prototype usage of DINO-family heads (Caron et
al. 2021). Diagnostics never import training code, so any checkpoint can be
analyzed.

Example:
    >>> import torch
    >>> from protossl.diagnostics import count_unique_prototypes
    >>> count_unique_prototypes(torch.randn(64, 16)).num_unique
    64
"""

from protossl.diagnostics.unique import (
    DEFAULT_EPS,
    DEFAULT_EPS_GRID,
    UniqueResult,
    count_unique_prototypes,
    distance_quantiles,
    nearest_neighbor_distances,
    normalize_prototypes,
    summarize_prototypes,
    uniqueness_curve,
)
from protossl.diagnostics.usage import UsageStats, prototype_usage, usage_from_logits

__all__ = [
    "DEFAULT_EPS",
    "DEFAULT_EPS_GRID",
    "UniqueResult",
    "UsageStats",
    "count_unique_prototypes",
    "distance_quantiles",
    "nearest_neighbor_distances",
    "normalize_prototypes",
    "prototype_usage",
    "summarize_prototypes",
    "uniqueness_curve",
    "usage_from_logits",
]
