"""The exact reference algorithm: one blocked float64 pass over all pairs (K^2 p work).

Distances are computed tile by tile (``block_size`` x ``block_size`` Gram tiles, never a
K x K matrix), and pairs near a threshold are re-measured directly, so every decision
agrees with the direct float64 ``||mu_i - mu_j||``. One pass can feed union-find at one
eps (the count M), a minimum spanning forest (the curve at every eps up to its largest)
and running nearest neighbours; the fast paths fall back to it where their screens
would not pay off.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from protossl.diagnostics.unique import constants
from protossl.diagnostics.unique.distances import np_index
from protossl.diagnostics.unique.graph import DisjointSet, SpanningForest
from protossl.diagnostics.unique.result import UniqueResult, canonical_labels, make_result

# (r0, r1, c0, c1): rows r0..r1-1 against columns c0..c1-1.
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

    Distances within ``constants.REFINE_BAND`` of any threshold (in squared units) are
    re-measured directly, so every ``d < t`` decision matches the direct formula.
    """
    r0, _, c0, _ = tile
    limit = float(thresholds.max())
    cand = d2 < limit * limit + constants.REFINE_BAND
    if r0 == c0:
        cand.triu_(diagonal=1)  # diagonal tile: each pair once, no self-pairs
    ii, jj = cand.nonzero(as_tuple=True)
    dist2 = d2[ii, jj]
    ii, jj = ii + r0, jj + c0
    dist = dist2.sqrt()
    near = torch.zeros_like(dist2, dtype=torch.bool)
    for t in thresholds.tolist():
        near |= (dist2 - t * t).abs() < constants.REFINE_BAND
    idx = near.nonzero(as_tuple=True)[0]
    for s in range(0, idx.numel(), constants.REFINE_CHUNK):
        sel = idx[s : s + constants.REFINE_CHUNK]
        dist[sel] = torch.linalg.vector_norm(units[ii[sel]] - units[jj[sel]], dim=1)
    keep = dist < limit
    return np_index(ii[keep]), np_index(jj[keep]), dist[keep].cpu().numpy()


class _NearestNeighbors:
    """Running nearest-neighbour index of every prototype, folded in tile by tile.

    Not ``protossl.core.neighbours.tiled_best``: this pass visits each pair once (upper
    tiles, K^2 / 2 work) and shares its Gram tiles with the union-find and the forest,
    so a tile must inform its columns as well as its rows. The row-only tiled search
    would do twice the work, and would score pair (i, j), i > j, from the other
    orientation of the Gram product, whose rounding can pick another of two near-tied
    neighbours (and so report another re-measured float64 distance).
    """

    def __init__(self, k: int, device: torch.device) -> None:
        self.best = torch.full((k,), math.inf, dtype=torch.float64, device=device)
        self.arg = torch.zeros(k, dtype=torch.long, device=device)

    def update(self, d2: torch.Tensor, tile: Tile) -> None:
        """Fold one tile of squared distances into its rows' and columns' minima."""
        r0, _, c0, _ = tile
        if r0 == c0:
            d2 = d2.clone().fill_diagonal_(math.inf)  # a prototype is not its own neighbour
        # Tiles cover i < j only, so each tile informs both its rows and its columns.
        self._fold(r0, *d2.min(dim=1), offset=c0)
        self._fold(c0, *d2.min(dim=0), offset=r0)

    def _fold(self, start: int, values: torch.Tensor, idx: torch.Tensor, offset: int) -> None:
        """Keep, for rows start.., the smaller of the running and the tile's minimum."""
        end = start + values.numel()
        better = values < self.best[start:end]
        self.best[start:end] = torch.where(better, values, self.best[start:end])
        self.arg[start:end] = torch.where(better, idx + offset, self.arg[start:end])

    def distances(self, units: torch.Tensor) -> torch.Tensor:
        """Direct float64 distance to each row's nearest neighbour (CPU; [inf] for K = 1)."""
        if units.shape[0] == 1:
            return torch.full((1,), math.inf, dtype=torch.float64)
        # Re-measure directly: the Gram form loses digits for nearly equal directions.
        return torch.linalg.vector_norm(units - units[self.arg], dim=1).cpu()


@dataclass
class Scan:
    """Accumulators of one pass over all pairs; each is None when not requested."""

    units: torch.Tensor
    link: tuple[float, DisjointSet] | None  # union-find at one eps
    forest: tuple[np.ndarray, SpanningForest] | None  # spanning forest for sorted eps values
    nearest: _NearestNeighbors | None

    def visit(self, tile: Tile, thresholds: np.ndarray) -> None:
        """Feed one tile to every requested accumulator."""
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
        """The components at ``link_eps``."""
        if self.link is None:
            raise RuntimeError("this scan did not link prototypes")
        eps, sets = self.link
        return make_result(canonical_labels(sets.roots()), eps)

    def curve(self) -> list[tuple[float, int]]:
        """(eps, M) for each curve eps: M(eps) = K - #{forest edges shorter than eps}."""
        if self.forest is None:
            raise RuntimeError("this scan did not build a spanning forest")
        eps_sorted, forest = self.forest
        k = self.units.shape[0]
        merges = np.searchsorted(forest.sorted_lengths(), eps_sorted, side="left")
        return [(float(e), int(k - n)) for e, n in zip(eps_sorted, merges, strict=True)]

    def nearest_distances(self) -> torch.Tensor:
        """Nearest-neighbour distance of every prototype."""
        if self.nearest is None:
            raise RuntimeError("this scan did not track nearest neighbours")
        return self.nearest.distances(self.units)


def scan(
    units: torch.Tensor,
    block_size: int,
    link_eps: float | None = None,
    curve_eps: np.ndarray | None = None,
    nearest: bool = False,
) -> Scan:
    """One blocked pass: union-find at ``link_eps``, forest up to max(``curve_eps``), NN."""
    k = units.shape[0]
    acc = Scan(
        units=units,
        link=(link_eps, DisjointSet(k)) if link_eps is not None else None,
        forest=(curve_eps, SpanningForest(k)) if curve_eps is not None else None,
        nearest=_NearestNeighbors(k, units.device) if nearest else None,
    )
    wanted = [link_eps] if link_eps is not None else []
    wanted += curve_eps.tolist() if curve_eps is not None else []
    thresholds = np.array(sorted(set(wanted)), dtype=np.float64)
    for tile in _upper_tiles(k, block_size):
        acc.visit(tile, thresholds)
    return acc


def brute_labels(units: torch.Tensor, eps: float, block_size: int) -> np.ndarray:
    """Canonical component labels at eps from one pass over all pairs."""
    sets = scan(units, block_size, link_eps=eps).link
    assert sets is not None
    return canonical_labels(sets[1].roots())


def brute_curve(
    units: torch.Tensor, eps_sorted: np.ndarray, block_size: int
) -> list[tuple[float, int]]:
    """M for each of ``eps_sorted`` from one pass at the largest eps (spanning forest)."""
    return scan(units, block_size, curve_eps=eps_sorted).curve()


def brute_nearest(units: torch.Tensor, block_size: int) -> torch.Tensor:
    """Nearest-neighbour distances from one pass over all pairs (argmin re-measured)."""
    return scan(units, block_size, nearest=True).nearest_distances()
