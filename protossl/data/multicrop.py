"""Multi-crop augmentation of DINO and the matching deterministic evaluation transform.

:class:`MultiCropTransform` follows ``DataAugmentationDINO`` of the official DINO code (Caron
et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021): two global
crops and several small local crops, each with a random resized crop (bicubic), a horizontal
flip, colour jitter and random grayscale; global crop 1 is always blurred, global crop 2 is
blurred with p=0.1 and solarized with p=0.2, local crops are blurred with p=0.5.

Two things are adapted to small images (CIFAR at 32 px, digits at 8-16 px):

* the local crop size defaults to DINO's ratio 96/224 of the global size;
* DINO blurs with sigma in [0.1, 2.0] *pixels* at 224 px. Here sigma is scaled by
  ``image_size / 224`` so a blur removes the same fraction of the image's detail at any size.
  Local crops use the same pixel sigma as the global ones, as in DINO.

The blur is PIL's ``ImageFilter.GaussianBlur(radius=sigma)``, as in the official DINO code
(its ``GaussianBlur`` class) and lightly: PIL's radius *is* the standard deviation (three
box blurs with the Gaussian's variance; ``tests/data/test_batched_augment.py`` measures it), and
it costs about a tenth of torchvision's tensor blur on a PIL image. Every other step calls PIL
directly with exactly the random draws and arithmetic of the torchvision transforms it
replaces (the tests compare them bit for bit), without their per-call overhead.

All randomness comes from torch's global generator, drawn in torchvision's order, so
``torch.manual_seed`` makes the crops reproducible. For whole batches on the training device,
see :mod:`protossl.data.batched_augment`.

Example:
    >>> from PIL import Image
    >>> transform = MultiCropTransform(image_size=32, num_local_crops=2)
    >>> [tuple(c.shape) for c in transform(Image.new("RGB", (40, 40)))]
    [(3, 32, 32), (3, 32, 32), (3, 14, 14), (3, 14, 14)]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter
from torch.utils.data import Dataset, default_collate
from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# DINO's reference geometry: 224 px global crops, 96 px local crops, blur sigma 0.1..2.0 px.
_DINO_GLOBAL_SIZE = 224
_DINO_LOCAL_SIZE = 96
_DINO_SIGMA = (0.1, 2.0)
_MIN_SIZE = 4
_BICUBIC = T.InterpolationMode.BICUBIC
# DINO's colour jitter: brightness, contrast, saturation factors in [1 - x, 1 + x], hue
# shift in [-0.1, 0.1], applied with p=0.8 in a random order; then grayscale with p=0.2.
JITTER = (0.4, 0.4, 0.2, 0.1)
JITTER_P = 0.8
GRAYSCALE_P = 0.2
FLIP_P = 0.5
RATIO = (3.0 / 4.0, 4.0 / 3.0)  # RandomResizedCrop's aspect-ratio range
SOLARIZE_THRESHOLD = 128
_SOLARIZE_LUT = [i if i < SOLARIZE_THRESHOLD else 255 - i for i in range(256)] * 3
_LOG_RATIO = tuple(torch.log(torch.tensor(RATIO)).tolist())  # in float32, as get_params


def _float32(value: float) -> float:
    # torchvision compares a float32 draw with a probability in float32
    # (``torch.rand(1) < p``); the draw's .item() against p rounded to float32 gives the
    # same answer without building tensors.
    return float(np.float32(value))


def _rand() -> float:
    return torch.rand(1).item()


_FLIP_P32, _JITTER_P32, _GRAYSCALE_P32 = _float32(FLIP_P), _float32(JITTER_P), _float32(GRAYSCALE_P)


def default_local_size(image_size: int) -> int:
    """DINO's local/global size ratio (96/224) applied to ``image_size``, rounded, >= 4.

    Example:
        >>> default_local_size(224), default_local_size(32), default_local_size(8)
        (96, 14, 4)
    """
    return max(_MIN_SIZE, round(image_size * _DINO_LOCAL_SIZE / _DINO_GLOBAL_SIZE))


def blur_parameters(image_size: int) -> tuple[int, tuple[float, float]]:
    """Kernel size and sigma range of DINO's Gaussian blur scaled to ``image_size``.

    The kernel size, ``2 * ceil(3 * sigma_max) + 1`` (odd, >= 3; 13 at 224 px, 3 at 32 px),
    is what a truncated kernel needs to hold 99.7% of the Gaussian's mass.

    Example:
        >>> blur_parameters(224)
        (13, (0.1, 2.0))
    """
    scale = image_size / _DINO_GLOBAL_SIZE
    sigma = (_DINO_SIGMA[0] * scale, _DINO_SIGMA[1] * scale)
    # 3 sigma on each side holds 99.7% of the Gaussian's mass.
    kernel_size = max(3, 2 * math.ceil(3 * sigma[1]) + 1)
    return kernel_size, sigma


class CropView:
    """One DINO view of a PIL image: random resized crop, flip, jitter, grayscale, blur,
    solarize, normalize; returns a float tensor [3, size, size].

    Each step draws from torch's global generator exactly as the torchvision transform it
    stands for (``RandomResizedCrop``, ``RandomHorizontalFlip``, ``RandomApply(ColorJitter)``,
    ``RandomGrayscale``, ``RandomApply(GaussianBlur)``, ``RandomSolarize``) and computes the
    same pixels, the blur excepted (PIL's filter, see the module docstring).

    Example:
        >>> view = CropView(8, scale=(0.4, 1.0), blur_p=1.0, blur_sigma=(0.1, 2.0))
        >>> view(Image.new("RGB", (12, 10))).shape
        torch.Size([3, 8, 8])
    """

    def __init__(
        self,
        size: int,
        scale: tuple[float, float],
        blur_p: float,
        blur_sigma: tuple[float, float],
        solarize_p: float = 0.0,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        self.size = size
        self.scale = (float(scale[0]), float(scale[1]))
        self.blur_p = blur_p
        self._blur_p32 = _float32(blur_p)
        self._solarize_p32 = _float32(solarize_p)
        self.blur_sigma = blur_sigma
        self.solarize_p = solarize_p
        _check_mean_std(mean, std)
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        img = self._crop(img)
        if _rand() < _FLIP_P32:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if _rand() <= _JITTER_P32:  # RandomApply's test, `not p < rand`
            img = color_jitter(img)
        if _rand() < _GRAYSCALE_P32:
            img = img.convert("L").convert("RGB")
        if _rand() <= self._blur_p32:
            sigma = torch.empty(1).uniform_(*self.blur_sigma).item()  # GaussianBlur's draw
            img = img.filter(ImageFilter.GaussianBlur(radius=sigma))
        if self.solarize_p > 0 and _rand() < self._solarize_p32:
            img = img.point(_SOLARIZE_LUT)  # ImageOps.solarize's table
        return self._to_tensor(img)

    def _crop(self, img: Image.Image) -> Image.Image:
        top, left, height, width = self._crop_box(img.width, img.height)
        img = img.crop((left, top, left + width, top + height))
        if img.size == (self.size, self.size):  # torchvision's resize skips this case too
            return img
        return img.resize((self.size, self.size), Image.Resampling.BICUBIC)

    def _crop_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        # RandomResizedCrop.get_params, draw for draw, with its constants computed once.
        area = height * width
        for _ in range(10):
            target_area = area * torch.empty(1).uniform_(*self.scale).item()
            aspect_ratio = torch.exp(torch.empty(1).uniform_(*_LOG_RATIO)).item()
            w = int(round(math.sqrt(target_area * aspect_ratio)))
            h = int(round(math.sqrt(target_area / aspect_ratio)))
            if 0 < w <= width and 0 < h <= height:
                i = int(torch.randint(0, height - h + 1, size=(1,)).item())
                j = int(torch.randint(0, width - w + 1, size=(1,)).item())
                return i, j, h, w
        in_ratio = width / height
        if in_ratio < RATIO[0]:
            w, h = width, int(round(width / RATIO[0]))
        elif in_ratio > RATIO[1]:
            w, h = int(round(height * RATIO[1])), height
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def _to_tensor(self, img: Image.Image) -> torch.Tensor:
        # ToTensor + Normalize with the same float32 operations, in numpy in one pass.
        array = np.asarray(img, dtype=np.float32) / np.float32(255)
        array = (array - self.mean) / self.std
        return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def color_jitter(
    img: Image.Image,
    strength: tuple[float, float, float, float] = JITTER,
) -> Image.Image:
    """torchvision's ``ColorJitter(*strength)`` on a PIL RGB image, same draws and pixels.

    A random order of brightness, contrast, saturation and hue (``torch.randperm(4)``), then
    the four factors, drawn from torch's global generator.

    Example:
        >>> torch.manual_seed(0) and color_jitter(Image.new("RGB", (4, 4), (90, 20, 200))).size
        (4, 4)
    """
    order = torch.randperm(4)
    brightness, contrast, saturation, hue = strength
    factors = [
        float(torch.empty(1).uniform_(1 - brightness, 1 + brightness)),
        float(torch.empty(1).uniform_(1 - contrast, 1 + contrast)),
        float(torch.empty(1).uniform_(1 - saturation, 1 + saturation)),
        float(torch.empty(1).uniform_(-hue, hue)),
    ]
    for op in order.tolist():
        if op == 0:
            img = ImageEnhance.Brightness(img).enhance(factors[0])
        elif op == 1:
            img = _adjust_contrast(img, factors[1])
        elif op == 2:
            img = ImageEnhance.Color(img).enhance(factors[2])
        else:
            img = _adjust_hue(img, factors[3])
    return img


def _adjust_contrast(img: Image.Image, factor: float) -> Image.Image:
    # PIL's ImageEnhance.Contrast with its grey level, int(mean of "L" + 0.5), from numpy:
    # the sum of uint8 values is exact in float64, so the mean is the same number.
    mean = int(np.asarray(img.convert("L")).mean() + 0.5)
    degenerate = Image.new("L", img.size, mean).convert(img.mode)
    return Image.blend(degenerate, img, factor)


def _adjust_hue(img: Image.Image, factor: float) -> Image.Image:
    # torchvision's PIL adjust_hue: shift H of PIL's 8-bit HSV, wrapping around.
    h, s, v = img.convert("HSV").split()
    hue = np.array(h, dtype=np.uint8)
    hue += np.int32(factor * 255).astype(np.uint8)  # overflows on purpose: hue is circular
    return Image.merge("HSV", (Image.fromarray(hue, "L"), s, v)).convert(img.mode)


class MultiCropTransform:
    """DINO's multi-crop augmentation: ``__call__(img)`` returns ``2 + num_local_crops``
    normalized tensors, the two global crops first.

    Args:
        image_size: side of the global crops in pixels (>= 4).
        num_local_crops: number of local crops (>= 0).
        local_size: side of the local crops; defaults to ``image_size * 96 / 224`` (>= 4).
        global_scale: area range of the global crops (DINO: 0.4-1.0).
        local_scale: area range of the local crops (DINO: 0.05-0.4).
        mean, std: per-channel normalization (ImageNet's by default).

    Example:
        >>> transform = MultiCropTransform(image_size=16, num_local_crops=4)
        >>> transform.num_crops, transform.local_size
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
        self.blur_kernel_size, self.blur_sigma = blur_parameters(image_size)
        sigma = self.blur_sigma
        self.global_transform_1 = CropView(image_size, global_scale, 1.0, sigma, 0.0, mean, std)
        self.global_transform_2 = CropView(image_size, global_scale, 0.1, sigma, 0.2, mean, std)
        self.local_transform = CropView(local_size, local_scale, 0.5, sigma, 0.0, mean, std)

    @property
    def num_crops(self) -> int:
        """Crops per image: two global plus the local ones."""
        return 2 + self.num_local_crops

    def __call__(self, img: Image.Image) -> list[torch.Tensor]:
        crops = [self.global_transform_1(img), self.global_transform_2(img)]
        crops.extend(self.local_transform(img) for _ in range(self.num_local_crops))
        return crops

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(image_size={self.image_size}, "
            f"num_local_crops={self.num_local_crops}, local_size={self.local_size})"
        )


class StandardAugmentation:
    """The trainer's view of the per-image pipeline (``data.augmentation: standard``).

    Each image's crops are made in the data loader (its workers, if any) by
    :class:`MultiCropTransform`, from torch's generator seeded by the image's
    ``sample_seed`` (:class:`~protossl.data.sampling.SeededAugmentation`).
    :class:`~protossl.data.batched_augment.BatchedAugmentation` has the same four members.

    Example:
        >>> aug = StandardAugmentation(MultiCropTransform(16, 2))
        >>> from protossl.data import load_dataset
        >>> data = aug.dataset(load_dataset("digits", "test", transform=aug.transform))
        >>> [tuple(c.shape) for c in aug.crops(aug.collate([data[(0, 7)], data[(1, 8)]]))]
        [(2, 3, 16, 16), (2, 3, 16, 16), (2, 3, 7, 7), (2, 3, 7, 7)]
    """

    def __init__(self, transform: MultiCropTransform) -> None:
        self.transform = transform

    def dataset(self, train_set: Dataset[Any]) -> Dataset[Any]:
        """Items keyed by ``(index, sample_seed)``: ``(crops, label)``."""
        from protossl.data.sampling import SeededAugmentation

        return SeededAugmentation(train_set)

    def collate(self, items: list[Any]) -> Any:
        return default_collate(items)

    def crops(self, batch: Any) -> list[torch.Tensor]:
        """The crops of a loader batch (on the CPU; the trainer moves them)."""
        crops, _labels = batch
        return list(crops)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.transform!r})"


