"""DINO's multi-crop augmentation applied to whole batches of tensors, on any device.

:class:`BatchedMultiCrop` makes the same crops as
:class:`~protossl.data.multicrop.MultiCropTransform` (Caron et al., "Emerging Properties in
Self-Supervised Vision Transformers", ICCV 2021: 2 global + n local crops; random resized
crop, horizontal flip p=0.5, colour jitter (brightness 0.4, contrast 0.4, saturation 0.2,
hue 0.1) p=0.8, grayscale p=0.2, Gaussian blur p=1.0 / 0.1 / 0.5 for global 1 / global 2 /
locals with sigma scaled to the image size, solarization p=0.2 on global 2, normalization),
but from a batch ``[B, 3, H, W]`` (uint8 or float in [0, 1]) with a handful of batched
tensor operations per group of same-sized crops instead of ~30 PIL calls per crop:

* **crop + resize + flip**: each crop is ``R_y @ image @ R_x^T`` with per-crop resampling
  matrices holding PIL's bicubic filter (a = -0.5, widened by the scale factor when
  shrinking: antialiased, as PIL), one batched matmul pair for all crops of a group; the
  flip reverses the rows of ``R_x``. Boxes are whole pixels drawn as torchvision draws them.
* **colour jitter**: the four adjustments in a random order per crop (as ColorJitter), each
  applied to the crops that have it at that position; brightness, contrast and saturation
  blend with black / the mean grey / the grey image, hue rotates the HSV hexcone; values
  stay in float (PIL rounds to 8 bits after each step).
* **grayscale, blur, solarize** on the crops drawn for them; the blur is a separable
  Gaussian with each crop's own sigma (one grouped convolution per axis, edges replicated).

Randomness: every parameter comes from a counter-based generator (SplitMix64 of the image's
seed, the crop and the parameter's slot; pure integer arithmetic on the host), so the crops
of an image depend only on its pixels and its seed: not on the batch it sits in, the device,
the number of processes, or torch's global generator, which stays untouched. The trainer
passes each image's ``sample_seed`` (:mod:`protossl.data.sampling`), so a resumed run makes
the same crops. The two pipelines draw different numbers: the same seed gives equally
distributed, not identical, crops.

Example:
    >>> aug = BatchedMultiCrop(image_size=16, num_local_crops=2)
    >>> images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    >>> crops = aug(images, seeds=torch.arange(4))
    >>> [tuple(c.shape) for c in crops]
    [(4, 3, 16, 16), (4, 3, 16, 16), (4, 3, 7, 7), (4, 3, 7, 7)]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from protossl.config import DataConfig
from protossl.core.errors import UserError
from protossl.data.multicrop import (
    FLIP_P,
    GRAYSCALE_P,
    IMAGENET_MEAN,
    IMAGENET_STD,
    JITTER,
    JITTER_P,
    RATIO,
    SOLARIZE_THRESHOLD,
    MultiCropTransform,
    StandardAugmentation,
    blur_parameters,
    check_multicrop_arguments,
    default_local_size,
)

# ----------------------------------------------------------------------------- randomness

_MASK64 = (1 << 64) - 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_SLOTS_PER_CROP = 64  # room for every parameter of one crop (36 used)
_ATTEMPTS = 10  # RandomResizedCrop's tries before its centre-crop fallback
# Slots of one crop's parameters.
_AREA, _LOG_RATIO = 0, 1  # attempt k uses slots 2k and 2k + 1
_TOP, _LEFT, _FLIP, _JITTER, _FACTORS, _ORDER = 20, 21, 22, 23, 24, 28
_GRAY, _BLUR, _SIGMA, _SOLARIZE = 32, 33, 34, 35
_NUM_SLOTS = 36


def _splitmix64(x: np.ndarray) -> np.ndarray:
    # SplitMix64's finalizer (Steele et al., 2014): a bijection on 64-bit words whose outputs
    # for consecutive inputs pass BigCrush. uint64 arithmetic wraps, as the algorithm needs.
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def counter_uniforms(seeds: Sequence[int] | np.ndarray, stream: int, count: int) -> np.ndarray:
    """``[len(seeds), count]`` uniforms in [0, 1) (53 bits): draw ``j`` of ``stream`` for each
    seed, a pure function of (seed, stream, j).

    Example:
        >>> u = counter_uniforms([1, 2], stream=0, count=3)
        >>> u.shape, bool((u >= 0).all() and (u < 1).all())
        ((2, 3), True)
        >>> bool((counter_uniforms([2], 0, 3) == u[1]).all())
        True
    """
    keys = np.asarray([int(s) & _MASK64 for s in np.asarray(seeds).tolist()], dtype=np.uint64)
    counters = np.arange(count, dtype=np.uint64) + np.uint64(stream * count + 1)
    with np.errstate(over="ignore"):
        state = _splitmix64(keys)[:, None] + counters[None, :] * _GOLDEN
        bits = _splitmix64(state) >> np.uint64(11)
    return bits.astype(np.float64) * 2.0**-53


# ----------------------------------------------------------------------------- parameters


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


# ------------------------------------------------------------------------------ pixel ops


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
    end = torch.minimum(start + length, valid.to(dtype))
    inside = (positions[None, None, :] > start[:, None, None]) & (
        positions[None, None, :] < end[:, None, None]
    )
    weights = _bicubic(distance) * inside
    return weights / weights.sum(dim=-1, keepdim=True)


def _grey(x: torch.Tensor) -> torch.Tensor:
    # ITU-R 601-2 luma, PIL's "L" conversion: [N, 1, H, W].
    r, g, b = x.unbind(dim=1)
    return (0.299 * r + 0.587 * g + 0.114 * b).unsqueeze(1)


def _per_crop(factor: torch.Tensor) -> torch.Tensor:
    return factor.view(-1, 1, 1, 1)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with black: ``clamp(f * x)`` (PIL's ImageEnhance.Brightness), per crop."""
    return (x * _per_crop(factor)).clamp(0, 1)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the crop's mean grey level (PIL's ImageEnhance.Contrast), per crop."""
    mean = _grey(x).mean(dim=(1, 2, 3), keepdim=True)
    f = _per_crop(factor)
    return (f * x + (1 - f) * mean).clamp(0, 1)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the grey image (PIL's ImageEnhance.Color), per crop."""
    f = _per_crop(factor)
    return (f * x + (1 - f) * _grey(x)).clamp(0, 1)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue by ``shift`` turns, keeping HSV's value and saturation, per crop.

    With V = max, C = max - min and hue H in [0, 6), channel n in (R, G, B) = (5, 3, 1) is
    ``V - C * clamp(min(k, 4 - k), 0, 1)`` with ``k = (n + H) mod 6``: the HSV-to-RGB map,
    whose V and C a hue rotation leaves unchanged.
    """
    r, g, b = x.unbind(dim=1)
    value = torch.maximum(torch.maximum(r, g), b)
    chroma = value - torch.minimum(torch.minimum(r, g), b)
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


_ADJUSTMENTS: tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor], ...] = (
    adjust_brightness,
    adjust_contrast,
    adjust_saturation,
    adjust_hue,
)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Separable Gaussian blur of each crop with its own sigma, kernel ``2 * radius + 1``,
    edges replicated (as PIL's blur), as one grouped convolution per axis."""
    n, c, h, w = x.shape
    taps = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (taps[None, :] / sigma.to(x.dtype)[:, None]) ** 2)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)
    flat = x.reshape(1, n * c, h, w)
    flat = F.pad(flat, (radius, radius, 0, 0), mode="replicate")
    flat = F.conv2d(flat, kernel.view(n * c, 1, 1, -1), groups=n * c)
    flat = F.pad(flat, (0, 0, radius, radius), mode="replicate")
    flat = F.conv2d(flat, kernel.view(n * c, 1, -1, 1), groups=n * c)
    return flat.view(n, c, h, w)


