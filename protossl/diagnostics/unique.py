"""Unique prototypes M: the measure of partial prototype collapse.

Clustering-based self-supervised methods (DINO, Caron et al. 2021, "Emerging
Properties in Self-Supervised Vision Transformers"; iBOT; MSN) are configured with
K prototypes but learn far fewer distinct ones. Following Govindarajan et al.,
"On Partial Prototype Collapse in the DINO Family of Self-Supervised Methods", we
normalize every prototype, link two prototypes when the Euclidean distance between
their directions is below ``eps`` (default 0.025), and report the number M of
connected components (single linkage: a chain a-b, b-c is one group even when a and
c are far apart). M does not depend on the order of the prototypes.

Everything here is exact (decisions and nearest-neighbour distances agree with
``||mu_i - mu_j||`` computed directly in float64) and memory-bounded: distances are
computed tile by tile, never as a K x K matrix. Greedy eps-covers (built once, see
``count_unique_prototypes``) make the uniqueness curve, nearest-neighbour distances and
``summarize_prototypes`` (what ``protossl analyze`` prints) fast on collapsed heads;
without collapse the work is one screened pass over pairs (docs/unique_count.md).

Example:
    >>> import torch
    >>> w = torch.randn(8, 16)
    >>> w = torch.cat([w, 3.0 * w[:2]])  # two rescaled copies: same directions
    >>> count_unique_prototypes(w).num_unique
    8
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components, minimum_spanning_tree

DEFAULT_EPS: float = 0.025
"""Linking distance between unit prototype directions (Govindarajan et al.)."""

DEFAULT_EPS_GRID: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5)
"""Roughly logarithmic grid of eps values for the uniqueness curve.

Every value is exact. Large ones cost nothing where no prototype has a neighbour that
close (random heads) or the covers are few (well-separated collapsed groups); see
``uniqueness_curve`` for the cost on contracted heads.
"""

# The Gram-matrix form ||a - b||^2 = 2 - 2<a, b> differs from the direct ||a - b||^2 by
# about p * 1e-16 in float64. Pairs whose squared distance lies within this band of a
# threshold are re-measured directly, so no decision depends on matmul rounding.
_REFINE_BAND = 1e-10
# Pairs re-measured at once (each costs a p-vector difference).
_REFINE_CHUNK = 1 << 16
# The uniqueness curve keeps a minimum spanning forest of the edges seen so far and
# re-compacts it once this many (or 4 K) edges are buffered, bounding memory.
_COMPACT_MIN_EDGES = 1 << 22
# Rows normalized at once by _unit_directions (bounds its temporaries).
_NORMALIZE_ROWS = 1 << 13

# count_unique_prototypes(method=...): "auto" uses greedy leaders from this K on and up
# to this eps (beyond, 3 eps approaches the typical distance and nearly every pair of
# leaders would need checking).
_METHODS = ("auto", "leaders", "brute")
_CURVE_METHODS = ("auto", "brute")
_AUTO_MIN_K = 2048
_AUTO_MAX_EPS = 0.3
# Rows whose float64 squared norm is within this of 1 are screened as unit vectors;
# the others (zero rows, rows of norm < 1e-12 that F.normalize cannot scale) are
# compared with every row exactly, by the brute force's own rule.
_REGULAR_TOL = 1e-9
# Pairs whose direct distance is computed at once (each gathers two p-vectors).
_PAIR_CHUNK = 1 << 14
# Member pairs checked per batch when linking covers.
_PAIR_BUDGET = 1 << 20
# "auto" hands over to the brute force beyond this many candidate leader pairs (or
# 4 K), or when the member pairs to check exceed K^2 / (2 * this divisor): a direct
# distance costs far more than one entry of a matmul tile.
_DENSE_LEADER_PAIRS = 1 << 23
_DENSE_WORK_DIVISOR = 64
# Leaders' two-level screen: for p >= this, first compare projections onto the top
# principal directions (at most this many, and p / 4), estimated from a sample of rows.
_PROJECT_MIN_P = 128
_PROJECT_MIN_ROWS = 4096
_PROJECT_DIMS = 32
_PROJECT_SAMPLE = 1 << 14


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


def normalize_prototypes(weights: torch.Tensor) -> torch.Tensor:
    """Scale every prototype (row) to unit L2 norm, as DINO's normalized last layer does.

    The result is at least float32 (float64 stays float64). Zero rows stay zero
    (``F.normalize`` semantics) rather than becoming NaN.

    Example:
        >>> normalize_prototypes(torch.tensor([[3.0, 4.0], [0.0, 0.0]]))
        tensor([[0.6000, 0.8000],
                [0.0000, 0.0000]])
    """
    _check_weights(weights)
    dtype = torch.promote_types(weights.dtype, torch.float32)
    return F.normalize(weights.detach().to(dtype), dim=1)


def count_unique_prototypes(
    weights: torch.Tensor,
    eps: float = DEFAULT_EPS,
    block_size: int = 2048,
    method: str = "auto",
) -> UniqueResult:
    """Count unique prototypes M (Govindarajan et al.): components of the eps-graph.

    Prototypes i and j are linked when ``||mu_i - mu_j|| < eps`` (strictly), with
    ``mu = w / ||w||``; M is the number of connected components (single linkage).
    Every link decision is exact: it agrees with the direct float64 distance.

    Two algorithms give identical results (M and canonical labels):

    - ``"brute"``: every pair, in float64 ``block_size`` x ``block_size`` tiles
      (K^2 p work, memory O(K + block_size^2)).
    - ``"leaders"``: greedy eps-covers, then exact member checks only between covers
      whose leaders are closer than 3 eps (see ``_leader_components``). For collapsed
      heads (M << K) the work is about K L p (L leaders, L ~ M). Without collapse
      every row is a leader and the work is a K^2 / 2 float32 screen, on 34-column
      principal projections when p >= 128 (a lower bound of the distances, so it
      only rules pairs out), then on full rows for the few it keeps. Memory
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
    _check_eps(eps)
    _check_method(method, _METHODS)
    units = _unit_directions(weights, block_size)
    return _make_result(_components(units, eps, block_size, method), eps)


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
    eps_sorted = _check_eps_values(eps_values)
    _check_method(method, _CURVE_METHODS)
    units = _unit_directions(weights, block_size)
    if method == "brute":
        return _scan(units, block_size, curve_eps=eps_sorted).curve()
    with _one_thread():  # covers: many small tiles (see _one_thread)
        prepared = _prepare(units, DEFAULT_EPS, block_size, give_up=True)
    nearest, known = _nearest_and_short_curve(units, block_size, prepared, eps_sorted)
    longer = eps_sorted[eps_sorted > prepared.eps]
    with _one_thread():
        known.update(_long_curve(units, prepared, nearest, longer, block_size))
    del prepared  # the screening copy and projections are no longer needed
    return _curve_from_nearest(units, eps_sorted, nearest, block_size, known)


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
    _check_method(method, _CURVE_METHODS)
    units = _unit_directions(weights, block_size)
    if method == "brute":
        return _scan(units, block_size, nearest=True).nearest_distances()
    with _one_thread():  # covers: many small tiles (see _one_thread)
        prepared = _prepare(units, DEFAULT_EPS, block_size, give_up=True)
    nearest, _ = _nearest_and_short_curve(units, block_size, prepared, np.zeros(0))
    return torch.from_numpy(nearest)


def distance_quantiles(
    values: torch.Tensor, quantiles: Sequence[float] = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
) -> dict[str, float]:
    """Quantiles of ``values`` keyed by percent: ``{"q0": min, "q50": median, ...}``.

    Example:
        >>> distance_quantiles(torch.arange(5.0), (0.0, 0.5, 1.0))
        {'q0': 0.0, 'q50': 2.0, 'q100': 4.0}
    """
    arr = values.detach().to("cpu", torch.float64).reshape(-1).numpy()
    if arr.size == 0:
        raise ValueError("distance_quantiles needs at least one value (got an empty tensor)")
    if np.isnan(arr).any():
        raise ValueError("distance_quantiles got NaN values")
    for q in quantiles:
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantiles must lie in [0, 1] (got {q})")
    return {f"q{100.0 * q:g}": float(np.quantile(arr, q)) for q in quantiles}


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
    _check_eps(eps)
    _check_method(method, _CURVE_METHODS)
    eps_sorted = _check_eps_values(eps_grid)
    clock = _Clock(timings)
    units = _unit_directions(weights, block_size)
    clock.lap("units")
    if method == "brute":
        # One pass serves all three measures: the distance tiles dominate the cost.
        scan = _scan(units, block_size, eps, eps_sorted, nearest=True)
        result = scan.unique_result()
        curve = scan.curve()
        nn = scan.nearest_distances()
        clock.lap("M")
    else:
        with _one_thread():  # covers: many small tiles (see _one_thread)
            prepared = _prepare(units, eps, block_size, give_up=True)
            comp = _components(units, eps, block_size, "auto", prepared)
        result = _make_result(comp, eps)
        clock.lap("M")
        nearest, known = _nearest_and_short_curve(units, block_size, prepared, eps_sorted)
        nn = torch.from_numpy(nearest)
        clock.lap("nearest")
        known[float(eps)] = result.num_unique
        longer = eps_sorted[eps_sorted > eps]
        with _one_thread():
            known.update(_long_curve(units, prepared, nearest, longer, block_size))
        del prepared  # the screening copy and projections are no longer needed
        curve = _curve_from_nearest(units, eps_sorted, nearest, block_size, known)
        clock.lap("curve")
    norms = torch.linalg.vector_norm(weights.detach().to("cpu", torch.float64), dim=1)
    summary = {
        "K": result.num_prototypes,
        "M": result.num_unique,
        "M_over_K": result.fraction,
        "eps": float(eps),
        "uniqueness_curve": [[e, m] for e, m in curve],
        "largest_groups": result.group_sizes[:top_groups],
        "nn_distance_quantiles": distance_quantiles(nn) if nn.numel() > 1 else {},
        "norm_quantiles": distance_quantiles(norms),
    }
    clock.lap("norms")
    return summary


