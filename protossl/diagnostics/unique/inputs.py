"""Argument checks and the float64 unit directions every algorithm starts from."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from protossl.diagnostics.unique import constants


def check_weights(weights: torch.Tensor) -> None:
    """Raise ValueError unless ``weights`` is a real 2-D tensor with K, p >= 1."""
    if not isinstance(weights, torch.Tensor):
        raise ValueError(f"weights must be a torch.Tensor (got {type(weights).__name__})")
    if weights.dim() != 2:
        raise ValueError(f"weights must be 2-D [K, p] (got shape {tuple(weights.shape)})")
    if weights.shape[0] < 1 or weights.shape[1] < 1:
        shape = tuple(weights.shape)
        raise ValueError(f"weights needs K >= 1 prototypes of dim p >= 1 (got shape {shape})")
    if weights.is_complex():
        raise ValueError("weights must be real")


def check_eps(eps: float) -> None:
    """Raise ValueError unless eps is a finite number > 0."""
    if not (eps > 0 and math.isfinite(eps)):
        raise ValueError(f"eps must be a finite number > 0 (got {eps})")


def check_eps_values(eps_values: Sequence[float]) -> np.ndarray:
    """Validated eps values, deduplicated and sorted ascending (float64)."""
    if len(eps_values) == 0:
        raise ValueError("eps_values must not be empty")
    for eps in eps_values:
        check_eps(eps)
    return np.array(sorted({float(e) for e in eps_values}), dtype=np.float64)


def normalize_prototypes(weights: torch.Tensor) -> torch.Tensor:
    """Scale every prototype (row) to unit L2 norm, as DINO's normalized last layer does.

    The result is at least float32 (float64 stays float64). Zero rows stay zero
    (``F.normalize`` semantics) rather than becoming NaN.

    Example:
        >>> normalize_prototypes(torch.tensor([[3.0, 4.0], [0.0, 0.0]]))
        tensor([[0.6000, 0.8000],
                [0.0000, 0.0000]])
    """
    check_weights(weights)
    dtype = torch.promote_types(weights.dtype, torch.float32)
    return F.normalize(weights.detach().to(dtype), dim=1)


def unit_directions(weights: torch.Tensor, block_size: int) -> torch.Tensor:
    """Validated float64 unit directions, on the input's device (CPU for MPS: no float64).

    Normalized ``constants.NORMALIZE_ROWS`` rows at a time, so the only full-size
    allocation is the result (row by row, the values are bitwise those of one
    ``F.normalize`` call).
    """
    check_weights(weights)
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1 (got {block_size})")
    w = weights.detach()
    if w.device.type == "mps":
        w = w.cpu()
    out = torch.empty(w.shape, dtype=torch.float64, device=w.device)
    step = constants.NORMALIZE_ROWS
    for s in range(0, w.shape[0], step):
        chunk = w[s : s + step].to(torch.float64)
        # A diverged checkpoint must not be reported as "no collapse" (NaN compares False).
        if not torch.isfinite(chunk).all():
            raise ValueError("weights contain NaN or inf; the checkpoint is probably diverged")
        out[s : s + step] = F.normalize(chunk, dim=1)
    return out
