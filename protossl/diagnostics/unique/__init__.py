"""Unique prototypes M: the measure of partial prototype collapse.

Clustering-based self-supervised methods (DINO, Caron et al. 2021, "Emerging
Properties in Self-Supervised Vision Transformers"; iBOT; MSN) are configured with
K prototypes but learn far fewer distinct ones. Following Govindarajan et al.,
"On Partial Prototype Collapse in the DINO Family of Self-Supervised Methods", we
normalize every prototype (mu_k = w_k / ||w_k||), link two prototypes when the
Euclidean distance between their directions is below ``eps`` (``||mu_i - mu_j|| <
eps``, default 0.025), and report the number M of connected components (single
linkage: a chain a-b, b-c is one group even when a and c are far apart). M does not
depend on the order of the prototypes.

Everything here is exact (decisions and nearest-neighbour distances agree with
``||mu_i - mu_j||`` computed directly in float64) and memory-bounded: distances are
computed tile by tile, never as a K x K matrix. Greedy eps-covers (built once, see
``count_unique_prototypes``) make the uniqueness curve, nearest-neighbour distances and
``summarize_prototypes`` (what ``protossl analyze`` prints) fast on collapsed heads;
without collapse the work is one screened pass over pairs (docs/unique_count.md).

Modules: ``api`` (the entry points and their ``method=`` tables), ``brute_force``
(the exact all-pairs reference), ``cover`` and ``leaders`` (the fast greedy-leaders
count), ``nearest`` (nearest-neighbour distances), ``curve`` (M over a grid of eps),
``summary`` (the collapse report), and the helpers ``constants``, ``inputs``,
``result``, ``distances``, ``graph`` and ``threads``.

Example:
    >>> import torch
    >>> w = torch.randn(8, 16)
    >>> w = torch.cat([w, 3.0 * w[:2]])  # two rescaled copies: same directions
    >>> count_unique_prototypes(w).num_unique
    8
"""

from protossl.diagnostics.unique.api import (
    count_unique_prototypes,
    nearest_neighbor_distances,
    summarize_prototypes,
    uniqueness_curve,
)
from protossl.diagnostics.unique.constants import DEFAULT_EPS, DEFAULT_EPS_GRID
from protossl.diagnostics.unique.inputs import normalize_prototypes
from protossl.diagnostics.unique.result import UniqueResult
from protossl.diagnostics.unique.summary import distance_quantiles

__all__ = [
    "DEFAULT_EPS",
    "DEFAULT_EPS_GRID",
    "UniqueResult",
    "count_unique_prototypes",
    "distance_quantiles",
    "nearest_neighbor_distances",
    "normalize_prototypes",
    "summarize_prototypes",
    "uniqueness_curve",
]
