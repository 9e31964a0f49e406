"""Random resized crops as matrices: PIL's antialiased bicubic resampling of a box, written as
one ``[out, pixels]`` matrix per crop and axis, so that the crops of a whole batch are one
batched matmul pair (``R_y @ image @ R_x^T``) on any device.

This mirrors torchvision's ``RandomResizedCrop`` on a PIL image (the path DINO's
``DataAugmentationDINO`` takes, Caron et al., ICCV 2021), which is PIL's
``crop(box).resize(size, BICUBIC)``: PIL's bicubic filter (Keys, a = -0.5), widened by the
scale factor when shrinking, weights renormalized over the pixels that lie inside the box.
A horizontal flip is the column matrix with its rows reversed.

Example:
    >>> import torch
    >>> m = resample_matrices(torch.tensor([1.0]), torch.tensor([2.0]), torch.tensor([4]), 2, 4)
    >>> m[0].tolist()  # a 2-pixel box to 2 pixels: an exact copy of pixels 1 and 2
    [[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]
"""

from __future__ import annotations

import torch


def _bicubic(x: torch.Tensor) -> torch.Tensor:
    # PIL's bicubic filter (Keys, a = -0.5), support 2.
    a = -0.5
    x = x.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def resample_matrices(
    start: torch.Tensor, length: torch.Tensor, valid: torch.Tensor, out: int, pixels: int
) -> torch.Tensor:
    """``[N, out, pixels]`` rows of PIL's bicubic resampling of the interval
    ``[start, start + length)`` (continuous pixel units) to ``out`` pixels, along an axis of
    which only the first ``valid`` pixels belong to the image (the rest is batch padding).

    As PIL's ``crop(box).resize(...)`` (torchvision's resized crop on a PIL image): output
    pixel o samples around ``start + (o + 0.5) * length / out``; when shrinking, the filter
    is widened by the scale factor (antialiasing); only pixels inside the interval (and the
    image) count, with the weights renormalized.

    Example:
        >>> m = resample_matrices(torch.tensor([0.0]), torch.tensor([4.0]), torch.tensor([4]), 2, 4)
        >>> torch.allclose(m.sum(-1), torch.ones(1, 2))
        True
    """
    dtype = torch.float32
    start, length = start.to(dtype), length.to(dtype)
    scale = length / out
    support = scale.clamp(min=1.0)
    steps = torch.arange(out, device=start.device, dtype=dtype) + 0.5
    centers = start[:, None] + steps[None, :] * scale[:, None]  # [N, out]
    positions = torch.arange(pixels, device=start.device, dtype=dtype) + 0.5
    distance = (positions[None, None, :] - centers[:, :, None]) / support[:, None, None]
    # PIL crops first, so pixels outside the box (or in the padding) get no weight at all,
    # rather than the edge replication a resize of the whole image would give.
    end = torch.minimum(start + length, valid.to(dtype))
    inside = (positions[None, None, :] > start[:, None, None]) & (
        positions[None, None, :] < end[:, None, None]
    )
    weights = _bicubic(distance) * inside
    return weights / weights.sum(dim=-1, keepdim=True)
