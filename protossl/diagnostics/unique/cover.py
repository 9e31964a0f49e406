"""Greedy eps-covers: the first stage of the fast leaders algorithm.

``prepare`` builds them once, with the regular (unit) rows and their screening copy,
for the count, the nearest-neighbour search and the curve to share.

1. Covers. Prototypes are visited in chunks of ``block_size``. Each joins an existing
   leader whose exact distance is < eps (the nearest one the screen proposes), or
   else the chunk's remaining prototypes are resolved greedily in index order: the
   first unassigned one becomes a leader and claims the unassigned ones within eps.
   Every member is exactly linked to its leader, so a cover lies in one component.
2. Links between covers (``leaders.link_covers``). If a in cover A and b in cover B
   are linked, then d(L_A, L_B) <= r_A + eps + r_B < 3 eps (triangle inequality,
   r = member-to-leader distance < eps). Leader pairs closer than 3 eps are found
   here, while the leaders are created (a new leader's row of the screen against
   older leaders is exactly that list); ``leaders`` filters them by the exact bound
   d(L_A, L_B) < max r_A + max r_B + eps and measures only their member pairs exactly
   (again pruned by the triangle inequality), closest leader pairs first, skipping
   covers already merged.

Screening matmuls run in float32 (IEEE, checked at run time) with a margin that
bounds their rounding error, so they can only propose too many pairs, never miss
one; every link that enters the result is decided by the direct float64 distance
``||mu_i - mu_j|| < eps``, the same formula the brute force falls back to near eps.
For p >= 128 a cheaper first screen on projections onto the top principal
directions (a lower bound of every distance) rules out most rows of each tile
before the full p-column screen; without collapse it rules out nearly all of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from protossl.diagnostics.unique import constants
from protossl.diagnostics.unique.distances import (
    direct_distances,
    np_index,
    screen_dtype,
    screen_margin,
    squared_norms,
)


class TooDense(Exception):
    """The leader graph is too dense to beat the brute force (``method="auto"`` only)."""


@dataclass
class Covers:
    """Greedy eps-covers of the regular rows (indices are positions among them)."""

    leader: np.ndarray  # [L] position of each cover's leader, covers in creation order
    cover_of: np.ndarray  # [R] cover of each position
    radius: np.ndarray  # [R] exact distance to the cover's leader (0 for leaders)
    pair_a: np.ndarray  # candidate cover pairs: leaders screened closer than 3 eps
    pair_b: np.ndarray


class CoverBuilder:
    """Builds ``Covers`` chunk by chunk; see the module docstring.

    Screening is two-level when p >= ``constants.PROJECT_MIN_P`` and there are at
    least ``constants.PROJECT_MIN_ROWS`` rows: squared distances between the
    projections onto the top principal directions (q = p / 4, at most 32 of them) are
    lower bounds of the full ones, computed by one cheap (q + 2)-column matmul per
    tile. The nearest
    leader in projection is then the join candidate (checked exactly), and only new
    leaders with some leader within reach in projection get the full p-column screen
    for their candidate pairs. Without collapse nearly every row is ruled out at once.
    """

    def __init__(
        self, units: torch.Tensor, rows: np.ndarray, eps: float, block_size: int, give_up: bool
    ) -> None:
        self.units, self.rows, self.eps, self.give_up = units, rows, eps, give_up
        self.device = units.device
        p = units.shape[1]
        self.dtype = screen_dtype(units)
        rows_t = torch.as_tensor(rows, device=self.device)
        if rows.size == units.shape[0]:
            self.x = units.to(self.dtype)  # [R, p] screening copy (a view if float64)
        else:
            self.x = units[rows_t].to(self.dtype)
        margin = screen_margin(p, self.dtype)
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
        project = p >= constants.PROJECT_MIN_P and r >= constants.PROJECT_MIN_ROWS
        self.q = min(constants.PROJECT_DIMS, p // 4) if project else 0
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
        step = max(1, rows_t.numel() // constants.PROJECT_SAMPLE)
        sample = self.units[::step] if all_rows else self.units[rows_t[::step]]
        centred = sample - sample.mean(dim=0, keepdim=True)
        # numpy's eigh: torch's LAPACK call stalls for seconds on a busy 2-core machine.
        _, vecs = np.linalg.eigh((centred.T @ centred).cpu().numpy())
        basis = torch.as_tensor(vecs[:, -q:].copy(), device=self.device)  # orthonormal [p, q]
        query = torch.empty((rows_t.numel(), q + 2), dtype=self.dtype, device=self.device)
        for s in range(0, rows_t.numel(), constants.NORMALIZE_ROWS):
            part = slice(s, s + constants.NORMALIZE_ROWS)
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

    def build(self) -> Covers:
        """Visit every chunk of rows once and return the covers and candidate pairs."""
        for s in range(0, self.rows.size, self.chunk):
            self._visit(s, min(s + self.chunk, self.rows.size))
        pa = np.concatenate([a for a, _ in self.pairs]) if self.pairs else np.zeros(0, np.int64)
        pb = np.concatenate([b for _, b in self.pairs]) if self.pairs else np.zeros(0, np.int64)
        leader = self.leader_pos[: self.n_lead].copy()
        return Covers(leader, self.cover_of, self.radius, pa, pb)

    def _distances(self, pos_a: np.ndarray, pos_b: np.ndarray) -> np.ndarray:
        """Exact distances between the rows at positions pos_a and pos_b."""
        return direct_distances(self.units, self.rows[pos_a], self.rows[pos_b])

    def _visit(self, s: int, e: int) -> None:
        """Rows [s, e): join existing covers, or found new ones greedily; record pairs."""
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
            sub_state, sub_rad = self._greedy(s + rest[active], np_index(ii), np_index(jj))
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
            self._add_pairs(act_cover[np_index(b)], act_cover[np_index(a)])
        new_t = torch.as_tensor(new, device=self.device)
        near = new_t[reach[torch.as_tensor(rest, device=self.device)[new_t]]]
        if near.numel() and n_old:
            self._pairs_with_old(rest_t[near], cover_id[np_index(near)], n_old)
        self._append_leaders(rest_t[new_t])

    def _active_in_chunk(self, rest_t: torch.Tensor) -> np.ndarray:
        """Indices into rest_t of rows that may have another rest row within reach."""
        if not self.q:
            return np.arange(rest_t.numel())
        qa = self.query[rest_t]
        d2 = (qa @ self._leader_side(qa).T).fill_diagonal_(math.inf)
        close = (d2 < self.reach_sq_proj).any(dim=1)
        return np_index(close.nonzero().squeeze(1))

    def _screen_leaders(self, s: int, e: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Screen rows [s, e) against the existing leaders.

        Returns ``(join, cover, reach)``: rows with a candidate leader within eps, that
        leader's cover (valid where join), and rows that may have a leader within reach.
        With the projection screen the candidate is the nearest leader in projection
        (verified exactly afterwards); otherwise the nearest by the full screen. (Not
        ``protossl.core.neighbours.tiled_best``: only rows that beat both their running
        best and ``join_dot`` need an argmax, which is what makes this screen cheap.)
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
            self._add_pairs(covers[np_index(near[a])], t0 + np_index(b))

    def _add_pairs(self, a: np.ndarray, b: np.ndarray) -> None:
        """Record candidate cover pairs; raise TooDense past the budget when give_up."""
        if a.size == 0:
            return
        self.pairs.append((a.astype(np.int64), b.astype(np.int64)))
        self.n_pairs += a.size
        if self.give_up and self.n_pairs > max(constants.DENSE_LEADER_PAIRS, 4 * self.rows.size):
            raise TooDense

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
        """A copy of ``buf``'s first n_lead rows in a buffer of ``cap`` rows."""
        grown = torch.empty((cap, buf.shape[1]), dtype=buf.dtype, device=buf.device)
        grown[: self.n_lead] = buf[: self.n_lead]
        return grown


