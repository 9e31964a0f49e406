"""The random parameters of DINO's crops, drawn for whole batches with torchvision's
distributions (Caron et al., "Emerging Properties in Self-Supervised Vision Transformers",
ICCV 2021; torchvision's ``RandomResizedCrop``, ``RandomHorizontalFlip``, ``ColorJitter``,
``RandomGrayscale``, and DINO's ``GaussianBlur`` and ``Solarization``).

Each crop of each image owns a block of ``_SLOTS_PER_CROP`` counter-based draws
(:func:`~protossl.data.counter_rng.counter_uniforms`), one fixed slot per parameter, so a
parameter's value never depends on how many draws another one used (RandomResizedCrop's
rejection loop is unrolled into its 10 tries, each with its own two slots). The values are
host arrays; :class:`~protossl.data.batched_multicrop.BatchedMultiCrop` renders them.

Example:
    >>> import numpy as np
    >>> view = ViewSpec(size=16, scale=(0.4, 1.0), blur_p=1.0, solarize_p=0.0)
    >>> p = sample_crop_parameters([3, 4], np.array([32, 20]), np.array([32, 30]), 0, view,
    ...                            blur_sigma=(0.1, 2.0))
    >>> p.box.shape, bool(p.blur.all()), bool(p.solarize.any())
    ((2, 4), True, False)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from protossl.data.counter_rng import counter_uniforms
from protossl.data.multicrop import FLIP_P, GRAYSCALE_P, JITTER, JITTER_P, RATIO

_SLOTS_PER_CROP = 64  # room for every parameter of one crop (36 used)
_ATTEMPTS = 10  # RandomResizedCrop's tries before its centre-crop fallback
# Slots of one crop's parameters. They fix which draw feeds which parameter, so changing
# them changes every crop (and breaks bit-exact resume across versions).
_AREA, _LOG_RATIO = 0, 1  # attempt k uses slots 2k and 2k + 1
_TOP, _LEFT, _FLIP, _JITTER, _FACTORS, _ORDER = 20, 21, 22, 23, 24, 28
_GRAY, _BLUR, _SIGMA, _SOLARIZE = 32, 33, 34, 35
_NUM_SLOTS = 36


@dataclass(frozen=True)
class ViewSpec:
    """How one of the crops of every image is made (DINO's three recipes)."""

    size: int
    scale: tuple[float, float]
    blur_p: float
    solarize_p: float


@dataclass(frozen=True)
class CropParameters:
    """The random parameters of one crop of each of N images (host arrays, length N).

    ``box`` is (left, top, right, bottom) in the image's pixels (whole pixels); ``factors`` are
    (brightness, contrast, saturation, hue shift); ``order[i]`` is the permutation of the
    four adjustments for crop i (0 brightness, 1 contrast, 2 saturation, 3 hue).
    """

    box: np.ndarray  # [N, 4] float64
    flip: np.ndarray  # [N] bool
    jitter: np.ndarray  # [N] bool
    factors: np.ndarray  # [N, 4] float64
    order: np.ndarray  # [N, 4] int64
    gray: np.ndarray  # [N] bool
    blur: np.ndarray  # [N] bool
    sigma: np.ndarray  # [N] float64
    solarize: np.ndarray  # [N] bool

    @staticmethod
    def concat(parts: Sequence[CropParameters]) -> CropParameters:
        """One parameter set for several crops, the first crop's N images first."""
        fields = CropParameters.__dataclass_fields__
        return CropParameters(
            **{name: np.concatenate([getattr(p, name) for p in parts]) for name in fields}
        )


def sample_crop_parameters(
    seeds: Sequence[int] | np.ndarray,
    heights: np.ndarray,
    widths: np.ndarray,
    crop_index: int,
    view: ViewSpec,
    blur_sigma: tuple[float, float],
) -> CropParameters:
    """The parameters of crop ``crop_index`` of each image (image i has ``heights[i]`` x
    ``widths[i]`` pixels), with torchvision's distributions:

    * box (RandomResizedCrop's): area uniform in ``scale`` times the image's, log aspect
      ratio uniform in log(3/4)..log(4/3), sides rounded to whole pixels; the first of 10
      tries that fits the image, else the whole image cut to the nearest allowed ratio,
      centred; offset a uniform whole number of pixels;
    * flip with p=0.5; jitter with p=0.8, factors uniform in [0.6, 1.4], [0.6, 1.4],
      [0.8, 1.2], [-0.1, 0.1], order a uniform permutation; grayscale p=0.2; blur with the
      view's p, sigma uniform in ``blur_sigma``; solarize with the view's p.
    """
    u = counter_uniforms(seeds, crop_index * _SLOTS_PER_CROP, _NUM_SLOTS)
    count = u.shape[0]
    height = np.asarray(heights, dtype=np.int64)
    width = np.asarray(widths, dtype=np.int64)
    area = (height * width).astype(np.float64)[:, None]
    low, high = view.scale
    target = area * (low + (high - low) * u[:, _AREA : 2 * _ATTEMPTS : 2])
    log_low, log_high = math.log(RATIO[0]), math.log(RATIO[1])
    aspect = np.exp(log_low + (log_high - log_low) * u[:, _LOG_RATIO : 2 * _ATTEMPTS : 2])
    # Whole pixels, rounded half to even like Python's round(), as torchvision: on small
    # images the rounding visibly shapes where crops fall, so it is kept.
    w = np.rint(np.sqrt(target * aspect)).astype(np.int64)
    h = np.rint(np.sqrt(target / aspect)).astype(np.int64)
    fits = (w > 0) & (h > 0) & (w <= width[:, None]) & (h <= height[:, None])
    first = fits.argmax(axis=1)
    rows = np.arange(count)
    found = fits.any(axis=1)
    # torchvision's fallback: the whole image cut to the nearest allowed ratio, centred.
    in_ratio = width / height
    fallback_w = np.where(in_ratio > RATIO[1], np.rint(height * RATIO[1]), width)
    fallback_h = np.where(in_ratio < RATIO[0], np.rint(width / RATIO[0]), height)
    crop_w = np.where(found, w[rows, first], fallback_w).astype(np.int64)
    crop_h = np.where(found, h[rows, first], fallback_h).astype(np.int64)
    # A uniform whole-pixel offset in [0, size - crop] (torch.randint's range).
    left = np.where(found, np.floor(u[:, _LEFT] * (width - crop_w + 1)), (width - crop_w) // 2)
    top = np.where(found, np.floor(u[:, _TOP] * (height - crop_h + 1)), (height - crop_h) // 2)
    b, c, s, hue = JITTER
    factors = np.stack(
        [
            1 - b + 2 * b * u[:, _FACTORS],
            1 - c + 2 * c * u[:, _FACTORS + 1],
            1 - s + 2 * s * u[:, _FACTORS + 2],
            -hue + 2 * hue * u[:, _FACTORS + 3],
        ],
        axis=1,
    )
    return CropParameters(
        box=np.stack([left, top, left + crop_w, top + crop_h], axis=1),
        flip=u[:, _FLIP] < FLIP_P,
        jitter=u[:, _JITTER] < JITTER_P,
        factors=factors,
        # argsort of 4 i.i.d. uniforms is a uniformly random permutation.
        order=np.argsort(u[:, _ORDER : _ORDER + 4], axis=1, kind="stable"),
        gray=u[:, _GRAY] < GRAYSCALE_P,
        blur=u[:, _BLUR] < view.blur_p,
        sigma=blur_sigma[0] + (blur_sigma[1] - blur_sigma[0]) * u[:, _SIGMA],
        solarize=u[:, _SOLARIZE] < view.solarize_p,
    )