class EvalTransform:
    """Deterministic view for evaluation: resize the short side to ``image_size`` (bicubic),
    centre-crop a square (a no-op for square images), then ToTensor + Normalize with the same
    mean/std as :class:`MultiCropTransform`.

    Example:
        >>> from PIL import Image
        >>> EvalTransform(16)(Image.new("RGB", (8, 8))).shape
        torch.Size([3, 16, 16])
    """

    def __init__(
        self,
        image_size: int,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        _check_size("image_size", image_size)
        _check_mean_std(mean, std)
        self.image_size = image_size
        self.transform = T.Compose(
            [
                T.Resize(image_size, interpolation=_BICUBIC),
                T.CenterCrop(image_size),
                T.ToTensor(),
                T.Normalize(tuple(mean), tuple(std)),
            ]
        )

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return self.transform(img)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(image_size={self.image_size})"


def check_multicrop_arguments(
    image_size: int,
    num_local_crops: int,
    local_size: int,
    global_scale: tuple[float, float],
    local_scale: tuple[float, float],
    mean: Sequence[float],
    std: Sequence[float],
) -> None:
    """ValueError on arguments no multi-crop pipeline can use (shared by both pipelines)."""
    _check_size("image_size", image_size)
    _check_size("local_size", local_size)
    if isinstance(num_local_crops, bool) or not isinstance(num_local_crops, int):
        raise ValueError(f"num_local_crops must be an int (got {num_local_crops!r})")
    if num_local_crops < 0:
        raise ValueError(f"num_local_crops must be >= 0 (got {num_local_crops})")
    _check_scale("global_scale", global_scale)
    _check_scale("local_scale", local_scale)
    _check_mean_std(mean, std)


def _check_mean_std(mean: Sequence[float], std: Sequence[float]) -> None:
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std need 3 values, one per RGB channel (got {mean}, {std})")
    if any(s <= 0 for s in std):
        raise ValueError(f"std must be positive (got {std})")


def _check_size(name: str, size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < _MIN_SIZE:
        raise ValueError(f"{name} must be an int >= {_MIN_SIZE} (got {size!r})")


def _check_scale(name: str, scale: tuple[float, float]) -> None:
    if len(scale) != 2 or not 0.0 < scale[0] <= scale[1] <= 1.0:
        raise ValueError(f"{name} must be (low, high) with 0 < low <= high <= 1 (got {scale})")