@dataclass
class Prepared:
    """Regular (unit) rows, their greedy eps-covers and their float32 screening copy.

    Built once and shared: the covers serve the count M at their eps and bound the
    nearest-neighbour search (``nearest.nearest_and_short_curve``). ``covers`` is None
    when building them was given up (too dense) or there are fewer than one regular row.
    """

    sq: torch.Tensor  # [K] squared norms of the unit rows (brute force's formula)
    regular: torch.Tensor  # [K] bool: |sq - 1| <= constants.REGULAR_TOL
    rows: np.ndarray  # [R] indices of the regular rows
    eps: float
    covers: Covers | None
    x: torch.Tensor | None  # [R, p] screening copy of the regular rows


def prepare(units: torch.Tensor, eps: float, block_size: int, give_up: bool) -> Prepared:
    """Split regular rows from zero / tiny ones and build their greedy covers at eps."""
    sq = squared_norms(units)
    regular = (sq - 1.0).abs() <= constants.REGULAR_TOL
    rows = np_index(regular.nonzero().squeeze(1))
    if rows.size == 0:
        return Prepared(sq, regular, rows, eps, None, None)
    builder = CoverBuilder(units, rows, eps, block_size, give_up)
    try:
        covers: Covers | None = builder.build()
    except TooDense:
        covers = None
    return Prepared(sq, regular, rows, eps, covers, builder.x)
