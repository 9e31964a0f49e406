"""DINO's Gaussian blur on batches of crops, each crop with its own sigma (Caron et al.,
"Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021: p=1.0 / 0.1 / 0.5
for global crop 1 / global crop 2 / the local crops).

The blur is separable: one grouped 1-D convolution per axis blurs every channel of every
crop with its own kernel in a single call, instead of one call per crop. Edges are
replicated, as PIL's blur (which DINO uses) extends the image. The kernel is a sampled
Gaussian of ``2 * radius + 1`` taps; :func:`protossl.data.multicrop.blur_parameters` gives
the radius and the sigma range for an image size.

Example:
    >>> import torch
    >>> x = torch.rand(2, 3, 8, 8)
    >>> y = gaussian_blur(x, torch.tensor([0.5, 1.5]), radius=2)
    >>> tuple(y.shape), bool(y.std() < x.std())
    ((2, 3, 8, 8), True)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Separable Gaussian blur of each crop with its own sigma, kernel ``2 * radius + 1``,
    edges replicated (as PIL's blur), as one grouped convolution per axis."""
    n, c, h, w = x.shape
    taps = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (taps[None, :] / sigma.to(x.dtype)[:, None]) ** 2)
    # One kernel per (crop, channel): the grouped convolution treats each as its own group.
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)
    flat = x.reshape(1, n * c, h, w)
    flat = F.pad(flat, (radius, radius, 0, 0), mode="replicate")
    flat = F.conv2d(flat, kernel.view(n * c, 1, 1, -1), groups=n * c)
    flat = F.pad(flat, (0, 0, radius, radius), mode="replicate")
    flat = F.conv2d(flat, kernel.view(n * c, 1, -1, 1), groups=n * c)
    return flat.view(n, c, h, w)