class _Clock:
    """Seconds per named part into an optional dict (summarize_prototypes' timings)."""

    def __init__(self, out: dict[str, float] | None) -> None:
        self.out = out
        self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        if self.out is not None:
            self.out[name] = self.out.get(name, 0.0) + now - self.last
        self.last = now


# --- validation ------------------------------------------------------------------------


def _check_weights(weights: torch.Tensor) -> None:
    if not isinstance(weights, torch.Tensor):
        raise ValueError(f"weights must be a torch.Tensor (got {type(weights).__name__})")
    if weights.dim() != 2:
        raise ValueError(f"weights must be 2-D [K, p] (got shape {tuple(weights.shape)})")
    if weights.shape[0] < 1 or weights.shape[1] < 1:
        shape = tuple(weights.shape)
        raise ValueError(f"weights needs K >= 1 prototypes of dim p >= 1 (got shape {shape})")
    if weights.is_complex():
        raise ValueError("weights must be real")


def _check_eps(eps: float) -> None:
    if not (eps > 0 and math.isfinite(eps)):
        raise ValueError(f"eps must be a finite number > 0 (got {eps})")


def _check_method(method: str, allowed: tuple[str, ...]) -> None:
    if method not in allowed:
        raise ValueError(f"method must be one of {', '.join(allowed)} (got {method!r})")


def _check_eps_values(eps_values: Sequence[float]) -> np.ndarray:
    if len(eps_values) == 0:
        raise ValueError("eps_values must not be empty")
    for eps in eps_values:
        _check_eps(eps)
    return np.array(sorted({float(e) for e in eps_values}), dtype=np.float64)


def _unit_directions(weights: torch.Tensor, block_size: int) -> torch.Tensor:
    """Validated float64 unit directions, on the input's device (CPU for MPS: no float64).

    Normalized ``_NORMALIZE_ROWS`` rows at a time, so the only full-size allocation is
    the result (row by row, the values are bitwise those of one ``F.normalize`` call).
    """
    _check_weights(weights)
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1 (got {block_size})")
    w = weights.detach()
    if w.device.type == "mps":
        w = w.cpu()
    out = torch.empty(w.shape, dtype=torch.float64, device=w.device)
    for s in range(0, w.shape[0], _NORMALIZE_ROWS):
        chunk = w[s : s + _NORMALIZE_ROWS].to(torch.float64)
        # A diverged checkpoint must not be reported as "no collapse" (NaN compares False).
        if not torch.isfinite(chunk).all():
            raise ValueError("weights contain NaN or inf; the checkpoint is probably diverged")
        out[s : s + _NORMALIZE_ROWS] = F.normalize(chunk, dim=1)
    return out


# --- blocked distances -----------------------------------------------------------------

Tile = tuple[int, int, int, int]


def _upper_tiles(k: int, block: int) -> Iterator[Tile]:
    """Tiles (r0, r1, c0, c1) covering every pair i < j once (c0 >= r0)."""
    starts = range(0, k, block)
    for r0 in starts:
        for c0 in starts:
            if c0 >= r0:
                yield r0, min(r0 + block, k), c0, min(c0 + block, k)


def _tile_sq_distances(units: torch.Tensor, tile: Tile) -> torch.Tensor:
    """Squared distances of one tile via the Gram matrix (clamped: rounding can go < 0).

    Uses the actual squared norms rather than 1, so zero rows (left at zero by
    ``F.normalize``) get their true distances: 0 to each other, 1 to any direction.
    """
    r0, r1, c0, c1 = tile
    a, b = units[r0:r1], units[c0:c1]
    sq_a, sq_b = (a * a).sum(dim=1), (b * b).sum(dim=1)
    return (sq_a[:, None] + sq_b[None, :] - 2.0 * (a @ b.T)).clamp_min_(0.0)


