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
    weights: torch.Tensor, eps: float = DEFAULT_EPS, block_size: int = 2048
) -> UniqueResult:
    """Count unique prototypes M (Govindarajan et al.): components of the eps-graph.

    Prototypes i and j are linked when ``||mu_i - mu_j|| < eps`` (strictly), with
    ``mu = w / ||w||``; M is the number of connected components (single linkage).
    Distances are computed in float64, ``block_size`` x ``block_size`` tiles at a
    time, and merged with a union-find, so memory stays O(K + block_size^2).

    Args:
        weights: prototype matrix [K, p] (e.g. DINO's ``last_layer.weight``).
        eps: linking distance between unit directions (> 0).
        block_size: tile edge length; smaller uses less memory, same result.

    Example:
        >>> w = torch.randn(100, 32)
        >>> count_unique_prototypes(torch.cat([w, w])).num_unique
        100
    """
    _check_eps(eps)
    scan = _scan(_unit_directions(weights, block_size), block_size, link_eps=eps)
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
    """Validated float64 unit directions, on the input's device (CPU for MPS: no float64)."""
    _check_weights(weights)
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1 (got {block_size})")
    w = weights.detach()
    if w.device.type == "mps":
        w = w.cpu()
    w = w.to(torch.float64)
    # A diverged checkpoint must not be reported as "no collapse" (NaN compares False).
    if not torch.isfinite(w).all():
        raise ValueError("weights contain NaN or inf; the checkpoint is probably diverged")
    return F.normalize(w, dim=1)


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
