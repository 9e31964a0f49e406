"""Merge duplicate prototypes into one per group: a compact head.

Prototypes whose directions are chained within eps (the unique-prototype
definition of Govindarajan et al., "On Partial Prototype Collapse in
the DINO Family of Self-Supervised Methods") are replaced by one prototype: the
normalized mean of the group's unit directions. The compact head keeps
``group_of`` so an assignment to original prototype k maps to group
``group_of[k]``; argmax assignments of the compact head agree with the
original's up to that mapping whenever the groups are tight (measure it with
:func:`assignment_agreement`).

Example:
    >>> w = torch.randn(8, 4); w[1] = w[0]
    >>> dedupe_prototypes(w).prototypes.shape
    torch.Size([7, 4])
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from protossl.diagnostics.unique import DEFAULT_EPS, count_unique_prototypes


@dataclass(frozen=True)
class CompactHead:
    """M merged unit prototypes, the group of each original prototype, and group sizes."""

    prototypes: torch.Tensor  # [M, p], unit rows
    group_of: torch.Tensor  # [K] int64 in 0..M-1
    group_sizes: torch.Tensor  # [M] int64
    eps: float

    @property
    def bytes_saved(self) -> int:
        """Bytes of float32 prototype storage removed (K - M rows of p values)."""
        k, p = self.group_of.shape[0], self.prototypes.shape[1]
        return (k - self.prototypes.shape[0]) * p * 4


def dedupe_prototypes(weights: torch.Tensor, eps: float = DEFAULT_EPS) -> CompactHead:
    """One prototype per group of duplicates (exact groups, as counted for M)."""
    result = count_unique_prototypes(weights, eps=eps)
    group_of = torch.as_tensor(result.labels.copy(), dtype=torch.long)
    directions = F.normalize(weights.detach().double(), dim=1)
    num_groups = result.num_unique
    sums = torch.zeros(num_groups, weights.shape[1], dtype=torch.float64)
    sums.index_add_(0, group_of, directions)
    sizes = torch.bincount(group_of, minlength=num_groups)
    return CompactHead(
        prototypes=F.normalize(sums, dim=1).float(),
        group_of=group_of,
        group_sizes=sizes,
        eps=eps,
    )


def assignment_agreement(
    weights: torch.Tensor, head: CompactHead, embeddings: torch.Tensor
) -> float:
    """Fraction of embeddings whose compact argmax is the group of their original argmax."""
    original = (embeddings @ F.normalize(weights.float(), dim=1).T).argmax(dim=1)
    compact = (embeddings @ head.prototypes.T).argmax(dim=1)
    return float((head.group_of[original] == compact).float().mean())


def save_compact_head(heads: dict[str, CompactHead], path: str | Path) -> None:
    """Write compact heads as safetensors: ``NAME.prototypes``, ``NAME.group_of``, ...."""
    from safetensors.torch import save

    from protossl.core.files import atomic_write_bytes

    tensors: dict[str, torch.Tensor] = {}
    for name, head in heads.items():
        tensors[f"{name}.prototypes"] = head.prototypes.contiguous()
        tensors[f"{name}.group_of"] = head.group_of.contiguous()
        tensors[f"{name}.group_sizes"] = head.group_sizes.contiguous()
    data = save(tensors, metadata={"eps": str(next(iter(heads.values())).eps)})
    atomic_write_bytes(Path(path), data)  # never a half-written head