def _tile_edges(
    units: torch.Tensor, tile: Tile, d2: torch.Tensor, thresholds: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs i < j of a tile closer than ``thresholds.max()``, with their distances.

    Distances within ``_REFINE_BAND`` of any threshold (in squared units) are
    re-measured directly, so every ``d < t`` decision matches the direct formula.
    """
    r0, _, c0, _ = tile
    limit = float(thresholds.max())
    cand = d2 < limit * limit + _REFINE_BAND
    if r0 == c0:
        cand.triu_(diagonal=1)  # diagonal tile: each pair once, no self-pairs
    ii, jj = cand.nonzero(as_tuple=True)
    dist2 = d2[ii, jj]
    ii, jj = ii + r0, jj + c0
    dist = dist2.sqrt()
    near = torch.zeros_like(dist2, dtype=torch.bool)
    for t in thresholds.tolist():
        near |= (dist2 - t * t).abs() < _REFINE_BAND
    idx = near.nonzero(as_tuple=True)[0]
    for s in range(0, idx.numel(), _REFINE_CHUNK):
        sel = idx[s : s + _REFINE_CHUNK]
        dist[sel] = torch.linalg.vector_norm(units[ii[sel]] - units[jj[sel]], dim=1)
    keep = dist < limit
    return _numpy(ii[keep]), _numpy(jj[keep]), dist[keep].cpu().numpy()


def _numpy(index: torch.Tensor) -> np.ndarray:
    return index.to("cpu", torch.int64).numpy()


# --- union-find and spanning forest ----------------------------------------------------


class _DisjointSet:
    """Union-find over 0..n-1 (numpy): path compression and union by rank, vectorized.

    A batch of edges is first reduced to edges between distinct current roots; the
    components of that small root graph are then each folded into their highest-rank
    root in one step, so Python never loops over edges.
    """

    def __init__(self, n: int) -> None:
        self.parent = np.arange(n, dtype=np.int64)
        self.rank = np.zeros(n, dtype=np.int64)

    def find(self, nodes: np.ndarray) -> np.ndarray:
        """Roots of ``nodes``; every queried node is re-pointed at its root."""
        roots = self.parent[nodes]
        while True:
            up = self.parent[roots]
            if np.array_equal(up, roots):
                break
            roots = up
        self.parent[nodes] = roots
        return roots

    def roots(self) -> np.ndarray:
        return self.find(np.arange(self.parent.size))

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        """Merge the sets of ``a[e]`` and ``b[e]`` for every edge e."""
        if a.size == 0:
            return
        ra, rb = self.find(a), self.find(b)
        cross = ra != rb
        if not cross.any():
            return
        ra, rb = ra[cross], rb[cross]
        nodes, inverse = np.unique(np.concatenate([ra, rb]), return_inverse=True)
        m = ra.size
        graph = coo_matrix(
            (np.ones(m, dtype=np.int32), (inverse[:m], inverse[m:])), shape=(nodes.size,) * 2
        )
        _, comp = connected_components(graph, directed=False)
        self._merge_groups(nodes, comp)

    def _merge_groups(self, roots: np.ndarray, comp: np.ndarray) -> None:
        """Point each group of roots at its highest-rank member (ties: smallest index)."""
        ranks = self.rank[roots]
        order = np.lexsort((roots, -ranks, comp))
        comp_sorted = comp[order]
        lead = np.ones(order.size, dtype=bool)
        lead[1:] = comp_sorted[1:] != comp_sorted[:-1]
        leader = np.empty(int(comp.max()) + 1, dtype=np.int64)
        leader[comp_sorted[lead]] = roots[order][lead]
        top = self.rank[leader]
        # Union by rank for a k-way merge: the height grows only if the top rank is tied.
        at_top = (ranks == top[comp]).astype(np.float64)
        ties = np.bincount(comp, weights=at_top, minlength=leader.size)
        self.parent[roots] = leader[comp]
        self.rank[leader] += ties > 1


class _SpanningForest:
    """Minimum spanning forest of the edges added so far, buffered and compacted.

    Compaction keeps at most K - 1 edges: by the cycle property the MSF of (old
    forest + new edges) is the MSF of all edges seen.
    """

    def __init__(self, k: int) -> None:
        self.k = k
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.buffered = 0

    def add(self, i: np.ndarray, j: np.ndarray, d: np.ndarray) -> None:
        if d.size == 0:
            return
        self.parts.append((i, j, d))
        self.buffered += d.size
        if self.buffered > max(4 * self.k, _COMPACT_MIN_EDGES):
            self._compact()

    def sorted_lengths(self) -> np.ndarray:
        self._compact()
        return np.sort(self.parts[0][2]) if self.parts else np.zeros(0)

    def _compact(self) -> None:
        if not self.parts:
            return
        i, j, d = (np.concatenate(x) for x in zip(*self.parts, strict=True))
        self.parts = [_minimum_spanning_forest(self.k, i, j, d)]
        self.buffered = self.parts[0][2].size


def _minimum_spanning_forest(
    k: int, i: np.ndarray, j: np.ndarray, d: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Edges of a minimum spanning forest (each pair i < j must appear at most once)."""
    order = np.argsort(d, kind="stable")
    i, j, d = i[order], j[order], d[order]
    # scipy drops zero weights (exact duplicates have d = 0) and would round tiny ones;
    # the rank 1..E keeps the order exactly and lets us read back which edges were kept.
    rank = np.arange(1, d.size + 1, dtype=np.float64)
    tree = minimum_spanning_tree(coo_matrix((rank, (i, j)), shape=(k, k)).tocsr())
    kept = tree.tocoo().data.astype(np.int64) - 1
    return i[kept], j[kept], d[kept]


# --- one blocked pass -----------------------------------------------------------------


class _NearestNeighbors:
    """Running nearest-neighbour index of every prototype, folded in tile by tile."""

    def __init__(self, k: int, device: torch.device) -> None:
        self.best = torch.full((k,), math.inf, dtype=torch.float64, device=device)
        self.arg = torch.zeros(k, dtype=torch.long, device=device)

    def update(self, d2: torch.Tensor, tile: Tile) -> None:
        r0, _, c0, _ = tile
        if r0 == c0:
            d2 = d2.clone().fill_diagonal_(math.inf)  # a prototype is not its own neighbour
        # Tiles cover i < j only, so each tile informs both its rows and its columns.
        self._fold(r0, *d2.min(dim=1), offset=c0)
        self._fold(c0, *d2.min(dim=0), offset=r0)

    def _fold(self, start: int, values: torch.Tensor, idx: torch.Tensor, offset: int) -> None:
        end = start + values.numel()
        better = values < self.best[start:end]
        self.best[start:end] = torch.where(better, values, self.best[start:end])
        self.arg[start:end] = torch.where(better, idx + offset, self.arg[start:end])

    def distances(self, units: torch.Tensor) -> torch.Tensor:
        if units.shape[0] == 1:
            return torch.full((1,), math.inf, dtype=torch.float64)
        # Re-measure directly: the Gram form loses digits for nearly equal directions.
        return torch.linalg.vector_norm(units - units[self.arg], dim=1).cpu()


@dataclass
class _Scan:
    """Accumulators of one pass over all pairs; each is None when not requested."""

    units: torch.Tensor
    link: tuple[float, _DisjointSet] | None  # union-find at one eps
    forest: tuple[np.ndarray, _SpanningForest] | None  # spanning forest for sorted eps values
    nearest: _NearestNeighbors | None

    def visit(self, tile: Tile, thresholds: np.ndarray) -> None:
        d2 = _tile_sq_distances(self.units, tile)
        if thresholds.size:
            i, j, d = _tile_edges(self.units, tile, d2, thresholds)
            if self.link is not None:
                eps, sets = self.link
                sets.union(i[d < eps], j[d < eps])
            if self.forest is not None:
                eps_sorted, forest = self.forest
                keep = d < eps_sorted[-1]
                forest.add(i[keep], j[keep], d[keep])
        if self.nearest is not None:
            self.nearest.update(d2, tile)

    def unique_result(self) -> UniqueResult:
        if self.link is None:
            raise RuntimeError("this scan did not link prototypes")
        eps, sets = self.link
        return _make_result(_canonical_labels(sets.roots()), eps)

    def curve(self) -> list[tuple[float, int]]:
        if self.forest is None:
            raise RuntimeError("this scan did not build a spanning forest")
        eps_sorted, forest = self.forest
        k = self.units.shape[0]
        merges = np.searchsorted(forest.sorted_lengths(), eps_sorted, side="left")
        return [(float(e), int(k - n)) for e, n in zip(eps_sorted, merges, strict=True)]

    def nearest_distances(self) -> torch.Tensor:
        if self.nearest is None:
            raise RuntimeError("this scan did not track nearest neighbours")
        return self.nearest.distances(self.units)


def _scan(
    units: torch.Tensor,
    block_size: int,
    link_eps: float | None = None,
    curve_eps: np.ndarray | None = None,
    nearest: bool = False,
) -> _Scan:
    """One blocked pass: union-find at ``link_eps``, forest up to max(``curve_eps``), NN."""
    k = units.shape[0]
    scan = _Scan(
        units=units,
        link=(link_eps, _DisjointSet(k)) if link_eps is not None else None,
        forest=(curve_eps, _SpanningForest(k)) if curve_eps is not None else None,
        nearest=_NearestNeighbors(k, units.device) if nearest else None,
    )
    wanted = [link_eps] if link_eps is not None else []
    wanted += curve_eps.tolist() if curve_eps is not None else []
    thresholds = np.array(sorted(set(wanted)), dtype=np.float64)
    for tile in _upper_tiles(k, block_size):
        scan.visit(tile, thresholds)
    return scan


# --- exact fast path: greedy leaders ---------------------------------------------------
#
# 1. Covers. Prototypes are visited in chunks of ``block_size``. Each joins an existing
#    leader whose exact distance is < eps (the nearest one the screen proposes), or
#    else the chunk's remaining prototypes are resolved greedily in index order: the
#    first unassigned one becomes a leader and claims the unassigned ones within eps.
#    Every member is exactly linked to its leader, so a cover lies in one component.
# 2. Links between covers. If a in cover A and b in cover B are linked, then
#    d(L_A, L_B) <= r_A + eps + r_B < 3 eps (triangle inequality, r = member-to-leader
#    distance < eps). Leader pairs closer than 3 eps are found while the leaders are
#    created (a new leader's row of the screen against older leaders is exactly that
#    list), filtered by the exact bound d(L_A, L_B) < max r_A + max r_B + eps, and only
#    their member pairs are measured exactly (again pruned by the triangle inequality),
#    closest leader pairs first, skipping covers already merged.
#
# Screening matmuls run in float32 (IEEE, checked at run time) with a margin that
# bounds their rounding error, so they can only propose too many pairs, never miss
# one; every link that enters the result is decided by the direct float64 distance
# ``||mu_i - mu_j|| < eps``, the same formula the brute force falls back to near eps.
# For p >= 128 a cheaper first screen on projections onto the top principal
# directions (a lower bound of every distance) rules out most rows of each tile
# before the full p-column screen; without collapse it rules out nearly all of them.


class _TooDense(Exception):
    """The leader graph is too dense to beat the brute force (``method="auto"`` only)."""


def _screen_dtype(units: torch.Tensor) -> torch.dtype:
    """float32 when this device's float32 matmul is IEEE; float64 if it is TF32/bf16.

    A reduced-precision float32 matmul (``torch.set_float32_matmul_precision("high")``
    on CUDA, bf16 modes of oneDNN) would void the screening margin; 1 + 2^-20 survives
    an IEEE float32 product but not a 10- or 7-bit mantissa.
    """
    p = units.shape[1]
    probe = 1.0 + 2.0**-20
    a = torch.zeros(128, p, dtype=torch.float32, device=units.device)
    a[:, 0] = probe
    b = torch.zeros(128, p, dtype=torch.float32, device=units.device)
    b[:, 0] = 1.0
    return torch.float32 if bool(((a @ b.T)[:, 0] == probe).all()) else torch.float64


def _screen_margin(p: int, dtype: torch.dtype) -> float:
    """Bound on |d^2 - (2 - 2 g)| for rows with |sq - 1| <= _REGULAR_TOL, g the screened dot.

    Rounding the inputs moves a dot product of unit vectors by <= 2u (u the unit
    roundoff), any summation order adds <= p u (Higham, Thm 3.1); the exact squared
    norms add <= 2 _REGULAR_TOL, and comparing with a threshold rounded to the screen's
    dtype costs one more u. Doubled for safety: it only widens the screen.
    """
    unit = 2.0**-24 if dtype == torch.float32 else 2.0**-53
    return 2.0 * (2.0 * (p + 4) * unit + 2.0 * unit + 2.0 * _REGULAR_TOL)


def _squared_norms(units: torch.Tensor) -> torch.Tensor:
    """Row squared norms, by the brute force's formula, without a [K, p] temporary."""
    parts = [(c * c).sum(dim=1) for c in units.split(_NORMALIZE_ROWS)]
    return torch.cat(parts)


def _direct_distances(units: torch.Tensor, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """||units[i] - units[j]|| for index arrays i, j (float64, numpy): the exact rule."""
    out = np.empty(i.size, dtype=np.float64)
    for s in range(0, i.size, _PAIR_CHUNK):
        a = torch.as_tensor(i[s : s + _PAIR_CHUNK], device=units.device)
        b = torch.as_tensor(j[s : s + _PAIR_CHUNK], device=units.device)
        out[s : s + a.numel()] = torch.linalg.vector_norm(units[a] - units[b], dim=1).cpu().numpy()
    return out


@dataclass
class _Covers:
    """Greedy eps-covers of the regular rows (indices are positions among them)."""

    leader: np.ndarray  # [L] position of each cover's leader, covers in creation order
    cover_of: np.ndarray  # [R] cover of each position
    radius: np.ndarray  # [R] exact distance to the cover's leader (0 for leaders)
    pair_a: np.ndarray  # candidate cover pairs: leaders screened closer than 3 eps
    pair_b: np.ndarray


class _CoverBuilder:
    """Builds ``_Covers`` chunk by chunk; see the section comment above.

    Screening is two-level when p >= ``_PROJECT_MIN_P`` and there are at least
    ``_PROJECT_MIN_ROWS`` rows: squared distances between the projections onto the
    top principal directions (q = p / 4, at most 32 of them) are lower bounds of the
    full ones, computed by one cheap (q + 2)-column matmul per tile. The nearest
    leader in projection is then the join candidate (checked exactly), and only new
    leaders with some leader within reach in projection get the full p-column screen
    for their candidate pairs. Without collapse nearly every row is ruled out at once.
    """

    def __init__(
        self,
        units: torch.Tensor,
        rows: np.ndarray,
        eps: float,
        block_size: int,
        give_up: bool,
    ) -> None:
        self.units, self.rows, self.eps, self.give_up = units, rows, eps, give_up
        self.device = units.device
        p = units.shape[1]
        self.dtype = _screen_dtype(units)
        rows_t = torch.as_tensor(rows, device=self.device)
        if rows.size == units.shape[0]:
            self.x = units.to(self.dtype)  # [R, p] screening copy (a view if float64)
        else:
            self.x = units[rows_t].to(self.dtype)
        margin = _screen_margin(p, self.dtype)
        reach = 3.0 * eps * (1.0 + 1e-6) + 1e-9  # covers' reach, with a little slack
        # Screens on the dot product g: d^2 < t  can hold only if  g > 1 - (t + margin) / 2.
        self.join_dot = 1.0 - (eps * eps + margin) / 2.0
        self.reach_dot = 1.0 - (reach * reach + margin) / 2.0
        self.chunk = block_size
        self.tile = max(4 * block_size, 1024)
        r = rows.size
        cap = min(r, max(self.chunk, 1024))
        self.lead = torch.empty((cap, p), dtype=self.dtype, device=self.device)
        self.n_lead = 0
        self.leader_pos = np.empty(r, dtype=np.int64)  # [:n_lead]: position of each leader
        self.cover_of = np.full(r, -1, dtype=np.int64)
        self.radius = np.zeros(r, dtype=np.float64)
        self.pairs: list[tuple[np.ndarray, np.ndarray]] = []
        self.n_pairs = 0
        # Reused tile buffers: fresh large allocations cost page faults every time.
        size = min(r, self.chunk) * min(r, self.tile)
        self._full_buf = torch.empty(size, dtype=self.dtype, device=self.device)
        project = p >= _PROJECT_MIN_P and r >= _PROJECT_MIN_ROWS
        self.q = min(_PROJECT_DIMS, p // 4) if project else 0
        if self.q:
            self._init_projection(rows_t, reach)

    # -- projection screen --------------------------------------------------------------

    def _init_projection(self, rows_t: torch.Tensor, reach: float) -> None:
        """Top-q principal directions; augmented rows whose products are squared distances.

        [y_i, |y_i|^2, 1] . [-2 y_j, 1, |y_j|^2] = |y_i - y_j|^2 <= |x_i - x_j|^2 (y = V^T x,
        V orthonormal). Rounding: y and |y|^2 are computed in float64 and rounded once
        (<= u relative), the float32 products of q + 2 terms of total size <= 4 add
        <= 4 (q + 2) u; the bound uses 8 (q + 5) u. V's columns are orthonormal to
        ~1e-15, covered by the factor (1 + 1e-9) on the reach.
        """
        q = self.q
        all_rows = rows_t.numel() == self.units.shape[0]
        step = max(1, rows_t.numel() // _PROJECT_SAMPLE)
        sample = self.units[::step] if all_rows else self.units[rows_t[::step]]
        centred = sample - sample.mean(dim=0, keepdim=True)
        # numpy's eigh: torch's LAPACK call stalls for seconds on a busy 2-core machine.
        _, vecs = np.linalg.eigh((centred.T @ centred).cpu().numpy())
        basis = torch.as_tensor(vecs[:, -q:].copy(), device=self.device)  # orthonormal [p, q]
        query = torch.empty((rows_t.numel(), q + 2), dtype=self.dtype, device=self.device)
        for s in range(0, rows_t.numel(), _NORMALIZE_ROWS):
            part = slice(s, s + _NORMALIZE_ROWS)
            y = (self.units[part] if all_rows else self.units[rows_t[part]]) @ basis
            query[s : s + y.shape[0], :q] = y
            query[s : s + y.shape[0], q] = (y * y).sum(dim=1)
        query[:, q + 1] = 1.0
        self.query = query
        self.lead_aug = torch.empty(
            (self.lead.shape[0], q + 2), dtype=self.dtype, device=self.device
        )
        unit = 2.0**-24 if self.dtype == torch.float32 else 2.0**-53
        margin = 8.0 * (q + 5) * unit
        self.reach_sq_proj = (reach * (1.0 + 1e-9)) ** 2 + margin
        self.join_sq_proj = (self.eps * (1.0 + 1e-9)) ** 2 + margin
        self._proj_buf = torch.empty_like(self._full_buf)

    def _leader_side(self, aug: torch.Tensor) -> torch.Tensor:
        """[y, n, 1] -> [-2 y, 1, n] (exact in floating point)."""
        q = self.q
        out = torch.empty_like(aug)
        out[:, :q] = -2.0 * aug[:, :q]
        out[:, q] = 1.0
        out[:, q + 1] = aug[:, q]
        return out

    def _near_rows(self, pos: slice | torch.Tensor, t0: int, t1: int) -> torch.Tensor | None:
        """Rows (indices into pos) that may have a leader of [t0, t1) within reach.

        None means all rows (no projection screen).
        """
        if not self.q:
            return None
        qa = self.query[pos]
        view = self._proj_buf[: qa.shape[0] * (t1 - t0)].view(qa.shape[0], t1 - t0)
        torch.mm(qa, self.lead_aug[t0:t1].T, out=view)
        return (view.amin(dim=1) < self.reach_sq_proj).nonzero().squeeze(1)

    def _sims(self, x: torch.Tensor, t0: int, t1: int) -> torch.Tensor:
        """Screened dots of rows x with leaders [t0, t1), in the reused buffer."""
        view = self._full_buf[: x.shape[0] * (t1 - t0)].view(x.shape[0], t1 - t0)
        return torch.mm(x, self.lead[t0:t1].T, out=view)

    # -- the pass -----------------------------------------------------------------------

    def build(self) -> _Covers:
        for s in range(0, self.rows.size, self.chunk):
            self._visit(s, min(s + self.chunk, self.rows.size))
        pa = np.concatenate([a for a, _ in self.pairs]) if self.pairs else np.zeros(0, np.int64)
        pb = np.concatenate([b for _, b in self.pairs]) if self.pairs else np.zeros(0, np.int64)
        leader = self.leader_pos[: self.n_lead].copy()
        return _Covers(leader, self.cover_of, self.radius, pa, pb)

    def _distances(self, pos_a: np.ndarray, pos_b: np.ndarray) -> np.ndarray:
        return _direct_distances(self.units, self.rows[pos_a], self.rows[pos_b])

    def _visit(self, s: int, e: int) -> None:
        join, arg, reach = self._screen_leaders(s, e)
        n_old = self.n_lead
        # Join the proposed leader when the exact distance agrees.
        joined = np.zeros(e - s, dtype=bool)
        cand = join.nonzero().squeeze(1)
        if cand.numel():
            local = cand.cpu().numpy()
            cover = arg[cand].cpu().numpy()
            d = self._distances(s + local, self.leader_pos[cover])
            ok = d < self.eps
            joined[local[ok]] = True
            self.cover_of[s + local[ok]] = cover[ok]
            self.radius[s + local[ok]] = d[ok]
        rest = np.flatnonzero(~joined)
        if rest.size == 0:
            return
        # The rest: greedy leaders among themselves, in index order. Rows with no other
        # rest row within reach (by the projection screen) simply become leaders.
        rest_t = torch.as_tensor(s + rest, device=self.device)
        state = np.arange(rest.size)
        rad = np.zeros(rest.size, dtype=np.float64)
        active = self._active_in_chunk(rest_t)
        gram = None
        if active.size > 1:
            xa = self.x[rest_t[torch.as_tensor(active, device=self.device)]]
            gram = xa @ xa.T
            ii, jj = torch.triu(gram > self.join_dot, diagonal=1).nonzero(as_tuple=True)
            sub_state, sub_rad = self._greedy(s + rest[active], _numpy(ii), _numpy(jj))
            state[active] = active[sub_state]
            rad[active] = sub_rad
        new = np.flatnonzero(state == np.arange(rest.size))  # indices into rest, ascending
        cover_id = np.full(rest.size, -1, dtype=np.int64)
        cover_id[new] = n_old + np.arange(new.size)
        self.cover_of[s + rest] = cover_id[state]
        self.radius[s + rest] = rad
        self.leader_pos[n_old : n_old + new.size] = s + rest[new]
        # Candidate cover pairs: new leaders among themselves (only active ones can be
        # within reach of each other), and against older ones.
        if gram is not None:
            act_lead = np.flatnonzero(state[active] == active)  # indices into active
            sel = torch.as_tensor(act_lead, device=self.device)
            sub = gram[sel][:, sel] > self.reach_dot
            a, b = torch.triu(sub, diagonal=1).nonzero(as_tuple=True)
            act_cover = cover_id[active[act_lead]]
            self._add_pairs(act_cover[_numpy(b)], act_cover[_numpy(a)])
        new_t = torch.as_tensor(new, device=self.device)
        near = new_t[reach[torch.as_tensor(rest, device=self.device)[new_t]]]
        if near.numel() and n_old:
            self._pairs_with_old(rest_t[near], cover_id[_numpy(near)], n_old)
        self._append_leaders(rest_t[new_t])

    def _active_in_chunk(self, rest_t: torch.Tensor) -> np.ndarray:
        """Indices into rest_t of rows that may have another rest row within reach."""
        if not self.q:
            return np.arange(rest_t.numel())
        qa = self.query[rest_t]
        d2 = (qa @ self._leader_side(qa).T).fill_diagonal_(math.inf)
        close = (d2 < self.reach_sq_proj).any(dim=1)
        return _numpy(close.nonzero().squeeze(1))

    def _screen_leaders(self, s: int, e: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Screen rows [s, e) against the existing leaders.

        Returns ``(join, cover, reach)``: rows with a candidate leader within eps, that
        leader's cover (valid where join), and rows that may have a leader within reach.
        With the projection screen the candidate is the nearest leader in projection
        (verified exactly afterwards); otherwise the nearest by the full screen.
        """
        if self.q:
            return self._screen_projected(s, e)
        x = self.x[s:e]
        best = torch.full((e - s,), -math.inf, dtype=self.dtype, device=self.device)
        arg = torch.zeros(e - s, dtype=torch.long, device=self.device)
        for t0 in range(0, self.n_lead, self.tile):
            t1 = min(t0 + self.tile, self.n_lead)
            sim = self._sims(x, t0, t1)
            top = sim.amax(dim=1)  # values only: 10x cheaper than max() with indices
            better = (top > best) & (top > self.join_dot)
            rows = better.nonzero().squeeze(1)
            if 4 * rows.numel() > x.shape[0]:
                arg = torch.where(better, sim.argmax(dim=1) + t0, arg)
            elif rows.numel():
                arg[rows] = sim[rows].argmax(dim=1) + t0
            best = torch.maximum(best, top)
        return best > self.join_dot, arg, best > self.reach_dot

    def _screen_projected(self, s: int, e: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``_screen_leaders`` on the projections alone (lower bounds of the distances)."""
        best = torch.full((e - s,), math.inf, dtype=self.dtype, device=self.device)
        arg = torch.zeros(e - s, dtype=torch.long, device=self.device)
        qa = self.query[s:e]
        for t0 in range(0, self.n_lead, self.tile):
            t1 = min(t0 + self.tile, self.n_lead)
            view = self._proj_buf[: qa.shape[0] * (t1 - t0)].view(qa.shape[0], t1 - t0)
            d2 = torch.mm(qa, self.lead_aug[t0:t1].T, out=view)
            low = d2.amin(dim=1)
            better = (low < best) & (low < self.join_sq_proj)
            rows = better.nonzero().squeeze(1)
            if 4 * rows.numel() > qa.shape[0]:
                arg = torch.where(better, d2.argmin(dim=1) + t0, arg)
            elif rows.numel():
                arg[rows] = d2[rows].argmin(dim=1) + t0
            best = torch.minimum(best, low)
        return best < self.join_sq_proj, arg, best < self.reach_sq_proj

    def _greedy(
        self, pos: np.ndarray, ii: np.ndarray, jj: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Leader (index into pos) of each of pos, and its exact distance to it.

        ``ii < jj`` are the screened pairs, sorted by ii. Few pairs are verified all at
        once; many (a tight group in one chunk) lazily, only those a leader claims.
        """
        n = pos.size
        state = np.full(n, -1, dtype=np.int64)
        rad = np.zeros(n, dtype=np.float64)
        eager = ii.size <= 16 * n + 1024
        dist = np.zeros(0)
        if eager and ii.size:
            dist = self._distances(pos[ii], pos[jj])
            keep = dist < self.eps
            ii, jj, dist = ii[keep], jj[keep], dist[keep]
        ptr = np.searchsorted(ii, np.arange(n + 1))
        for i in np.unique(np.concatenate([ii, jj])).tolist():
            if state[i] >= 0:
                continue
            state[i] = i
            lo, hi = ptr[i], ptr[i + 1]
            if lo == hi:
                continue
            js = jj[lo:hi]
            free = state[js] < 0
            if not free.any():
                continue
            js = js[free]
            if eager:
                ds = dist[lo:hi][free]
            else:
                ds = self._distances(np.full(js.size, pos[i]), pos[js])
                ok = ds < self.eps
                js, ds = js[ok], ds[ok]
            state[js] = i
            rad[js] = ds
        alone = state < 0
        state[alone] = np.flatnonzero(alone)
        return state, rad

    def _pairs_with_old(self, pos: torch.Tensor, covers: np.ndarray, n_old: int) -> None:
        """Cover pairs (new leader at positions pos, older leader) screened within reach."""
        x = self.x[pos]
        for t0 in range(0, n_old, self.tile):
            t1 = min(t0 + self.tile, n_old)
            near = self._near_rows(pos, t0, t1)
            if near is None:
                near = torch.arange(pos.numel(), device=self.device)
            if near.numel() == 0:
                continue
            sim = self._sims(x[near], t0, t1)
            a, b = (sim > self.reach_dot).nonzero(as_tuple=True)
            self._add_pairs(covers[_numpy(near[a])], t0 + _numpy(b))

    def _add_pairs(self, a: np.ndarray, b: np.ndarray) -> None:
        if a.size == 0:
            return
        self.pairs.append((a.astype(np.int64), b.astype(np.int64)))
        self.n_pairs += a.size
        if self.give_up and self.n_pairs > max(_DENSE_LEADER_PAIRS, 4 * self.rows.size):
            raise _TooDense

    def _append_leaders(self, pos: torch.Tensor) -> None:
        """Append the leaders at positions pos (their screening rows) to the buffers."""
        need = self.n_lead + pos.numel()
        if need > self.lead.shape[0]:
            cap = min(self.rows.size, max(need, 2 * self.lead.shape[0]))
            self.lead = self._grow(self.lead, cap)
            if self.q:
                self.lead_aug = self._grow(self.lead_aug, cap)
        self.lead[self.n_lead : need] = self.x[pos]
        if self.q:
            self.lead_aug[self.n_lead : need] = self._leader_side(self.query[pos])
        self.n_lead = need

    def _grow(self, buf: torch.Tensor, cap: int) -> torch.Tensor:
        grown = torch.empty((cap, buf.shape[1]), dtype=buf.dtype, device=buf.device)
        grown[: self.n_lead] = buf[: self.n_lead]
        return grown


def _link_covers(
    units: torch.Tensor,
    rows: np.ndarray,
    covers: _Covers,
    eps: float,
    give_up: bool,
    sets: _DisjointSet | None = None,
) -> _DisjointSet:
    """Union-find over covers, merged wherever a member pair is exactly linked.

    The covers' radius may be below eps (each cover still lies in one component);
    ``sets`` continues a union-find from a smaller eps (its merges stay valid).
    """
    n_cov = covers.leader.size
    sets = _DisjointSet(n_cov) if sets is None else sets
    ca, cb = covers.pair_a, covers.pair_b
    if ca.size == 0:
        return sets
    lead = rows[covers.leader]
    dll = _direct_distances(units, lead[ca], lead[cb])
    rmax = np.zeros(n_cov, dtype=np.float64)
    np.maximum.at(rmax, covers.cover_of, covers.radius)
    # Triangle inequality on the exact (float64) distances; the slack absorbs their
    # rounding (~1e-16 relative) many times over.
    slack = 1e-9 * (1.0 + dll)
    keep = dll - rmax[ca] - rmax[cb] < eps + slack
    ca, cb, dll, slack = ca[keep], cb[keep], dll[keep], slack[keep]
    size = np.bincount(covers.cover_of, minlength=n_cov)
    work = size[ca] * size[cb]
    r = rows.size
    if give_up and work.sum() > max(_PAIR_BUDGET, r * r // (2 * _DENSE_WORK_DIVISOR)):
        raise _TooDense
    members = np.argsort(covers.cover_of, kind="stable")
    start = np.concatenate([[0], np.cumsum(size)])
    order = np.argsort(dll, kind="stable")  # closest leaders first: they merge most
    window = 1 << 16
    i = 0
    while i < order.size:
        win = order[i : i + window]
        alive = sets.find(ca[win]) != sets.find(cb[win])
        cum = np.cumsum(np.where(alive, work[win], 0))
        taken = max(1, int(np.searchsorted(cum, _PAIR_BUDGET, side="right")))
        sel = win[:taken][alive[:taken]]
        i += taken
        if sel.size == 0:
            continue
        linked = _linked_cover_pairs(
            units, rows, covers, members, start, ca[sel], cb[sel], dll[sel] - slack[sel], eps
        )
        sets.union(ca[sel][linked], cb[sel][linked])
    return sets


def _linked_cover_pairs(
    units: torch.Tensor,
    rows: np.ndarray,
    covers: _Covers,
    members: np.ndarray,
    start: np.ndarray,
    ca: np.ndarray,
    cb: np.ndarray,
    dll_low: np.ndarray,
    eps: float,
) -> np.ndarray:
    """Mask of the cover pairs (ca, cb) that have an exactly linked member pair."""
    sa, sb = start[ca + 1] - start[ca], start[cb + 1] - start[cb]
    linked = np.zeros(ca.size, dtype=bool)
    if ca.size == 1 and sa[0] * sb[0] > _PAIR_BUDGET:
        # One large pair: members of A in slices, stopping at the first link.
        step = max(1, _PAIR_BUDGET // int(sb[0]))
        for lo in range(0, int(sa[0]), step):
            sub = members[start[ca[0]] + lo : start[ca[0]] + min(lo + step, int(sa[0]))]
            a = np.repeat(sub, sb[0])
            b = np.tile(members[start[cb[0]] : start[cb[0] + 1]], sub.size)
            if _any_linked(units, rows, covers, a, b, np.full(a.size, dll_low[0]), eps):
                linked[0] = True
                break
        return linked
    n = sa * sb
    pid = np.repeat(np.arange(ca.size), n)
    t = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
    ia = t // sb[pid]
    ib = t - ia * sb[pid]
    a = members[start[ca[pid]] + ia]
    b = members[start[cb[pid]] + ib]
    hit = _linked_mask(units, rows, covers, a, b, dll_low[pid], eps)
    linked[np.unique(pid[hit])] = True
    return linked


def _linked_mask(
    units: torch.Tensor,
    rows: np.ndarray,
    covers: _Covers,
    a: np.ndarray,
    b: np.ndarray,
    dll_low: np.ndarray,
    eps: float,
) -> np.ndarray:
    """Exact link decision for member pairs (a, b), skipping those the triangle rules out."""
    hit = np.zeros(a.size, dtype=bool)
    maybe = np.flatnonzero(dll_low - covers.radius[a] - covers.radius[b] < eps)
    if maybe.size:
        hit[maybe] = _direct_distances(units, rows[a[maybe]], rows[b[maybe]]) < eps
    return hit


def _any_linked(
    units: torch.Tensor,
    rows: np.ndarray,
    covers: _Covers,
    a: np.ndarray,
    b: np.ndarray,
    dll_low: np.ndarray,
    eps: float,
) -> bool:
    return bool(_linked_mask(units, rows, covers, a, b, dll_low, eps).any())


def _rows_vs_all_links(
    units: torch.Tensor, sq: torch.Tensor, rows: torch.Tensor, eps: float, block_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact links between ``rows`` and every row, by the brute force's own tile rule."""
    k = units.shape[0]
    src: list[np.ndarray] = []
    dst: list[np.ndarray] = []
    for r0 in range(0, rows.numel(), block_size):
        ri = rows[r0 : r0 + block_size]
        a = units[ri]
        for c0 in range(0, k, block_size):
            c1 = min(c0 + block_size, k)
            d2 = (sq[ri][:, None] + sq[None, c0:c1] - 2.0 * (a @ units[c0:c1].T)).clamp_min_(0.0)
            ii, jj = (d2 < eps * eps + _REFINE_BAND).nonzero(as_tuple=True)
            dist2 = d2[ii, jj]
            dist = dist2.sqrt()
            near = ((dist2 - eps * eps).abs() < _REFINE_BAND).nonzero().squeeze(1)
            if near.numel():
                dist[near] = torch.linalg.vector_norm(
                    units[ri[ii[near]]] - units[c0 + jj[near]], dim=1
                )
            keep = dist < eps
            src.append(_numpy(ri[ii[keep]]))
            dst.append(_numpy(jj[keep] + c0))
    return np.concatenate(src), np.concatenate(dst)


@dataclass
class _Prepared:
    """Regular (unit) rows, their greedy eps-covers and their float32 screening copy.

    Built once and shared: the covers serve the count M at their eps and bound the
    nearest-neighbour search (``_nearest``). ``covers`` is None when building them was
    given up (too dense) or there are fewer than one regular row.
    """

    sq: torch.Tensor  # [K] squared norms of the unit rows (brute force's formula)
    regular: torch.Tensor  # [K] bool: |sq - 1| <= _REGULAR_TOL
    rows: np.ndarray  # [R] indices of the regular rows
    eps: float
    covers: _Covers | None
    x: torch.Tensor | None  # [R, p] screening copy of the regular rows


def _prepare(units: torch.Tensor, eps: float, block_size: int, give_up: bool) -> _Prepared:
    """Split regular rows from zero / tiny ones and build their greedy covers at eps."""
    sq = _squared_norms(units)
    regular = (sq - 1.0).abs() <= _REGULAR_TOL
    rows = _numpy(regular.nonzero().squeeze(1))
    if rows.size == 0:
        return _Prepared(sq, regular, rows, eps, None, None)
    builder = _CoverBuilder(units, rows, eps, block_size, give_up)
    try:
        covers: _Covers | None = builder.build()
    except _TooDense:
        covers = None
    return _Prepared(sq, regular, rows, eps, covers, builder.x)


def _leader_components(
    units: torch.Tensor,
    eps: float,
    block_size: int,
    give_up: bool = False,
    prepared: _Prepared | None = None,
) -> np.ndarray:
    """Component id of every prototype (exact, as the brute force), via greedy leaders.

    Rows that are not unit vectors (zero rows; rows too small for ``F.normalize`` to
    scale) are linked to every row by the brute force's tile rule; all zero rows are
    the same vector, so one of them stands for all. Raises ``_TooDense`` when
    ``give_up`` and the leader graph is too dense to pay off. ``prepared`` (covers at
    this eps) is reused when given.
    """
    k = units.shape[0]
    if prepared is None:
        prepared = _prepare(units, eps, block_size, give_up)
    if prepared.eps != eps:
        raise ValueError(f"covers were built at eps {prepared.eps}, not {eps}")
    sq, regular, rows = prepared.sq, prepared.regular, prepared.rows
    src: list[np.ndarray] = []
    dst: list[np.ndarray] = []
    if rows.size:
        covers = prepared.covers
        if covers is None:
            raise _TooDense
        sets = _link_covers(units, rows, covers, eps, give_up)
        root_cover = sets.roots()[covers.cover_of]
        src.append(rows)
        dst.append(rows[covers.leader[root_cover]])
    odd = (~regular).nonzero().squeeze(1)
    if odd.numel():
        zero = odd[sq[odd] == 0]
        other = odd[sq[odd] != 0]
        if zero.numel():  # identical vectors: linked to each other, alike to the rest
            src.append(_numpy(zero))
            dst.append(np.full(zero.numel(), int(zero[0])))
        probe = torch.cat([zero[:1], other])
        i, j = _rows_vs_all_links(units, sq, probe, eps, block_size)
        src.append(i)
        dst.append(j)
    s = np.concatenate(src) if src else np.zeros(0, dtype=np.int64)
    d = np.concatenate(dst) if dst else np.zeros(0, dtype=np.int64)
    graph = coo_matrix((np.ones(s.size, dtype=np.int32), (s, d)), shape=(k, k))
    _, comp = connected_components(graph, directed=False)
    return comp


def _components(
    units: torch.Tensor,
    eps: float,
    block_size: int,
    method: str = "auto",
    prepared: _Prepared | None = None,
    max_auto_eps: float = _AUTO_MAX_EPS,
) -> np.ndarray:
    """Canonical component labels at eps by ``method`` ("auto": brute force if dense)."""
    k = units.shape[0]
    auto_leaders = method == "auto" and k >= _AUTO_MIN_K and eps <= max_auto_eps
    if method == "leaders" or auto_leaders:
        try:
            comp = _leader_components(units, eps, block_size, auto_leaders, prepared)
            return _canonical_labels(comp)
        except _TooDense:
            pass  # auto only: the brute force is cheaper for this graph
    sets = _scan(units, block_size, link_eps=eps).link
    assert sets is not None  # noqa: S101 (requested above)
    return _canonical_labels(sets[1].roots())


# --- exact nearest neighbours and the curve up to the covers' eps ----------------------
#
# The nearest-neighbour distance of row i is min_j ||mu_i - mu_j||, measured directly in
# float64 like every link decision. Greedy covers at eps c (members closer than c to
# their leader; built once, see the leaders section) split the rows in two:
#
# - Rows of a cover of two or more have a neighbour closer than c (their leader, or for
#   a leader its closest member), so their nearest neighbour j* is closer than c and
#   d(L_i, L_j*) <= r_i + d(i, j*) + r_j* < 3 c: j* lies in the row's own cover or in a
#   cover whose leader the cover builder already listed within 3 c. The same holds for
#   every edge shorter than c. Those neighbourhoods are measured as float64 Gram tiles
#   (``_Neighbourhoods``): nearest candidates within ``_REFINE_BAND`` of the minimum
#   are re-measured directly, and the edges shorter than the largest curve eps <= c
#   (re-measured directly near each eps, as the brute force does) are reduced to a
#   minimum spanning forest: M(eps) = K - #{forest edges < eps} for those eps.
# - Rows alone in their cover ("lonely") are screened against all rows in float32: the
#   margin m = _screen_margin bounds |d^2 - (2 - 2 g~)| for the screened dot products
#   g~, so the true nearest j* has g~(j*) >= max_j g~(j) - m. Every entry within m (plus
#   the threshold's rounding) of the row's running maximum is kept, tile by tile, and
#   the few kept are re-measured directly. Lonely x lonely is one symmetric pass (each
#   tile informs its rows and its columns: K^2 / 2), lonely x covered a rectangle.
#
# Above c, every cover lies in one component, so the curve links the same covers
# (``_long_curve``); only covers holding a row closer than eps to another take part.


class _NearestSearch:
    """Screened nearest-neighbour candidates among regular rows (positions 0..R-1)."""

    def __init__(
        self,
        units: torch.Tensor,
        rows: np.ndarray,
        x: torch.Tensor,
        block_size: int,
        slack: float | None = None,
    ) -> None:
        self.units, self.rows, self.x = units, rows, x
        r, p = x.shape
        # The margin, plus a few units of the threshold's own rounding (b - slack in x.dtype).
        rounding = 2.0**-21 if x.dtype == torch.float32 else 2.0**-50
        self.slack = (_screen_margin(p, x.dtype) if slack is None else slack) + rounding
        self.best = torch.full((r,), -math.inf, dtype=x.dtype, device=x.device)
        self.owner: list[torch.Tensor] = []
        self.other: list[torch.Tensor] = []
        self.value: list[torch.Tensor] = []
        self.row_block = block_size
        self.col_block = max(4 * block_size, 1024)
        self._buf: torch.Tensor | None = None  # reused tile buffer, allocated on first use

    def _mm(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self._buf is None:
            r = self.x.shape[0]
            size = min(r, self.row_block) * min(r, self.col_block)
            self._buf = torch.empty(size, dtype=self.x.dtype, device=self.x.device)
        view = self._buf[: a.shape[0] * b.shape[0]].view(a.shape[0], b.shape[0])
        return torch.mm(a, b.T, out=view)

    def symmetric(self, pos: torch.Tensor) -> None:
        """Every pair within ``pos`` once; each tile updates its rows and its columns."""
        n = pos.numel()
        for r0 in range(0, n, self.row_block):
            r1 = min(r0 + self.row_block, n)
            rows = pos[r0:r1]
            xr = self.x[rows]
            for c0 in range(r0, n, self.col_block):
                c1 = min(c0 + self.col_block, n)
                cols = pos[c0:c1]
                sim = self._mm(xr, self.x[cols])
                if c0 == r0:
                    sim.diagonal().fill_(-math.inf)  # a row is not its own neighbour
                self.fold(sim, rows, cols)
                self.fold(sim.T, cols, rows)

    def rect(self, rows_pos: torch.Tensor, cols_pos: torch.Tensor, self_prefix: bool) -> None:
        """Rows against columns (rows side only); ``self_prefix``: cols start with rows."""
        for r0 in range(0, rows_pos.numel(), self.row_block):
            rows = rows_pos[r0 : r0 + self.row_block]
            xr = self.x[rows]
            for c0 in range(0, cols_pos.numel(), self.col_block):
                cols = cols_pos[c0 : c0 + self.col_block]
                sim = self._mm(xr, self.x[cols])
                if self_prefix:  # row r0 + a sits in column r0 + a
                    sim.diagonal(offset=r0 - c0).fill_(-math.inf)
                self.fold(sim, rows, cols)

    def fold(self, sim: torch.Tensor, owners: torch.Tensor, others: torch.Tensor) -> None:
        """Keep entries within the slack of each row's running maximum (see above)."""
        top = sim.amax(dim=1)
        new = torch.maximum(self.best[owners], top)
        thr = new - self.slack
        # -inf rows (only self pairs in this tile) have nothing to offer.
        comp = ((top >= thr) & (top > -math.inf)).nonzero().squeeze(1)
        if comp.numel():
            whole = comp.numel() == sim.shape[0]
            sub = sim if whole else sim[comp]
            a, b = (sub >= (thr if whole else thr[comp])[:, None]).nonzero(as_tuple=True)
            self.owner.append(owners[comp[a]])
            self.other.append(others[b])
            self.value.append(sub[a, b])
        self.best[owners] = new

    def finish(self) -> np.ndarray:
        """Exact nearest distance of every position (inf where nothing was screened)."""
        out = np.full(self.rows.size, math.inf)
        if not self.owner:
            return out
        owner, other = torch.cat(self.owner), torch.cat(self.other)
        keep = torch.cat(self.value) >= self.best[owner] - self.slack
        own, oth = _numpy(owner[keep]), _numpy(other[keep])
        np.minimum.at(out, own, _direct_distances(self.units, self.rows[own], self.rows[oth]))
        return out


def _gather_ranges(values: np.ndarray, start: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Concatenation of values[start[i]:start[i + 1]] for i in ids (vectorized)."""
    lens = start[ids + 1] - start[ids]
    total = int(lens.sum())
    offsets = np.repeat(start[ids] - (np.cumsum(lens) - lens), lens)
    return values[offsets + np.arange(total)]


def _cover_batches(
    covers: _Covers, rows: np.ndarray, take: np.ndarray, target_rows: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(batch rows, batch columns) as global indices, over the covers where ``take``.

    A batch's rows are the members of consecutive taken covers (about ``target_rows``
    of them); its columns are those rows first, then the members of their covers'
    neighbours (leaders listed within 3 eps). Extra columns never change a minimum.
    """
    n_cov = covers.leader.size
    size = np.bincount(covers.cover_of, minlength=n_cov)
    members = np.argsort(covers.cover_of, kind="stable")
    start = np.concatenate([[0], np.cumsum(size)])
    a = np.concatenate([covers.pair_a, covers.pair_b])
    b = np.concatenate([covers.pair_b, covers.pair_a])
    order = np.argsort(a, kind="stable")
    nbr = b[order]
    nbr_start = np.searchsorted(a[order], np.arange(n_cov + 1))
    chosen = np.flatnonzero(take)
    cum = np.cumsum(size[chosen])
    # A new batch whenever the running row count crosses a multiple of target_rows.
    cut = np.flatnonzero(np.diff(cum // max(1, target_rows), prepend=0) > 0)
    bounds = np.unique(np.concatenate([[0], cut + 1, [chosen.size]]))
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        ids = chosen[lo:hi]
        batch = _gather_ranges(members, start, ids)
        near = np.setdiff1d(_gather_ranges(nbr, nbr_start, ids), ids)
        yield rows[batch], rows[np.concatenate([batch, _gather_ranges(members, start, near)])]


class _Neighbourhoods:
    """One float64 pass over cover neighbourhoods: nearest neighbours and short edges.

    For the rows of multi-member covers (and lonely rows closer than the largest
    threshold to another) the distances to their neighbourhood's columns are computed
    as float64 Gram tiles, by the brute force's own formula: nearest-neighbour
    candidates are kept within ``_REFINE_BAND`` of each row's minimum and re-measured
    directly; the edges shorter than the largest threshold (re-measured directly near
    every threshold, as the brute force does) feed a minimum spanning forest. Every
    edge shorter than the covers' eps lies within a neighbourhood (section comment),
    so the forest gives M(eps) = K - #{forest edges < eps} for those eps.
    """

    def __init__(
        self, units: torch.Tensor, prepared: _Prepared, block_size: int, thresholds: np.ndarray
    ) -> None:
        assert prepared.covers is not None  # noqa: S101 (the caller checks)
        self.units, self.prepared, self.thresholds = units, prepared, thresholds
        self.covers = prepared.covers
        k = units.shape[0]
        cover_g = np.full(k, -1, dtype=np.int64)
        cover_g[prepared.rows] = self.covers.cover_of
        self.cover_g = torch.as_tensor(cover_g, device=units.device)
        self.search = _NearestSearch(units, np.arange(k), units, block_size, _REFINE_BAND)
        self.forest = _SpanningForest(k)
        self.row_block = block_size
        self.col_block = max(4 * block_size, 1024)

    def run(self, nearest: np.ndarray) -> None:
        covers = self.covers
        size = np.bincount(covers.cover_of, minlength=covers.leader.size)
        take = size >= 2
        if self.thresholds.size:  # lonely rows with a neighbour closer than the limit
            close = nearest[self.prepared.rows] < self.thresholds[-1]
            take[covers.cover_of[close]] = True
        target = max(256, self.row_block // 8)
        with _one_thread():
            for rows, cols in _cover_batches(covers, self.prepared.rows, take, target):
                self._batch(rows, cols)

    def _batch(self, rows: np.ndarray, cols: np.ndarray) -> None:
        device = self.units.device
        rows_t = torch.as_tensor(rows, device=device)
        cols_t = torch.as_tensor(cols, device=device)
        edges: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        for r0 in range(0, rows.size, self.row_block):
            for c0 in range(0, cols.size, self.col_block):
                part = self._tile(rows_t[r0 : r0 + self.row_block], cols_t, r0, c0)
                if part is not None:
                    edges.append(part)
        if edges:
            self._add_edges(*(np.concatenate(x) for x in zip(*edges, strict=True)))

    def _tile(
        self, rows: torch.Tensor, cols_all: torch.Tensor, r0: int, c0: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        cols = cols_all[c0 : c0 + self.col_block]
        units, sq = self.units, self.prepared.sq
        d2 = sq[rows][:, None] + sq[cols][None, :] - 2.0 * (units[rows] @ units[cols].T)
        d2.clamp_min_(0.0)
        d2.diagonal(offset=r0 - c0).fill_(math.inf)  # columns start with the batch rows
        self.search.fold(d2.neg(), rows, cols)
        if self.thresholds.size == 0:
            return None
        limit = float(self.thresholds[-1])
        ii, jj = (d2 < limit * limit + _REFINE_BAND).nonzero(as_tuple=True)
        gi, gj = rows[ii], cols[jj]
        ci, cj = self.cover_g[gi], self.cover_g[gj]
        # Each unordered pair once: from the row in the lower cover (or lower index).
        once = (cj > ci) | ((cj == ci) & (gj > gi))
        ii, jj, gi, gj = ii[once], jj[once], gi[once], gj[once]
        dist2 = d2[ii, jj]
        dist = dist2.sqrt()
        near = torch.zeros_like(dist2, dtype=torch.bool)
        for t in self.thresholds.tolist():
            near |= (dist2 - t * t).abs() < _REFINE_BAND
        idx = near.nonzero().squeeze(1)
        if idx.numel():
            dist[idx] = torch.linalg.vector_norm(units[gi[idx]] - units[gj[idx]], dim=1)
        keep = dist < limit
        return _numpy(gi[keep]), _numpy(gj[keep]), dist[keep].cpu().numpy()

    def _add_edges(self, i: np.ndarray, j: np.ndarray, d: np.ndarray) -> None:
        lo, hi = np.minimum(i, j), np.maximum(i, j)
        nodes, inverse = np.unique(np.concatenate([lo, hi]), return_inverse=True)
        if d.size > 2 * nodes.size:  # reduce the batch to its own forest (cycle property)
            m = d.size
            li, lj, d = _minimum_spanning_forest(nodes.size, inverse[:m], inverse[m:], d)
            lo, hi = nodes[li], nodes[lj]
        self.forest.add(lo, hi, d)


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run many small tensor ops on one intra-op thread, then restore the setting.

    Small tiles gain nothing from OpenMP, and on a busy machine every barrier can
    stall: measured on the shared 2-core box under load 5, the neighbourhood pass of
    the 65,536 collapsed benchmark took 47 s with 2 threads and 1.3 s with one.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _odd_edges(
    units: torch.Tensor, prepared: _Prepared, limit: float, forest: _SpanningForest
) -> None:
    """Edges shorter than ``limit`` at zero and tiny rows, by direct distances."""
    odd = (~prepared.regular).nonzero().squeeze(1)
    if odd.numel() == 0:
        return
    zero = _numpy(odd[prepared.sq[odd] == 0])
    tiny = _numpy(odd[prepared.sq[odd] != 0])
    k = units.shape[0]
    skip = np.zeros(k, dtype=bool)
    skip[zero[1:]] = True  # zero rows are one vector: the first stands for the others
    src: list[np.ndarray] = []
    dst: list[np.ndarray] = []
    dist: list[np.ndarray] = []
    if zero.size:
        src.append(np.full(zero.size - 1, zero[0]))
        dst.append(zero[1:])
        dist.append(np.zeros(zero.size - 1))
        norms = _row_norms(units)
        j = np.flatnonzero((norms < limit) & ~skip)
        j = j[j != zero[0]]
        src.append(np.full(j.size, zero[0]))
        dst.append(j)
        dist.append(norms[j])
    for t in tiny.tolist():
        d = _distances_to_all(units, t)
        d[t] = math.inf
        j = np.flatnonzero((d < limit) & ~skip)
        src.append(np.full(j.size, t))
        dst.append(j)
        dist.append(d[j])
    i, j, d = np.concatenate(src), np.concatenate(dst), np.concatenate(dist)
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    _, first = np.unique(lo * k + hi, return_index=True)  # a pair seen from both ends
    forest.add(lo[first], hi[first], d[first])


def _row_norms(units: torch.Tensor) -> np.ndarray:
    """||mu_j|| = ||0 - mu_j||: the direct distance of every row to a zero row."""
    parts = [torch.linalg.vector_norm(c, dim=1) for c in units.split(_NORMALIZE_ROWS)]
    return torch.cat(parts).cpu().numpy()


def _distances_to_all(units: torch.Tensor, t: int) -> np.ndarray:
    """Direct distances from row t to every row (float64 numpy [K])."""
    row = units[t]
    parts = [torch.linalg.vector_norm(c - row, dim=1) for c in units.split(_NORMALIZE_ROWS)]
    return torch.cat(parts).cpu().numpy()


def _nearest_and_short_curve(
    units: torch.Tensor, block_size: int, prepared: _Prepared, eps_sorted: np.ndarray
) -> tuple[np.ndarray, dict[float, int]]:
    """Exact nearest-neighbour distances, and M(eps) for the eps up to the covers' eps.

    Lonely rows (one-member covers; all regular rows if the covers were given up) are
    screened in float32 against all rows; the rows of multi-member covers in float64
    against their neighbourhoods, a pass that also collects every edge shorter than
    the covers' eps. Larger eps are left to ``_curve_from_nearest``.
    """
    k = units.shape[0]
    best = np.full(k, math.inf)
    covers = prepared.covers
    short = eps_sorted[eps_sorted <= prepared.eps] if covers is not None else eps_sorted[:0]
    forest = _SpanningForest(k)
    rows, x = prepared.rows, prepared.x
    if rows.size >= 2 and x is not None:
        search = _NearestSearch(units, rows, x, block_size)
        if covers is not None:
            size = np.bincount(covers.cover_of, minlength=covers.leader.size)
            lonely = np.flatnonzero(size[covers.cover_of] == 1)
        else:
            lonely = np.arange(rows.size)
        covered = np.setdiff1d(np.arange(rows.size), lonely)
        if lonely.size:
            lonely_t = torch.as_tensor(lonely, device=x.device)
            search.symmetric(lonely_t)
            if covered.size:
                search.rect(lonely_t, torch.as_tensor(covered, device=x.device), False)
        best[rows] = search.finish()
        if covers is not None:
            hoods = _Neighbourhoods(units, prepared, block_size, short)
            hoods.run(best)
            np.minimum(best, hoods.search.finish(), out=best)
            forest = hoods.forest
    _nearest_odd_rows(units, prepared, best)
    counts: dict[float, int] = {}
    if short.size:
        _odd_edges(units, prepared, float(short[-1]), forest)
        merges = np.searchsorted(forest.sorted_lengths(), short, side="left")
        counts = {float(e): int(k - n) for e, n in zip(short, merges, strict=True)}
    return best, counts


def _nearest_odd_rows(units: torch.Tensor, prepared: _Prepared, best: np.ndarray) -> None:
    """Fold zero and tiny rows (not unit vectors) into ``best``, by direct distances.

    Zero rows are all the same vector: 0 apart, and ||0 - mu_j|| = ||mu_j|| from every
    other row. Tiny rows (norm < 1e-12, left short by ``F.normalize``) are rare: each is
    measured directly against every row.
    """
    odd = (~prepared.regular).nonzero().squeeze(1)
    if odd.numel() == 0:
        return
    zero = _numpy(odd[prepared.sq[odd] == 0])
    tiny = odd[prepared.sq[odd] != 0]
    k = units.shape[0]
    if zero.size:
        nonzero = np.setdiff1d(np.arange(k), zero)
        norms = _row_norms(units)
        best[nonzero] = np.minimum(best[nonzero], norms[nonzero])
        if zero.size >= 2:
            best[zero] = 0.0
        elif nonzero.size:
            best[zero] = norms[nonzero].min()
    for t in _numpy(tiny).tolist():
        d = _distances_to_all(units, t)
        d[t] = math.inf
        best[t] = min(best[t], float(d.min()))
        np.minimum(best, d, out=best)


# --- uniqueness curve from nearest neighbours -------------------------------------------


def _long_curve(
    units: torch.Tensor,
    prepared: _Prepared,
    nearest: np.ndarray,
    eps_long: np.ndarray,
    block_size: int,
) -> dict[float, int]:
    """M(eps) for eps above the covers' eps, by linking the same covers.

    Every member is closer than the covers' eps <= eps to its leader, so each cover
    lies in one component; covers A, B can be linked only if d(L_A, L_B) < eps + r_A +
    r_B, and only covers holding a row with a neighbour closer than eps take part.
    Their leaders are screened (float32, with the margin), then ``_link_covers``
    decides exactly, continuing one union-find over ascending eps. Stops (leaving the
    rest to ``_curve_from_nearest``) where the leader graph is too dense, and leaves
    heads with zero or tiny rows to it altogether.
    """
    covers, rows, x = prepared.covers, prepared.rows, prepared.x
    if covers is None or x is None or not bool(prepared.regular.all()):
        return {}
    n_cov = covers.leader.size
    sets = _DisjointSet(n_cov)
    rmax = np.zeros(n_cov, dtype=np.float64)
    np.maximum.at(rmax, covers.cover_of, covers.radius)
    cover_nn = np.full(n_cov, math.inf)
    np.minimum.at(cover_nn, covers.cover_of, nearest[rows])
    margin = _screen_margin(x.shape[1], x.dtype)
    out: dict[float, int] = {}
    for eps in eps_long.tolist():
        q = np.flatnonzero(cover_nn < eps)
        reach = (eps + 2.0 * float(rmax[q].max(initial=0.0))) * (1.0 + 1e-6) + 1e-9
        limit = max(_DENSE_LEADER_PAIRS, 4 * rows.size)
        try:
            pa, pb = _close_pairs(x, covers.leader[q], reach, margin, block_size, limit)
        except _TooDense:
            break
        pa, pb = q[pa], q[pb]
        alive = sets.find(pa) != sets.find(pb)
        batch = _Covers(covers.leader, covers.cover_of, covers.radius, pa[alive], pb[alive])
        try:
            _link_covers(units, rows, batch, eps, give_up=True, sets=sets)
        except _TooDense:
            break
        out[float(eps)] = int(np.unique(sets.roots()).size)
    return out


def _close_pairs(
    x: torch.Tensor, pos: np.ndarray, reach: float, margin: float, block_size: int, limit: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs a < b of indices into ``pos`` whose screened distance may be below reach.

    Raises ``_TooDense`` as soon as more than ``limit`` pairs are found.
    """
    if pos.size < 2:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    xl = x[torch.as_tensor(pos, device=x.device)]
    thr = 1.0 - (reach * reach + margin) / 2.0
    src: list[np.ndarray] = []
    dst: list[np.ndarray] = []
    found = 0
    for r0 in range(0, pos.size, block_size):
        sim = xl[r0 : r0 + block_size] @ xl[r0:].T
        a, b = torch.triu(sim > thr, diagonal=1).nonzero(as_tuple=True)
        src.append(_numpy(a) + r0)
        dst.append(_numpy(b) + r0)
        found += a.numel()
        if found > limit:
            raise _TooDense
    return np.concatenate(src), np.concatenate(dst)


def _curve_from_nearest(
    units: torch.Tensor,
    eps_sorted: np.ndarray,
    nearest: np.ndarray,
    block_size: int,
    known: dict[float, int],
) -> list[tuple[float, int]]:
    """M(eps) for each eps: rows whose nearest neighbour is >= eps are singletons.

    Only the rows with a neighbour closer than eps can share a component; their
    components are counted exactly by ``_components`` on that subset (greedy leaders,
    the brute force where the leader graph is dense). ``known`` holds counts already
    computed (the summary's own eps).
    """
    k = units.shape[0]
    out: list[tuple[float, int]] = []
    for eps in eps_sorted.tolist():
        inside = np.flatnonzero(nearest < eps)
        if eps in known:
            m = known[eps]
        elif inside.size == 0:
            m = k
        else:
            sub = units if inside.size == k else units[torch.as_tensor(inside, device=units.device)]
            # Leaders at any eps: on these rows the give-up rule, not an eps cap, decides.
            comp = _components(sub, eps, block_size, max_auto_eps=math.inf)
            m = (k - inside.size) + int(comp.max()) + 1
        out.append((float(eps), int(m)))
    return out


# --- results ---------------------------------------------------------------------------


def _canonical_labels(roots: np.ndarray) -> np.ndarray:
    """Renumber components 0..M-1 in order of their smallest member index."""
    _, first, inverse = np.unique(roots, return_index=True, return_inverse=True)
    relabel = np.empty(first.size, dtype=np.int64)
    relabel[np.argsort(first)] = np.arange(first.size)
    return relabel[inverse.reshape(-1)]


def _make_result(labels: np.ndarray, eps: float) -> UniqueResult:
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
