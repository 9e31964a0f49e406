"""DINO's colour augmentations on batches of float crops in [0, 1], each crop with its own
factor: colour jitter's four adjustments, grayscale and solarization (Caron et al.,
"Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021).

Each function mirrors the PIL operation that torchvision's ``ColorJitter``,
``RandomGrayscale`` and DINO's ``Solarization`` apply to a PIL image: brightness, contrast
and saturation blend with black / the crop's mean grey / the grey image
(``ImageEnhance``), hue rotates the HSV hexcone, grey is ITU-R 601-2 luma (PIL's ``"L"``).
The values stay in float between steps, where PIL rounds to 8 bits after each one (the
tests check the formulas: the blends exactly, the hue rotation against ``colorsys``).

Example:
    >>> import torch
    >>> x = torch.rand(2, 3, 4, 4)
    >>> bool(torch.equal(adjust_brightness(x, torch.ones(2)), x))
    True
    >>> tuple(grey(x).shape)
    (2, 1, 4, 4)
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from protossl.data.multicrop import SOLARIZE_THRESHOLD


def grey(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601-2 luma of crops ``[N, 3, H, W]``, PIL's ``"L"`` conversion: ``[N, 1, H, W]``."""
    r, g, b = x.unbind(dim=1)
    return (0.299 * r + 0.587 * g + 0.114 * b).unsqueeze(1)


def _per_crop(factor: torch.Tensor) -> torch.Tensor:
    return factor.view(-1, 1, 1, 1)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with black: ``clamp(f * x)`` (PIL's ImageEnhance.Brightness), per crop."""
    return (x * _per_crop(factor)).clamp(0, 1)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the crop's mean grey level (PIL's ImageEnhance.Contrast), per crop."""
    mean = grey(x).mean(dim=(1, 2, 3), keepdim=True)
    f = _per_crop(factor)
    return (f * x + (1 - f) * mean).clamp(0, 1)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the grey image (PIL's ImageEnhance.Color), per crop."""
    f = _per_crop(factor)
    return (f * x + (1 - f) * grey(x)).clamp(0, 1)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue by ``shift`` turns, keeping HSV's value and saturation, per crop.

    With V = max, C = max - min and hue H in [0, 6), channel n in (R, G, B) = (5, 3, 1) is
    ``V - C * clamp(min(k, 4 - k), 0, 1)`` with ``k = (n + H) mod 6``: the HSV-to-RGB map,
    whose V and C a hue rotation leaves unchanged.
    """
    r, g, b = x.unbind(dim=1)
    value = torch.maximum(torch.maximum(r, g), b)
    chroma = value - torch.minimum(torch.minimum(r, g), b)
    # Grey pixels have no hue; any finite divisor works, since their chroma multiplies it away.
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    hue = torch.where(
        value == r,
        torch.remainder((g - b) / safe, 6),
        torch.where(value == g, (b - r) / safe + 2, (r - g) / safe + 4),
    )
    hue = torch.remainder(hue + 6 * shift.view(-1, 1, 1), 6)
    channels = []
    for n in (5.0, 3.0, 1.0):
        k = torch.remainder(n + hue, 6)
        channels.append(value - chroma * torch.clamp(torch.minimum(k, 4 - k), 0, 1))
    return torch.stack(channels, dim=1)


# Indexed like CropParameters.order's entries: 0 brightness, 1 contrast, 2 saturation, 3 hue
# (ColorJitter's order of the four factors).
ADJUSTMENTS: tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor], ...] = (
    adjust_brightness,
    adjust_contrast,
    adjust_saturation,
    adjust_hue,
)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """The grey image in all three channels, as ``RandomGrayscale`` (``num_output_channels=3``)."""
    return grey(x).expand(-1, 3, -1, -1)


def solarize(x: torch.Tensor) -> torch.Tensor:
    """Invert the values at or above DINO's threshold (PIL's ``ImageOps.solarize(img, 128)``
    inverts 8-bit values >= 128)."""
    return torch.where(x >= SOLARIZE_THRESHOLD / 255, 1 - x, x)
