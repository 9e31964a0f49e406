"""Exact nearest-neighbour distances, and the uniqueness curve up to the covers' eps.

The nearest-neighbour distance of row i is min_j ||mu_i - mu_j||, measured directly in
float64 like every link decision. Greedy covers at eps c (members closer than c to
their leader; built once, see ``cover``) split the rows in two:

- Rows of a cover of two or more have a neighbour closer than c (their leader, or for
  a leader its closest member), so their nearest neighbour j* is closer than c and
  d(L_i, L_j*) <= r_i + d(i, j*) + r_j* < 3 c: j* lies in the row's own cover or in a
  cover whose leader the cover builder already listed within 3 c. The same holds for
  every edge shorter than c. Those neighbourhoods are measured as float64 Gram tiles
  (``_Neighbourhoods``): nearest candidates within ``constants.REFINE_BAND`` of the
  minimum are re-measured directly, and the edges shorter than the largest curve
  eps <= c (re-measured directly near each eps, as the brute force does) are reduced
  to a minimum spanning forest: M(eps) = K - #{forest edges < eps} for those eps.
- Rows alone in their cover ("lonely") are screened against all rows in float32: the
  margin m = ``screen_margin`` bounds |d^2 - (2 - 2 g~)| for the screened dot
  products g~, so the true nearest j* has g~(j*) >= max_j g~(j) - m. Every entry
  within m (plus the threshold's rounding) of the row's running maximum is kept, tile
  by tile, and the few kept are re-measured directly. Lonely x lonely is one
  symmetric pass (each tile informs its rows and its columns: K^2 / 2), lonely x
  covered a rectangle.

Above c, every cover lies in one component, so the curve links the same covers
(``curve.long_curve``); only covers holding a row closer than eps to another take part.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from protossl.diagnostics.unique import constants
from protossl.diagnostics.unique.constants import DEFAULT_EPS
from protossl.diagnostics.unique.cover import Covers, Prepared, prepare
from protossl.diagnostics.unique.distances import (
    direct_distances,
    distances_to_all,
    np_index,
    row_norms,
    screen_margin,
)
from protossl.diagnostics.unique.graph import SpanningForest, minimum_spanning_forest
from protossl.diagnostics.unique.threads import one_thread


class _NearestSearch:
    """Screened nearest-neighbour candidates among regular rows (positions 0..R-1).

    Not ``protossl.core.neighbours``: a top-k keeps a fixed number of keys per row, but
    exactness here needs every key within the slack of the row's running maximum (any
    number of them, all re-measured in float64), and ``symmetric`` folds each tile into
    its rows and its columns (K^2 / 2 work).
    """

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
        self.slack = (screen_margin(p, x.dtype) if slack is None else slack) + rounding
        self.best = torch.full((r,), -math.inf, dtype=x.dtype, device=x.device)
        self.owner: list[torch.Tensor] = []
        self.other: list[torch.Tensor] = []
        self.value: list[torch.Tensor] = []
        self.row_block = block_size
        self.col_block = max(4 * block_size, 1024)
        self._buf: torch.Tensor | None = None  # reused tile buffer, allocated on first use

    def _mm(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """a @ b.T into the reused tile buffer."""
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
        own, oth = np_index(owner[keep]), np_index(other[keep])
        np.minimum.at(out, own, direct_distances(self.units, self.rows[own], self.rows[oth]))
        return out


def _gather_ranges(values: np.ndarray, start: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Concatenation of values[start[i]:start[i + 1]] for i in ids (vectorized)."""
    lens = start[ids + 1] - start[ids]
    total = int(lens.sum())
    offsets = np.repeat(start[ids] - (np.cumsum(lens) - lens), lens)
    return values[offsets + np.arange(total)]