# ------------------------------------------------------------------------------ transform


class BatchedMultiCrop:
    """DINO's multi-crop augmentation of a whole batch on its own device.

    ``__call__(images, seeds, sizes=None)`` returns ``2 + num_local_crops`` normalized float
    tensors ``[B, 3, size, size]``, the two global crops first, like
    :class:`~protossl.data.multicrop.MultiCropTransform` does per image.

    Args:
        image_size, num_local_crops, local_size, global_scale, local_scale, mean, std: as
            :class:`~protossl.data.multicrop.MultiCropTransform`.

    Example:
        >>> aug = BatchedMultiCrop(16, num_local_crops=4)
        >>> aug.num_crops, aug.local_size
        (6, 7)
    """

    def __init__(
        self,
        image_size: int,
        num_local_crops: int = 4,
        local_size: int | None = None,
        global_scale: tuple[float, float] = (0.4, 1.0),
        local_scale: tuple[float, float] = (0.05, 0.4),
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        local_size = default_local_size(image_size) if local_size is None else local_size
        check_multicrop_arguments(
            image_size, num_local_crops, local_size, global_scale, local_scale, mean, std
        )
        self.image_size = image_size
        self.local_size = local_size
        self.num_local_crops = num_local_crops
        kernel_size, self.blur_sigma = blur_parameters(image_size)
        self.blur_radius = kernel_size // 2
        global_range = (float(global_scale[0]), float(global_scale[1]))
        local_range = (float(local_scale[0]), float(local_scale[1]))
        self.views = [
            ViewSpec(image_size, global_range, blur_p=1.0, solarize_p=0.0),
            ViewSpec(image_size, global_range, blur_p=0.1, solarize_p=0.2),
        ] + [ViewSpec(local_size, local_range, blur_p=0.5, solarize_p=0.0)] * num_local_crops
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    @property
    def num_crops(self) -> int:
        """Crops per image: two global plus the local ones."""
        return 2 + self.num_local_crops

    def sample(
        self, seeds: Sequence[int] | np.ndarray | torch.Tensor, sizes: np.ndarray
    ) -> list[CropParameters]:
        """The parameters of every crop (one :class:`CropParameters` per crop, in order) for
        images of ``sizes`` ``[B, 2]`` (height, width) with these seeds."""
        seeds = _as_seed_array(seeds)
        heights, widths = sizes[:, 0], sizes[:, 1]
        return [
            sample_crop_parameters(seeds, heights, widths, index, view, self.blur_sigma)
            for index, view in enumerate(self.views)
        ]

    @torch.no_grad()
    def __call__(
        self,
        images: torch.Tensor,
        seeds: Sequence[int] | np.ndarray | torch.Tensor,
        sizes: torch.Tensor | np.ndarray | None = None,
    ) -> list[torch.Tensor]:
        """Crops of ``images`` ``[B, 3, H, W]`` (uint8, or float in [0, 1]); image i occupies
        the top-left ``sizes[i]`` = (height, width) pixels (the rest is padding; default: all
        of it). The crops are float32 on ``images.device``."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W] (got {tuple(images.shape)})")
        batch, _, height, width = images.shape
        if sizes is None:
            size_array = np.tile(np.array([[height, width]], dtype=np.int64), (batch, 1))
        else:
            size_array = np.asarray(torch.as_tensor(sizes).cpu(), dtype=np.int64)
        if len(_as_seed_array(seeds)) != batch or size_array.shape != (batch, 2):
            raise ValueError(f"need one seed and one (height, width) per image ({batch})")
        pixels = images.float()
        if images.dtype == torch.uint8:
            pixels = pixels.div_(255)
        params = self.sample(seeds, size_array)
        crops: list[torch.Tensor] = []
        # One pass per run of same-sized crops (the globals, then the locals).
        start = 0
        while start < len(self.views):
            end = start
            while end < len(self.views) and self.views[end].size == self.views[start].size:
                end += 1
            group = CropParameters.concat(params[start:end])
            out = self._render(pixels, size_array, group, self.views[start].size, end - start)
            crops.extend(out.split(batch))
            start = end
        return crops

    def _render(
        self,
        pixels: torch.Tensor,
        sizes: np.ndarray,
        p: CropParameters,
        size: int,
        copies: int,
    ) -> torch.Tensor:
        device = pixels.device
        batch, channels, height, width = pixels.shape

        def put(array: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(array)).to(device)

        box = put(p.box.astype(np.float32))
        valid = put(np.tile(sizes, (copies, 1)))
        rows = resample_matrices(box[:, 1], box[:, 3] - box[:, 1], valid[:, 0], size, height)
        cols = resample_matrices(box[:, 0], box[:, 2] - box[:, 0], valid[:, 1], size, width)
        cols = torch.where(put(p.flip).view(-1, 1, 1), cols.flip(1), cols)
        # [copies, B, 1, size, H] @ [1, B, 3, H, W] @ [copies, B, 1, W, size].
        rows = rows.view(copies, batch, 1, size, height)
        cols_t = cols.transpose(1, 2).reshape(copies, batch, 1, width, size)
        x = torch.matmul(torch.matmul(rows, pixels.unsqueeze(0)), cols_t)
        # Bicubic overshoots; PIL clips to the 8-bit range.
        x = x.reshape(copies * batch, channels, size, size).clamp_(0, 1)

        for position in range(4):
            for op in range(4):
                chosen = np.flatnonzero(p.jitter & (p.order[:, position] == op))
                if chosen.size:
                    index = put(chosen)
                    factor = put(p.factors[chosen, op].astype(np.float32))
                    x[index] = _ADJUSTMENTS[op](x[index], factor)
        chosen = np.flatnonzero(p.gray)
        if chosen.size:
            index = put(chosen)
            x[index] = _grey(x[index]).expand(-1, 3, -1, -1)
        chosen = np.flatnonzero(p.blur)
        if chosen.size:
            index = put(chosen)
            sigma = put(p.sigma[chosen].astype(np.float32))
            x[index] = gaussian_blur(x[index], sigma, self.blur_radius)
        chosen = np.flatnonzero(p.solarize)
        if chosen.size:
            index = put(chosen)
            part = x[index]
            # PIL inverts 8-bit values >= 128.
            x[index] = torch.where(part >= SOLARIZE_THRESHOLD / 255, 1 - part, part)
        return (x - self.mean.to(device)) / self.std.to(device)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(image_size={self.image_size}, "
            f"num_local_crops={self.num_local_crops}, local_size={self.local_size})"
        )


def _as_seed_array(seeds: Sequence[int] | np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(seeds, torch.Tensor):
        seeds = seeds.cpu().numpy()
    return np.asarray(seeds, dtype=np.int64).reshape(-1)


# --------------------------------------------------------------------- data loading glue


def image_to_uint8(img: Image.Image) -> torch.Tensor:
    """A PIL image as a uint8 tensor [3, H, W] (the batched pipeline's per-image work).

    Example:
        >>> image_to_uint8(Image.new("RGB", (5, 3), (1, 2, 3)))[:, 0, 0].tolist()
        [1, 2, 3]
    """
    return torch.from_numpy(np.array(img.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1)


class SeededImages(Dataset[tuple[torch.Tensor, int, int]]):
    """Items keyed by ``(index, sample_seed)``: ``(uint8 image [3, H, W], seed, label)``."""

    def __init__(self, dataset: Dataset[Any]) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int, int]:
        index, seed = key
        image, label = self.dataset[index]
        return image, seed, label


def collate_images(
    items: Sequence[tuple[torch.Tensor, int, int]],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack images of any sizes: ``(images [B, 3, H, W] zero-padded at the bottom right,
    sizes [B, 2] (height, width), seeds [B], labels [B])``.

    Example:
        >>> a, b = torch.zeros(3, 4, 5, dtype=torch.uint8), torch.ones(3, 6, 2, dtype=torch.uint8)
        >>> images, sizes, seeds, labels = collate_images([(a, 7, 0), (b, 8, 1)])
        >>> tuple(images.shape), sizes.tolist(), seeds.tolist()
        ((2, 3, 6, 5), [[4, 5], [6, 2]], [7, 8])
    """
    height = max(int(image.shape[1]) for image, _, _ in items)
    width = max(int(image.shape[2]) for image, _, _ in items)
    images = torch.zeros(len(items), 3, height, width, dtype=torch.uint8)
    for i, (image, _, _) in enumerate(items):
        images[i, :, : image.shape[1], : image.shape[2]] = image
    sizes = torch.tensor([[image.shape[1], image.shape[2]] for image, _, _ in items])
    seeds = torch.tensor([seed for _, seed, _ in items], dtype=torch.int64)
    labels = torch.tensor([label for _, _, label in items], dtype=torch.int64)
    return images, sizes, seeds, labels


class BatchedAugmentation:
    """The trainer's view of the batched pipeline (``data.augmentation: batched``).

    The data loader only decodes images to uint8 tensors; :meth:`crops` moves each batch
    to ``device`` and makes every crop there with :class:`BatchedMultiCrop`, seeded by each
    image's ``sample_seed``. Same members as
    :class:`~protossl.data.multicrop.StandardAugmentation`.

    Example:
        >>> from protossl.data import load_dataset
        >>> aug = BatchedAugmentation(BatchedMultiCrop(16, 2), torch.device("cpu"))
        >>> data = aug.dataset(load_dataset("digits", "test", transform=aug.transform))
        >>> [tuple(c.shape) for c in aug.crops(aug.collate([data[(0, 7)], data[(1, 8)]]))]
        [(2, 3, 16, 16), (2, 3, 16, 16), (2, 3, 7, 7), (2, 3, 7, 7)]
    """

    def __init__(self, multicrop: BatchedMultiCrop, device: torch.device) -> None:
        self.multicrop = multicrop
        self.device = device
        self.transform = image_to_uint8

    def dataset(self, train_set: Dataset[Any]) -> Dataset[Any]:
        """Items keyed by ``(index, sample_seed)``: ``(uint8 image, seed, label)``."""
        return SeededImages(train_set)

    def collate(self, items: list[Any]) -> Any:
        return collate_images(items)

    def crops(self, batch: Any) -> list[torch.Tensor]:
        """The crops of a loader batch, made on the device."""
        images, sizes, seeds, _labels = batch
        return self.multicrop(images.to(self.device, non_blocking=True), seeds, sizes)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.multicrop!r}, device={self.device})"


AUGMENTATIONS = ("standard", "batched")


def build_train_augmentation(
    data: DataConfig, device: torch.device | str = "cpu"
) -> StandardAugmentation | BatchedAugmentation:
    """The training augmentation that ``data.augmentation`` names, for crops on ``device``.

    Example:
        >>> build_train_augmentation(DataConfig(augmentation="batched")).multicrop
        BatchedMultiCrop(image_size=16, num_local_crops=4, local_size=7)
    """
    kwargs: dict[str, Any] = {
        "num_local_crops": data.num_local_crops,
        "local_size": data.local_size,
        "global_scale": (data.global_scale[0], data.global_scale[1]),
        "local_scale": (data.local_scale[0], data.local_scale[1]),
    }
    if data.augmentation == "standard":
        return StandardAugmentation(MultiCropTransform(data.image_size, **kwargs))
    if data.augmentation == "batched":
        return BatchedAugmentation(
            BatchedMultiCrop(data.image_size, **kwargs), torch.device(device)
        )
    raise UserError(
        f"unknown data.augmentation '{data.augmentation}'; choose one of: "
        + ", ".join(AUGMENTATIONS)
    )
