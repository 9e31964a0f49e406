"""The fast exact count: greedy eps-covers, then exact links between nearby covers.

``leader_components`` finds the same components as the brute force (see ``cover`` for
the covers and why 3 eps bounds the leader pairs to check). For collapsed heads
(M << K) the work is about K L p (L leaders, L ~ M); without collapse every row is a
leader and the work is one screened pass over pairs. ``auto_labels`` is the
``method="auto"`` choice between this and the brute force.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from protossl.diagnostics.unique import constants
from protossl.diagnostics.unique.brute_force import brute_labels
from protossl.diagnostics.unique.cover import Covers, Prepared, TooDense, prepare
from protossl.diagnostics.unique.distances import direct_distances, np_index
from protossl.diagnostics.unique.graph import DisjointSet
from protossl.diagnostics.unique.result import canonical_labels


def link_covers(
    units: torch.Tensor,
    rows: np.ndarray,
    covers: Covers,
    eps: float,
    give_up: bool,
    sets: DisjointSet | None = None,
) -> DisjointSet:
    """Union-find over covers, merged wherever a member pair is exactly linked.

    The covers' radius may be below eps (each cover still lies in one component);
    ``sets`` continues a union-find from a smaller eps (its merges stay valid).
    """
    n_cov = covers.leader.size
    sets = DisjointSet(n_cov) if sets is None else sets
    ca, cb = covers.pair_a, covers.pair_b
    if ca.size == 0:
        return sets
    lead = rows[covers.leader]
    dll = direct_distances(units, lead[ca], lead[cb])
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
    if give_up and work.sum() > max(
        constants.PAIR_BUDGET, r * r // (2 * constants.DENSE_WORK_DIVISOR)
    ):
        raise TooDense
    members = np.argsort(covers.cover_of, kind="stable")
    start = np.concatenate([[0], np.cumsum(size)])
    order = np.argsort(dll, kind="stable")  # closest leaders first: they merge most
    window = 1 << 16
    i = 0
    while i < order.size:
        win = order[i : i + window]
        alive = sets.find(ca[win]) != sets.find(cb[win])
        cum = np.cumsum(np.where(alive, work[win], 0))
        taken = max(1, int(np.searchsorted(cum, constants.PAIR_BUDGET, side="right")))
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
    covers: Covers,
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
    if ca.size == 1 and sa[0] * sb[0] > constants.PAIR_BUDGET:
        # One large pair: members of A in slices, stopping at the first link.
        step = max(1, constants.PAIR_BUDGET // int(sb[0]))
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
    covers: Covers,
    a: np.ndarray,
    b: np.ndarray,
    dll_low: np.ndarray,
    eps: float,
) -> np.ndarray:
    """Exact link decision for member pairs (a, b), skipping those the triangle rules out."""
    hit = np.zeros(a.size, dtype=bool)
    maybe = np.flatnonzero(dll_low - covers.radius[a] - covers.radius[b] < eps)
    if maybe.size:
        hit[maybe] = direct_distances(units, rows[a[maybe]], rows[b[maybe]]) < eps
    return hit


def _any_linked(
    units: torch.Tensor,
    rows: np.ndarray,
    covers: Covers,
    a: np.ndarray,
    b: np.ndarray,
    dll_low: np.ndarray,
    eps: float,
) -> bool:
    """Whether any member pair (a, b) is exactly linked (``_linked_mask``)."""
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
            ii, jj = (d2 < eps * eps + constants.REFINE_BAND).nonzero(as_tuple=True)
            dist2 = d2[ii, jj]
            dist = dist2.sqrt()
            near = ((dist2 - eps * eps).abs() < constants.REFINE_BAND).nonzero().squeeze(1)
            if near.numel():
                dist[near] = torch.linalg.vector_norm(
                    units[ri[ii[near]]] - units[c0 + jj[near]], dim=1
                )
            keep = dist < eps
            src.append(np_index(ri[ii[keep]]))
            dst.append(np_index(jj[keep] + c0))
    return np.concatenate(src), np.concatenate(dst)


def leader_components(
    units: torch.Tensor,
    eps: float,
    block_size: int,
    give_up: bool = False,
    prepared: Prepared | None = None,
) -> np.ndarray:
    """Component id of every prototype (exact, as the brute force), via greedy leaders.

    Rows that are not unit vectors (zero rows; rows too small for ``F.normalize`` to
    scale) are linked to every row by the brute force's tile rule; all zero rows are
    the same vector, so one of them stands for all. Raises ``TooDense`` when
    ``give_up`` and the leader graph is too dense to pay off. ``prepared`` (covers at
    this eps) is reused when given.
    """
    k = units.shape[0]
    if prepared is None:
        prepared = prepare(units, eps, block_size, give_up)
    if prepared.eps != eps:
        raise ValueError(f"covers were built at eps {prepared.eps}, not {eps}")
    sq, regular, rows = prepared.sq, prepared.regular, prepared.rows
    src: list[np.ndarray] = []
    dst: list[np.ndarray] = []
    if rows.size:
        covers = prepared.covers
        if covers is None:
            raise TooDense
        sets = link_covers(units, rows, covers, eps, give_up)
        root_cover = sets.roots()[covers.cover_of]
        src.append(rows)
        dst.append(rows[covers.leader[root_cover]])
    odd = (~regular).nonzero().squeeze(1)
    if odd.numel():
        zero = odd[sq[odd] == 0]
        other = odd[sq[odd] != 0]
        if zero.numel():  # identical vectors: linked to each other, alike to the rest
            src.append(np_index(zero))
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


def leader_labels(units: torch.Tensor, eps: float, block_size: int) -> np.ndarray:
    """Canonical component labels at eps by greedy leaders (``method="leaders"``)."""
    return canonical_labels(leader_components(units, eps, block_size))


def auto_labels(
    units: torch.Tensor,
    eps: float,
    block_size: int,
    prepared: Prepared | None = None,
    max_auto_eps: float = constants.AUTO_MAX_EPS,
) -> np.ndarray:
    """Canonical component labels at eps: leaders where they pay off, else the brute force.

    Leaders from ``constants.AUTO_MIN_K`` rows on and up to ``max_auto_eps``; they give
    up (and the brute force takes over) when their leader graph turns out too dense.
    ``prepared`` (covers at this eps) is reused when given.
    """
    if units.shape[0] >= constants.AUTO_MIN_K and eps <= max_auto_eps:
        try:
            comp = leader_components(units, eps, block_size, True, prepared)
            return canonical_labels(comp)
        except TooDense:
            pass  # the brute force is cheaper for this graph
    return brute_labels(units, eps, block_size)
