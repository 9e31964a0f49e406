"""Unique prototypes M: the measure of partial prototype collapse.

Clustering-based self-supervised methods (DINO, Caron et al. 2021, "Emerging
Properties in Self-Supervised Vision Transformers"; iBOT; MSN) are configured with
K prototypes but learn far fewer distinct ones. Following Govindarajan et al.,
"On Partial Prototype Collapse in Clustering-Based Self-Supervised Learning", we
normalize every prototype, link two prototypes when the Euclidean distance between
their directions is below ``eps`` (default 0.025), and report the number M of
connected components (single linkage: a chain a-b, b-c is one group even when a and
c are far apart). M does not depend on the order of the prototypes.

Everything here is exact (decisions agree with ``||mu_i - mu_j|| < eps`` computed
directly in float64) and memory-bounded: distances are computed tile by tile
(``block_size x block_size`` via one matmul each), never as a K x K matrix.

Example:
    >>> import torch
    >>> w = torch.randn(8, 16)
    >>> w = torch.cat([w, 3.0 * w[:2]])  # two rescaled copies: same directions
    >>> count_unique_prototypes(w).num_unique
    8
"""

from __future__ import annotations

import math
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
"""Roughly logarithmic grid of eps values for the uniqueness curve."""

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
    if method not in _METHODS:
        raise ValueError(f"method must be one of {', '.join(_METHODS)} (got {method!r})")
    units = _unit_directions(weights, block_size)
    k = units.shape[0]
    auto_leaders = method == "auto" and k >= _AUTO_MIN_K and eps <= _AUTO_MAX_EPS
    if method == "leaders" or auto_leaders:
        try:
            comp = _leader_components(units, eps, block_size, give_up=auto_leaders)
            return _make_result(_canonical_labels(comp), eps)
        except _TooDense:
            pass  # auto only: the brute force is cheaper for this graph
    scan = _scan(units, block_size, link_eps=eps)
    return scan.unique_result()


def uniqueness_curve(
    weights: torch.Tensor, eps_values: Sequence[float] = DEFAULT_EPS_GRID, block_size: int = 2048
) -> list[tuple[float, int]]:
    """M for each eps, ascending: the uniqueness curve (Govindarajan et al.).

    One distance pass at the largest eps. Single linkage is Kruskal's algorithm
    stopped at eps, so the edges are reduced to a minimum spanning forest as they
    arrive (bounded memory); sweeping eps upwards over the forest's sorted edge
    lengths, each edge shorter than eps merges two components: M(eps) = K - #{d < eps}.

    Example:
        >>> w = torch.randn(50, 8)
        >>> [m for _, m in uniqueness_curve(torch.cat([w, w]), [0.01, 0.1])]
        [50, 50]
    """
    eps_sorted = _check_eps_values(eps_values)
    scan = _scan(_unit_directions(weights, block_size), block_size, curve_eps=eps_sorted)
    return scan.curve()


def nearest_neighbor_distances(weights: torch.Tensor, block_size: int = 2048) -> torch.Tensor:
    """Distance from each normalized prototype to its nearest other one (float64, CPU, [K]).

    The quantity KoLeo-proto pushes up; its quantiles show contraction before
    duplicates appear. The nearest neighbour is found tile by tile, then its
    distance is re-measured directly (accurate to ~1e-7). K = 1 gives ``[inf]``.

    Example:
        >>> nearest_neighbor_distances(torch.eye(2))
        tensor([1.4142, 1.4142], dtype=torch.float64)
    """
    scan = _scan(_unit_directions(weights, block_size), block_size, nearest=True)
    return scan.nearest_distances()


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
) -> dict:
    """A JSON-ready collapse report for one prototype matrix (Govindarajan et al.).

    Keys: ``K``, ``M``, ``M_over_K``, ``eps``, ``uniqueness_curve`` ([[eps, M], ...]),
    ``largest_groups`` (the ``top_groups`` largest component sizes),
    ``nn_distance_quantiles`` (empty for K = 1) and ``norm_quantiles`` of the raw row
    norms (for vMF heads the norm is kappa * tau; for DINO's weight-normalized layer it is 1).

    Example:
        >>> s = summarize_prototypes(torch.randn(64, 16))
        >>> (s["K"], s["M"], s["largest_groups"][:2])
        (64, 64, [1, 1])
    """
    if top_groups < 0:
        raise ValueError(f"top_groups must be >= 0 (got {top_groups})")
    _check_eps(eps)
    units = _unit_directions(weights, block_size)
    # One pass serves all three measures: the distance tiles dominate the cost.
    scan = _scan(units, block_size, eps, _check_eps_values(eps_grid), nearest=True)
    result = scan.unique_result()
    norms = torch.linalg.vector_norm(weights.detach().to("cpu", torch.float64), dim=1)
    nn = scan.nearest_distances()
    return {
        "K": result.num_prototypes,
        "M": result.num_unique,
        "M_over_K": result.fraction,
        "eps": float(eps),
        "uniqueness_curve": [[e, m] for e, m in scan.curve()],
        "largest_groups": result.group_sizes[:top_groups],
        "nn_distance_quantiles": distance_quantiles(nn) if nn.numel() > 1 else {},
        "norm_quantiles": distance_quantiles(norms),
    }


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
    units: torch.Tensor, rows: np.ndarray, covers: _Covers, eps: float, give_up: bool
) -> _DisjointSet:
    """Union-find over covers, merged wherever a member pair is exactly linked."""
    n_cov = covers.leader.size
    sets = _DisjointSet(n_cov)
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


def _leader_components(
    units: torch.Tensor, eps: float, block_size: int, give_up: bool = False
) -> np.ndarray:
    """Component id of every prototype (exact, as the brute force), via greedy leaders.

    Rows that are not unit vectors (zero rows; rows too small for ``F.normalize`` to
    scale) are linked to every row by the brute force's tile rule; all zero rows are
    the same vector, so one of them stands for all. Raises ``_TooDense`` when
    ``give_up`` and the leader graph is too dense to pay off.
    """
    k = units.shape[0]
    sq = _squared_norms(units)
    regular = (sq - 1.0).abs() <= _REGULAR_TOL
    rows = _numpy(regular.nonzero().squeeze(1))
    src: list[np.ndarray] = []
    dst: list[np.ndarray] = []
    if rows.size:
        covers = _CoverBuilder(units, rows, eps, block_size, give_up).build()
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
