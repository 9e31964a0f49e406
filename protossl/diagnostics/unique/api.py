"""The public entry points: check the arguments, pick the algorithm by name, run it.

Every ``method=`` string each function accepts is listed once, in the tables below;
an unknown name is a ValueError naming the choices.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import numpy as np
import torch

from protossl.diagnostics.unique.brute_force import brute_curve, brute_labels, brute_nearest
from protossl.diagnostics.unique.constants import DEFAULT_EPS, DEFAULT_EPS_GRID
from protossl.diagnostics.unique.curve import fast_curve
from protossl.diagnostics.unique.inputs import check_eps, check_eps_values, unit_directions
from protossl.diagnostics.unique.leaders import auto_labels, leader_labels
from protossl.diagnostics.unique.nearest import fast_nearest
from protossl.diagnostics.unique.result import UniqueResult, make_result
from protossl.diagnostics.unique.summary import (
    Clock,
    Measures,
    brute_measures,
    collapse_report,
    fast_measures,
)

# method name -> implementation, per entry point; the order is the error message's.
_COUNT: dict[str, Callable[[torch.Tensor, float, int], np.ndarray]] = {
    "auto": auto_labels,
    "leaders": leader_labels,
    "brute": brute_labels,
}
_CURVE: dict[str, Callable[[torch.Tensor, np.ndarray, int], list[tuple[float, int]]]] = {
    "auto": fast_curve,
    "brute": brute_curve,
}
_NEAREST: dict[str, Callable[[torch.Tensor, int], torch.Tensor]] = {
    "auto": fast_nearest,
    "brute": brute_nearest,
}
_SUMMARY: dict[str, Callable[[torch.Tensor, float, np.ndarray, int, Clock], Measures]] = {
    "auto": fast_measures,
    "brute": brute_measures,
}

_Impl = TypeVar("_Impl")


def _choose(table: Mapping[str, _Impl], method: str) -> _Impl:
    """The implementation registered under ``method``; ValueError listing the choices."""
    # isinstance first: an unhashable method must be a ValueError too, not a TypeError.
    if not isinstance(method, str) or method not in table:
        raise ValueError(f"method must be one of {', '.join(table)} (got {method!r})")
    return table[method]


def count_unique_prototypes(
    weights: torch.Tensor, eps: float = DEFAULT_EPS, block_size: int = 2048, method: str = "auto"
) -> UniqueResult:
    """Count unique prototypes M (Govindarajan et al.): components of the eps-graph.

    Prototypes i and j are linked when ``||mu_i - mu_j|| < eps`` (strictly), with
    ``mu = w / ||w||``; M is the number of connected components (single linkage).
    Every link decision is exact: it agrees with the direct float64 distance.

    Two algorithms give identical results (M and canonical labels):

    - ``"brute"``: every pair, in float64 ``block_size`` x ``block_size`` tiles
      (K^2 p work, memory O(K + block_size^2)).
    - ``"leaders"``: greedy eps-covers, then exact member checks only between covers
      whose leaders are closer than 3 eps (see the ``cover`` and ``leaders`` modules).
      For collapsed heads (M << K) the work is about K L p (L leaders, L ~ M). Without
      collapse every row is a leader and the work is a K^2 / 2 float32 screen, on
      34-column principal projections when p >= 128 (a lower bound of the distances,
      so it only rules pairs out), then on full rows for the few it keeps. Memory
      O(K p + block_size^2).
    - ``"auto"`` (default): leaders for K >= 2048 and eps <= 0.3, the brute force
      otherwise (and when the leader graph turns out too dense to pay off).

    Args:
        weights: prototype matrix [K, p] (e.g. DINO's ``last_layer.weight``).
        eps: linking distance between unit directions (> 0).
        block_size: tile edge length (and the leaders' chunk length); smaller uses
            less memory, same result.
        method: ``"auto"``, ``"leaders"`` or ``"brute"``.

    Example:
        >>> w = torch.randn(100, 32)
        >>> count_unique_prototypes(torch.cat([w, w])).num_unique
        100
    """
    check_eps(eps)
    labels_at = _choose(_COUNT, method)
    units = unit_directions(weights, block_size)
    return make_result(labels_at(units, eps, block_size), eps)


def uniqueness_curve(
    weights: torch.Tensor,
    eps_values: Sequence[float] = DEFAULT_EPS_GRID,
    block_size: int = 2048,
    method: str = "auto",
) -> list[tuple[float, int]]:
    """M for each eps, ascending: the uniqueness curve (Govindarajan et al.).

    ``"auto"`` (default): exact nearest-neighbour distances first
    (:func:`nearest_neighbor_distances`); a prototype whose nearest neighbour is at
    least eps away is a singleton at eps, so M(eps) = #{nn >= eps} + the components of
    the rows with nn < eps, counted exactly by greedy leaders (the brute force where
    their leader graph is dense, see ``count_unique_prototypes``). Random heads cost one
    nearest-neighbour pass; collapsed heads one leader count per eps. The cost grows
    with eps only through the rows closer than eps to another: at an eps beyond most
    nearest-neighbour distances of a contracted head it can reach the brute force's
    K'^2 p (K' those rows). ``"brute"``: one float64 pass over all pairs at the largest
    eps; single linkage is Kruskal's algorithm stopped at eps, so M(eps) = K - #{minimum
    spanning forest edges shorter than eps}. Both are exact and agree.

    Example:
        >>> w = torch.randn(50, 8)
        >>> [m for _, m in uniqueness_curve(torch.cat([w, w]), [0.01, 0.1])]
        [50, 50]
    """
    eps_sorted = check_eps_values(eps_values)
    curve_at = _choose(_CURVE, method)
    units = unit_directions(weights, block_size)
    return curve_at(units, eps_sorted, block_size)


def nearest_neighbor_distances(
    weights: torch.Tensor, block_size: int = 2048, method: str = "auto"
) -> torch.Tensor:
    """Distance from each normalized prototype to its nearest other one (float64, CPU, [K]).

    The quantity KoLeo-proto pushes up; its quantiles show contraction before
    duplicates appear. ``"auto"`` (default) is exact: the distance is the direct
    float64 ``||mu_i - mu_j||`` minimized over candidates that a float32 screen with a
    rounding margin cannot have missed. Rows with a duplicate-like neighbour (greedy
    covers at eps = 0.025) are searched only among nearby covers; the others in one
    screened pass over pairs (K^2 / 2 float32 dot products). ``"brute"``: float64
    tiles over all pairs, the argmin re-measured directly (accurate to ~1e-7: a near
    tie can pick the slightly farther neighbour). K = 1 gives ``[inf]``.

    Example:
        >>> nearest_neighbor_distances(torch.eye(2))
        tensor([1.4142, 1.4142], dtype=torch.float64)
    """
    nearest = _choose(_NEAREST, method)
    units = unit_directions(weights, block_size)
    return nearest(units, block_size)


def summarize_prototypes(
    weights: torch.Tensor,
    eps: float = DEFAULT_EPS,
    eps_grid: Sequence[float] = DEFAULT_EPS_GRID,
    top_groups: int = 10,
    block_size: int = 2048,
    method: str = "auto",
    timings: dict[str, float] | None = None,
) -> dict:
    """A JSON-ready collapse report for one prototype matrix (Govindarajan et al.).

    Keys: ``K``, ``M``, ``M_over_K``, ``eps``, ``uniqueness_curve`` ([[eps, M], ...]),
    ``largest_groups`` (the ``top_groups`` largest component sizes),
    ``nn_distance_quantiles`` (empty for K = 1) and ``norm_quantiles`` of the raw row
    norms (for vMF heads the norm is kappa * tau; for DINO's weight-normalized layer it is 1).

    ``"auto"`` (default) builds greedy covers at eps once and shares them: M and the
    groups from them (``count_unique_prototypes``), the exact nearest-neighbour
    distances (``nearest_neighbor_distances``), then the curve from those distances
    (``uniqueness_curve``). ``"brute"``: one float64 pass over all pairs serves all
    three (K^2 p work). Both are exact. ``timings``, if given, receives the seconds
    spent per part (``units``, ``M``, ``nearest``, ``curve``, ``norms``).

    Example:
        >>> s = summarize_prototypes(torch.randn(64, 16))
        >>> (s["K"], s["M"], s["largest_groups"][:2])
        (64, 64, [1, 1])
    """
    if top_groups < 0:
        raise ValueError(f"top_groups must be >= 0 (got {top_groups})")
    check_eps(eps)
    measure = _choose(_SUMMARY, method)
    eps_sorted = check_eps_values(eps_grid)
    clock = Clock(timings)
    units = unit_directions(weights, block_size)
    clock.lap("units")
    measures = measure(units, eps, eps_sorted, block_size, clock)
    norms = torch.linalg.vector_norm(weights.detach().to("cpu", torch.float64), dim=1)
    summary = collapse_report(measures, norms, eps, top_groups)
    clock.lap("norms")
    return summary
