"""``UniqueResult``: the grouping of K prototypes into M unique ones, canonically labelled."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class UniqueResult:
    """Connected components of the eps-linkage graph of normalized prototypes.

    Attributes:
        num_prototypes: K, the number of prototypes.
        num_unique: M, the number of connected components (unique prototypes).
        labels: int64 array [K]; component id of each prototype. Canonical:
            components are numbered 0..M-1 in order of their smallest member index,
            so two algorithms that find the same grouping give identical labels.
        group_sizes: component sizes, largest first (sums to K).
        eps: the linking distance used.

    Example:
        >>> import torch
        >>> from protossl.diagnostics.unique import count_unique_prototypes
        >>> r = count_unique_prototypes(torch.eye(3))
        >>> (r.num_unique, r.labels.tolist(), r.fraction)
        (3, [0, 1, 2], 1.0)
    """

    num_prototypes: int
    num_unique: int
    labels: np.ndarray
    group_sizes: list[int]
    eps: float

    @property
    def fraction(self) -> float:
        """M / K: the fraction of prototypes that are unique (1.0 = no collapse)."""
        return self.num_unique / self.num_prototypes


def canonical_labels(roots: np.ndarray) -> np.ndarray:
    """Renumber components 0..M-1 in order of their smallest member index."""
    _, first, inverse = np.unique(roots, return_index=True, return_inverse=True)
    relabel = np.empty(first.size, dtype=np.int64)
    relabel[np.argsort(first)] = np.arange(first.size)
    return relabel[inverse.reshape(-1)]


def make_result(labels: np.ndarray, eps: float) -> UniqueResult:
    """Freeze canonical ``labels`` into a ``UniqueResult`` with its group sizes."""
    labels = labels.astype(np.int64, copy=False)
    labels.flags.writeable = False  # the result is frozen; so is its array
    sizes = np.bincount(labels)
    return UniqueResult(
        num_prototypes=int(labels.size),
        num_unique=int(sizes.size),
        labels=labels,
        group_sizes=sorted(sizes.tolist(), reverse=True),
        eps=float(eps),
    )
