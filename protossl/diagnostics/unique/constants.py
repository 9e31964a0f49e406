"""Defaults and tuning constants of the unique-prototype count, in one place.

The tunables are read as ``constants.NAME`` at call time (never copied into another
module's namespace), so a test or a benchmark can change one with
``monkeypatch.setattr(constants, "NAME", value)`` and every algorithm sees it. None of
them changes a result: they trade memory, screening work and exact re-measurement.
"""

from __future__ import annotations

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
REFINE_BAND = 1e-10
# Pairs re-measured at once (each costs a p-vector difference).
REFINE_CHUNK = 1 << 16
# The uniqueness curve keeps a minimum spanning forest of the edges seen so far and
# re-compacts it once this many (or 4 K) edges are buffered, bounding memory.
COMPACT_MIN_EDGES = 1 << 22
# Rows normalized at once by unit_directions (bounds its temporaries).
NORMALIZE_ROWS = 1 << 13

# count_unique_prototypes(method="auto") uses greedy leaders from this K on and up to
# this eps (beyond, 3 eps approaches the typical distance and nearly every pair of
# leaders would need checking).
AUTO_MIN_K = 2048
AUTO_MAX_EPS = 0.3
# Rows whose float64 squared norm is within this of 1 are screened as unit vectors;
# the others (zero rows, rows of norm < 1e-12 that F.normalize cannot scale) are
# compared with every row exactly, by the brute force's own rule.
REGULAR_TOL = 1e-9
# Pairs whose direct distance is computed at once (each gathers two p-vectors).
PAIR_CHUNK = 1 << 14
# Member pairs checked per batch when linking covers.
PAIR_BUDGET = 1 << 20
# "auto" hands over to the brute force beyond this many candidate leader pairs (or
# 4 K), or when the member pairs to check exceed K^2 / (2 * this divisor): a direct
# distance costs far more than one entry of a matmul tile.
DENSE_LEADER_PAIRS = 1 << 23
DENSE_WORK_DIVISOR = 64
# Leaders' two-level screen: for p >= this, first compare projections onto the top
# principal directions (at most this many, and p / 4), estimated from a sample of rows.
PROJECT_MIN_P = 128
PROJECT_MIN_ROWS = 4096
PROJECT_DIMS = 32
PROJECT_SAMPLE = 1 << 14
