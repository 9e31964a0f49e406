"""Exact distances between unit directions, and the rounding bounds of the float32 screen.

Every link decision and every reported nearest-neighbour distance is the direct float64
``||mu_i - mu_j||`` computed here; faster matmul screens may only propose candidates,
with a margin (``screen_margin``) that bounds their rounding so none is missed.
"""

from __future__ import annotations

import numpy as np
import torch

from protossl.diagnostics.unique import constants


def np_index(index: torch.Tensor) -> np.ndarray:
    """An index tensor as an int64 numpy array on the CPU."""
    return index.to("cpu", torch.int64).numpy()


def squared_norms(units: torch.Tensor) -> torch.Tensor:
    """Row squared norms, by the brute force's formula, without a [K, p] temporary."""
    parts = [(c * c).sum(dim=1) for c in units.split(constants.NORMALIZE_ROWS)]
    return torch.cat(parts)


def direct_distances(units: torch.Tensor, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """||units[i] - units[j]|| for index arrays i, j (float64, numpy): the exact rule."""
    out = np.empty(i.size, dtype=np.float64)
    step = constants.PAIR_CHUNK
    for s in range(0, i.size, step):
        a = torch.as_tensor(i[s : s + step], device=units.device)
        b = torch.as_tensor(j[s : s + step], device=units.device)
        out[s : s + a.numel()] = torch.linalg.vector_norm(units[a] - units[b], dim=1).cpu().numpy()
    return out


def row_norms(units: torch.Tensor) -> np.ndarray:
    """||mu_j|| = ||0 - mu_j||: the direct distance of every row to a zero row."""
    parts = [torch.linalg.vector_norm(c, dim=1) for c in units.split(constants.NORMALIZE_ROWS)]
    return torch.cat(parts).cpu().numpy()


def distances_to_all(units: torch.Tensor, t: int) -> np.ndarray:
    """Direct distances from row t to every row (float64 numpy [K])."""
    row = units[t]
    chunks = units.split(constants.NORMALIZE_ROWS)
    return torch.cat([torch.linalg.vector_norm(c - row, dim=1) for c in chunks]).cpu().numpy()


def screen_dtype(units: torch.Tensor) -> torch.dtype:
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


def screen_margin(p: int, dtype: torch.dtype) -> float:
    """Bound on |d^2 - (2 - 2 g)| for rows with |sq - 1| <= REGULAR_TOL, g the screened dot.

    Rounding the inputs moves a dot product of unit vectors by <= 2u (u the unit
    roundoff), any summation order adds <= p u (Higham, Thm 3.1); the exact squared
    norms add <= 2 REGULAR_TOL, and comparing with a threshold rounded to the screen's
    dtype costs one more u. Doubled for safety: it only widens the screen.
    """
    unit = 2.0**-24 if dtype == torch.float32 else 2.0**-53
    return 2.0 * (2.0 * (p + 4) * unit + 2.0 * unit + 2.0 * constants.REGULAR_TOL)
