"""Independent reference implementations the tests compare protossl against.

Each is written from the paper's formula, in the plainest vectorised torch (float64
where the formula allows), and shares no code with protossl. Test files import them
the way they import conftest (``tests/`` is on ``sys.path`` under pytest, workers of
pytest-xdist included)::

    from reference import brute_force_m, random_crops, reference_koleo

Contents:

* unique prototype count M (design.md, docs/unique_count.md): :func:`unit_rows`,
  :func:`brute_force_distances`, :func:`brute_force_labels`, :func:`brute_force_m`;
* Sinkhorn-Knopp (SwAV, Caron et al. 2020): :func:`reference_sinkhorn_balance`,
  :func:`reference_sinkhorn`;
* KoLeo (Sablayrolles et al. 2019): :func:`reference_nearest_neighbours`, :func:`reference_koleo`;
* multi-crop inputs (DINO's 2 global + local crops): :func:`random_crops`.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import torch
import torch.nn.functional as F

# ----------------------------------------------------------- unique prototypes M


def unit_rows(weights: torch.Tensor) -> torch.Tensor:
    """Prototype directions mu_i = w_i / max(||w_i||, 1e-12), in float64.

    The documented ``F.normalize`` semantics: zero rows stay zero, tiny rows stay short.
    """
    w = weights.detach().cpu().to(torch.float64)
    return w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)


def brute_force_distances(weights: torch.Tensor) -> torch.Tensor:
    """Full K x K matrix of direct distances ||mu_i - mu_j|| (float64, no Gram trick)."""
    u = unit_rows(weights)
    return (u[:, None, :] - u[None, :, :]).norm(dim=-1)


def brute_force_labels(weights: torch.Tensor, eps: float) -> np.ndarray:
    """Components of the eps-graph (mu_i ~ mu_j iff ||mu_i - mu_j|| < eps), by BFS.

    The definition of M in design.md / docs/unique_count.md: prototypes are L2-normalised
    (:func:`unit_rows`), linked when their Euclidean distance is strictly below eps, and
    chains of links count once (connected components). Components are numbered in
    order of their smallest member: the canonical labels ``count_unique_prototypes``
    documents.
    """
    adj = (brute_force_distances(weights) < eps).numpy()
    k = adj.shape[0]
    labels = np.full(k, -1, dtype=np.int64)
    next_label = 0
    for start in range(k):  # scanning upward makes the numbering canonical
        if labels[start] >= 0:
            continue
        labels[start] = next_label
        queue = deque([start])
        while queue:
            node = queue.popleft()
            for nb in np.flatnonzero(adj[node]):
                if labels[nb] < 0:
                    labels[nb] = next_label
                    queue.append(nb)
        next_label += 1
    return labels


def brute_force_m(weights: torch.Tensor, eps: float) -> int:
    """M: the number of connected components of :func:`brute_force_labels`' eps-graph."""
    labels = brute_force_labels(weights, eps)
    return int(labels.max()) + 1 if labels.size else 0


# -------------------------------------------------------------- Sinkhorn-Knopp


def reference_sinkhorn_balance(q: torch.Tensor, iterations: int) -> torch.Tensor:
    """Sinkhorn-Knopp on a positive [B, K] matrix, SwAV's marginals (float64).

    SwAV (Caron et al. 2020), Algorithm 1 / ``distributed_sinkhorn`` on one process:
    Q = q^T (K x B) scaled to total mass 1, then ``iterations`` times rows to 1/K and
    columns to 1/B; returned per sample (Q * B)^T, so every row sums to 1.
    """
    q = q.double().t()
    k, b = q.shape
    q = q / q.sum()
    for _ in range(iterations):
        q = q / q.sum(dim=1, keepdim=True) / k
        q = q / q.sum(dim=0, keepdim=True) / b
    return (q * b).t()


def reference_sinkhorn(scores: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """SwAV's codes from [B, K] scores: :func:`reference_sinkhorn_balance` of exp(s / epsilon).

    Written from SwAV's Algorithm (Caron et al. 2020), in float64, with no max-shift.
    """
    return reference_sinkhorn_balance(torch.exp(scores.double() / epsilon), iterations)


# ------------------------------------------------------------------------ KoLeo


def reference_nearest_neighbours(rows: torch.Tensor) -> torch.Tensor:
    """Index of each row's nearest other row: argmax_{j != i} <x_i, x_j>, lowest on ties.

    The rows are used as given (pass unit rows for the Euclidean nearest neighbour).
    """
    sims = rows @ rows.T
    sims.fill_diagonal_(float("-inf"))
    return sims.argmax(dim=1)


def reference_koleo(
    x: torch.Tensor, eps: float = 1e-8, neighbours: torch.Tensor | None = None
) -> torch.Tensor:
    """KoLeo (Sablayrolles et al. 2019, "Spreading vectors for similarity search").

    L = -(1/n) sum_i log(||u_i - u_{nn(i)}|| + eps), u = x / max(||x||, 1e-12), nn(i)
    the nearest other row (:func:`reference_nearest_neighbours` of the detached u) unless
    ``neighbours`` is given. Differentiable (autograd through the chosen pairs), in
    x's dtype; the distance is sqrt(max(d^2, 1e-24)) so exact duplicates stay finite.
    """
    unit = F.normalize(x, dim=1, eps=1e-12)
    if neighbours is None:
        neighbours = reference_nearest_neighbours(unit.detach())
    squared = (unit - unit[neighbours]).pow(2).sum(dim=1)
    return -torch.log(squared.clamp(min=1e-24).sqrt() + eps).mean()


# ------------------------------------------------------------------- multi-crop


def random_crops(
    batch: int = 6,
    num_local: int = 2,
    seed: int = 1,
    global_size: int = 16,
    local_size: int = 8,
) -> list[torch.Tensor]:
    """DINO-style multi-crop input (Caron et al. 2021): 2 global crops, then ``num_local``.

    Standard-normal [batch, 3, size, size] float32 images, drawn in that order from one
    generator seeded with ``seed``.
    """
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, global_size, global_size, generator=gen) for _ in range(2)] + [
        torch.randn(batch, 3, local_size, local_size, generator=gen) for _ in range(num_local)
    ]