def _cover_batches(
    covers: Covers, rows: np.ndarray, take: np.ndarray, target_rows: int
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
        yield (rows[batch], rows[np.concatenate([batch, _gather_ranges(members, start, near)])])


class _Neighbourhoods:
    """One float64 pass over cover neighbourhoods: nearest neighbours and short edges.

    For the rows of multi-member covers (and lonely rows closer than the largest
    threshold to another) the distances to their neighbourhood's columns are computed
    as float64 Gram tiles, by the brute force's own formula: nearest-neighbour
    candidates are kept within ``constants.REFINE_BAND`` of each row's minimum and
    re-measured directly; the edges shorter than the largest threshold (re-measured
    directly near every threshold, as the brute force does) feed a minimum spanning
    forest. Every edge shorter than the covers' eps lies within a neighbourhood (module
    docstring), so the forest gives M(eps) = K - #{forest edges < eps} for those eps.
    """

    def __init__(
        self, units: torch.Tensor, prepared: Prepared, block_size: int, thresholds: np.ndarray
    ) -> None:
        assert prepared.covers is not None
        self.units, self.prepared, self.thresholds = units, prepared, thresholds
        self.covers = prepared.covers
        k = units.shape[0]
        cover_g = np.full(k, -1, dtype=np.int64)
        cover_g[prepared.rows] = self.covers.cover_of
        self.cover_g = torch.as_tensor(cover_g, device=units.device)
        self.search = _NearestSearch(units, np.arange(k), units, block_size, constants.REFINE_BAND)
        self.forest = SpanningForest(k)
        self.row_block = block_size
        self.col_block = max(4 * block_size, 1024)

    def run(self, nearest: np.ndarray) -> None:
        """Measure every taken cover's neighbourhood, batch by batch (one thread)."""
        covers = self.covers
        size = np.bincount(covers.cover_of, minlength=covers.leader.size)
        take = size >= 2
        if self.thresholds.size:  # lonely rows with a neighbour closer than the limit
            close = nearest[self.prepared.rows] < self.thresholds[-1]
            take[covers.cover_of[close]] = True
        target = max(256, self.row_block // 8)
        with one_thread():
            for rows, cols in _cover_batches(covers, self.prepared.rows, take, target):
                self._batch(rows, cols)

    def _batch(self, rows: np.ndarray, cols: np.ndarray) -> None:
        """One batch: its rows against its columns, tile by tile; its edges to the forest."""
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
        """Fold one tile into the nearest search; its edges below the largest threshold."""
        cols = cols_all[c0 : c0 + self.col_block]
        units, sq = self.units, self.prepared.sq
        d2 = sq[rows][:, None] + sq[cols][None, :] - 2.0 * (units[rows] @ units[cols].T)
        d2.clamp_min_(0.0)
        d2.diagonal(offset=r0 - c0).fill_(math.inf)  # columns start with the batch rows
        self.search.fold(d2.neg(), rows, cols)
        if self.thresholds.size == 0:
            return None
        limit = float(self.thresholds[-1])
        ii, jj = (d2 < limit * limit + constants.REFINE_BAND).nonzero(as_tuple=True)
        gi, gj = rows[ii], cols[jj]
        ci, cj = self.cover_g[gi], self.cover_g[gj]
        # Each unordered pair once: from the row in the lower cover (or lower index).
        once = (cj > ci) | ((cj == ci) & (gj > gi))
        ii, jj, gi, gj = ii[once], jj[once], gi[once], gj[once]
        dist2 = d2[ii, jj]
        dist = dist2.sqrt()
        near = torch.zeros_like(dist2, dtype=torch.bool)
        for t in self.thresholds.tolist():
            near |= (dist2 - t * t).abs() < constants.REFINE_BAND
        idx = near.nonzero().squeeze(1)
        if idx.numel():
            dist[idx] = torch.linalg.vector_norm(units[gi[idx]] - units[gj[idx]], dim=1)
        keep = dist < limit
        return np_index(gi[keep]), np_index(gj[keep]), dist[keep].cpu().numpy()

    def _add_edges(self, i: np.ndarray, j: np.ndarray, d: np.ndarray) -> None:
        """Add a batch's edges to the forest, first reduced to their own forest if many."""
        lo, hi = np.minimum(i, j), np.maximum(i, j)
        nodes, inverse = np.unique(np.concatenate([lo, hi]), return_inverse=True)
        if d.size > 2 * nodes.size:  # reduce the batch to its own forest (cycle property)
            m = d.size
            li, lj, d = minimum_spanning_forest(nodes.size, inverse[:m], inverse[m:], d)
            lo, hi = nodes[li], nodes[lj]
        self.forest.add(lo, hi, d)


def _odd_edges(
    units: torch.Tensor, prepared: Prepared, limit: float, forest: SpanningForest
) -> None:
    """Edges shorter than ``limit`` at zero and tiny rows, by direct distances."""
    odd = (~prepared.regular).nonzero().squeeze(1)
    if odd.numel() == 0:
        return
    zero = np_index(odd[prepared.sq[odd] == 0])
    tiny = np_index(odd[prepared.sq[odd] != 0])
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
        norms = row_norms(units)
        j = np.flatnonzero((norms < limit) & ~skip)
        j = j[j != zero[0]]
        src.append(np.full(j.size, zero[0]))
        dst.append(j)
        dist.append(norms[j])
    for t in tiny.tolist():
        d = distances_to_all(units, t)
        d[t] = math.inf
        j = np.flatnonzero((d < limit) & ~skip)
        src.append(np.full(j.size, t))
        dst.append(j)
        dist.append(d[j])
    i, j, d = np.concatenate(src), np.concatenate(dst), np.concatenate(dist)
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    _, first = np.unique(lo * k + hi, return_index=True)  # a pair seen from both ends
    forest.add(lo[first], hi[first], d[first])


def nearest_and_short_curve(
    units: torch.Tensor, block_size: int, prepared: Prepared, eps_sorted: np.ndarray
) -> tuple[np.ndarray, dict[float, int]]:
    """Exact nearest-neighbour distances, and M(eps) for the eps up to the covers' eps.

    Lonely rows (one-member covers; all regular rows if the covers were given up) are
    screened in float32 against all rows; the rows of multi-member covers in float64
    against their neighbourhoods, a pass that also collects every edge shorter than
    the covers' eps. Larger eps are left to ``curve.curve_from_nearest``.
    """
    k = units.shape[0]
    best = np.full(k, math.inf)
    covers = prepared.covers
    short = eps_sorted[eps_sorted <= prepared.eps] if covers is not None else eps_sorted[:0]
    forest = SpanningForest(k)
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


def _nearest_odd_rows(units: torch.Tensor, prepared: Prepared, best: np.ndarray) -> None:
    """Fold zero and tiny rows (not unit vectors) into ``best``, by direct distances.

    Zero rows are all the same vector: 0 apart, and ||0 - mu_j|| = ||mu_j|| from every
    other row. Tiny rows (norm < 1e-12, left short by ``F.normalize``) are rare: each is
    measured directly against every row.
    """
    odd = (~prepared.regular).nonzero().squeeze(1)
    if odd.numel() == 0:
        return
    zero = np_index(odd[prepared.sq[odd] == 0])
    tiny = odd[prepared.sq[odd] != 0]
    k = units.shape[0]
    if zero.size:
        nonzero = np.setdiff1d(np.arange(k), zero)
        norms = row_norms(units)
        best[nonzero] = np.minimum(best[nonzero], norms[nonzero])
        if zero.size >= 2:
            best[zero] = 0.0
        elif nonzero.size:
            best[zero] = norms[nonzero].min()
    for t in np_index(tiny).tolist():
        d = distances_to_all(units, t)
        d[t] = math.inf
        best[t] = min(best[t], float(d.min()))
        np.minimum(best, d, out=best)


def fast_nearest(units: torch.Tensor, block_size: int) -> torch.Tensor:
    """Exact nearest-neighbour distances via greedy covers at the default eps (float64, CPU)."""
    with one_thread():  # covers: many small tiles (see threads.one_thread)
        prepared = prepare(units, DEFAULT_EPS, block_size, give_up=True)
    nearest, _ = nearest_and_short_curve(units, block_size, prepared, np.zeros(0))
    return torch.from_numpy(nearest)
