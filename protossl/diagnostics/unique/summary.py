"""The collapse report: M, the groups, the curve and distance quantiles of one head.

Both ways of computing it measure the same three things, exactly; they differ in how
much work they share. The brute force serves all three from one pass over all pairs;
the fast path builds greedy covers at the report's eps once and reuses them for M, the
nearest-neighbour distances and the curve.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch

from protossl.diagnostics.unique.brute_force import scan
from protossl.diagnostics.unique.cover import prepare
from protossl.diagnostics.unique.curve import curve_from_nearest, long_curve
from protossl.diagnostics.unique.leaders import auto_labels
from protossl.diagnostics.unique.nearest import nearest_and_short_curve
from protossl.diagnostics.unique.result import UniqueResult, make_result
from protossl.diagnostics.unique.threads import one_thread

# (components at eps, [(eps, M), ...] ascending, nearest-neighbour distances [K])
Measures = tuple[UniqueResult, list[tuple[float, int]], torch.Tensor]


class Clock:
    """Seconds per named part into an optional dict (summarize_prototypes' timings)."""

    def __init__(self, out: dict[str, float] | None) -> None:
        self.out = out
        self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        """Add the seconds since the last lap to ``out[name]``."""
        now = time.perf_counter()
        if self.out is not None:
            self.out[name] = self.out.get(name, 0.0) + now - self.last
        self.last = now


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


def brute_measures(
    units: torch.Tensor, eps: float, eps_sorted: np.ndarray, block_size: int, clock: Clock
) -> Measures:
    """All three measures from one float64 pass over all pairs (K^2 p work)."""
    # One pass serves all three measures: the distance tiles dominate the cost.
    acc = scan(units, block_size, eps, eps_sorted, nearest=True)
    result = acc.unique_result()
    curve = acc.curve()
    nn = acc.nearest_distances()
    clock.lap("M")
    return result, curve, nn


def fast_measures(
    units: torch.Tensor, eps: float, eps_sorted: np.ndarray, block_size: int, clock: Clock
) -> Measures:
    """All three measures from greedy covers at eps, built once and shared."""
    with one_thread():  # covers: many small tiles (see threads.one_thread)
        prepared = prepare(units, eps, block_size, give_up=True)
        comp = auto_labels(units, eps, block_size, prepared)
    result = make_result(comp, eps)
    clock.lap("M")
    nearest, known = nearest_and_short_curve(units, block_size, prepared, eps_sorted)
    nn = torch.from_numpy(nearest)
    clock.lap("nearest")
    known[float(eps)] = result.num_unique
    longer = eps_sorted[eps_sorted > eps]
    with one_thread():
        known.update(long_curve(units, prepared, nearest, longer, block_size))
    del prepared  # the screening copy and projections are no longer needed
    curve = curve_from_nearest(units, eps_sorted, nearest, block_size, known)
    clock.lap("curve")
    return result, curve, nn


def collapse_report(measures: Measures, norms: torch.Tensor, eps: float, top_groups: int) -> dict:
    """The JSON-ready dict ``summarize_prototypes`` returns (keys documented there)."""
    result, curve, nn = measures
    return {
        "K": result.num_prototypes,
        "M": result.num_unique,
        "M_over_K": result.fraction,
        "eps": float(eps),
        "uniqueness_curve": [[e, m] for e, m in curve],
        "largest_groups": result.group_sizes[:top_groups],
        "nn_distance_quantiles": distance_quantiles(nn) if nn.numel() > 1 else {},
        "norm_quantiles": distance_quantiles(norms),
    }
