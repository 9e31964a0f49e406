"""The uniqueness curve M(eps) over a grid of eps, exact at every eps.

A prototype whose nearest neighbour is at least eps away is a singleton at eps, so
M(eps) = #{nn >= eps} + the components of the rows with nn < eps. Up to the covers'
eps the counts come with the nearest-neighbour pass (``nearest``); above it the
same covers are linked again at each larger eps (``long_curve``); what remains is
counted on the close rows alone (``curve_from_nearest``).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from protossl.diagnostics.unique import constants
from protossl.diagnostics.unique.constants import DEFAULT_EPS
from protossl.diagnostics.unique.cover import Covers, Prepared, TooDense, prepare
from protossl.diagnostics.unique.distances import np_index, screen_margin
from protossl.diagnostics.unique.graph import DisjointSet
from protossl.diagnostics.unique.leaders import auto_labels, link_covers
from protossl.diagnostics.unique.nearest import nearest_and_short_curve
from protossl.diagnostics.unique.threads import one_thread


def fast_curve(
    units: torch.Tensor, eps_sorted: np.ndarray, block_size: int
) -> list[tuple[float, int]]:
    """M for each of ``eps_sorted`` from covers at the default eps and nearest neighbours."""
    with one_thread():  # covers: many small tiles (see threads.one_thread)
        prepared = prepare(units, DEFAULT_EPS, block_size, give_up=True)
    nearest, known = nearest_and_short_curve(units, block_size, prepared, eps_sorted)
    longer = eps_sorted[eps_sorted > prepared.eps]
    with one_thread():
        known.update(long_curve(units, prepared, nearest, longer, block_size))
    del prepared  # the screening copy and projections are no longer needed
    return curve_from_nearest(units, eps_sorted, nearest, block_size, known)


def long_curve(
    units: torch.Tensor,
    prepared: Prepared,
    nearest: np.ndarray,
    eps_long: np.ndarray,
    block_size: int,
) -> dict[float, int]:
    """M(eps) for eps above the covers' eps, by linking the same covers.

    Every member is closer than the covers' eps <= eps to its leader, so each cover
    lies in one component; covers A, B can be linked only if d(L_A, L_B) < eps + r_A +
    r_B, and only covers holding a row with a neighbour closer than eps take part.
    Their leaders are screened (float32, with the margin), then ``link_covers``
    decides exactly, continuing one union-find over ascending eps. Stops (leaving the
    rest to ``curve_from_nearest``) where the leader graph is too dense, and leaves
    heads with zero or tiny rows to it altogether.
    """
    covers, rows, x = prepared.covers, prepared.rows, prepared.x
    if covers is None or x is None or not bool(prepared.regular.all()):
        return {}
    n_cov = covers.leader.size
    sets = DisjointSet(n_cov)
    rmax = np.zeros(n_cov, dtype=np.float64)
    np.maximum.at(rmax, covers.cover_of, covers.radius)
    cover_nn = np.full(n_cov, math.inf)
    np.minimum.at(cover_nn, covers.cover_of, nearest[rows])
    margin = screen_margin(x.shape[1], x.dtype)
    out: dict[float, int] = {}
    for eps in eps_long.tolist():
        q = np.flatnonzero(cover_nn < eps)
        reach = (eps + 2.0 * float(rmax[q].max(initial=0.0))) * (1.0 + 1e-6) + 1e-9
        limit = max(constants.DENSE_LEADER_PAIRS, 4 * rows.size)
        try:
            pa, pb = _close_pairs(x, covers.leader[q], reach, margin, block_size, limit)
        except TooDense:
            break
        pa, pb = q[pa], q[pb]
        alive = sets.find(pa) != sets.find(pb)
        batch = Covers(covers.leader, covers.cover_of, covers.radius, pa[alive], pb[alive])
        try:
            link_covers(units, rows, batch, eps, give_up=True, sets=sets)
        except TooDense:
            break
        out[float(eps)] = int(np.unique(sets.roots()).size)
    return out


def _close_pairs(
    x: torch.Tensor, pos: np.ndarray, reach: float, margin: float, block_size: int, limit: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs a < b of indices into ``pos`` whose screened distance may be below reach.

    Raises ``TooDense`` as soon as more than ``limit`` pairs are found.
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
        src.append(np_index(a) + r0)
        dst.append(np_index(b) + r0)
        found += a.numel()
        if found > limit:
            raise TooDense
    return np.concatenate(src), np.concatenate(dst)


def curve_from_nearest(
    units: torch.Tensor,
    eps_sorted: np.ndarray,
    nearest: np.ndarray,
    block_size: int,
    known: dict[float, int],
) -> list[tuple[float, int]]:
    """M(eps) for each eps: rows whose nearest neighbour is >= eps are singletons.

    Only the rows with a neighbour closer than eps can share a component; their
    components are counted exactly by ``leaders.auto_labels`` on that subset (greedy
    leaders, the brute force where the leader graph is dense). ``known`` holds counts
    already computed (the summary's own eps).
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
            comp = auto_labels(sub, eps, block_size, max_auto_eps=math.inf)
            m = (k - inside.size) + int(comp.max()) + 1
        out.append((float(eps), int(m)))
    return out
