"""Multi-crop augmentation of DINO and the matching deterministic evaluation transform.

:class:`MultiCropTransform` follows ``DataAugmentationDINO`` of the official DINO code (Caron
et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021): two global
crops and several small local crops, each with a random resized crop (bicubic), a horizontal
flip, colour jitter and random grayscale; global crop 1 is always blurred, global crop 2 is
blurred with p=0.1 and solarized with p=0.2, local crops are blurred with p=0.5.

Two things are adapted to small images (CIFAR at 32 px, digits at 8-16 px):

* the local crop size defaults to DINO's ratio 96/224 of the global size;
* DINO blurs with sigma in [0.1, 2.0] *pixels* at 224 px. Here sigma is scaled by
  ``image_size / 224`` so a blur removes the same fraction of the image's detail at any size,
  and the kernel is ``2 * ceil(3 * sigma_max) + 1`` (odd, >= 3; 13 at 224 px, 3 at 32 px).
  Local crops use the same pixel sigma as the global ones, as in DINO.

All randomness comes from torch's global generator (torchvision's transforms draw from it),
so ``torch.manual_seed`` makes the crops reproducible.

Example:
    >>> from PIL import Image
    >>> transform = MultiCropTransform(image_size=32, num_local_crops=2)
    >>> [tuple(c.shape) for c in transform(Image.new("RGB", (40, 40)))]
    [(3, 32, 32), (3, 32, 32), (3, 14, 14), (3, 14, 14)]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from PIL import Image
from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# DINO's reference geometry: 224 px global crops, 96 px local crops, blur sigma 0.1..2.0 px.
_DINO_GLOBAL_SIZE = 224
_DINO_LOCAL_SIZE = 96
_DINO_SIGMA = (0.1, 2.0)
_MIN_SIZE = 4
_BICUBIC = T.InterpolationMode.BICUBIC


def default_local_size(image_size: int) -> int:
    """DINO's local/global size ratio (96/224) applied to ``image_size``, rounded, >= 4.

    Example:
        >>> default_local_size(224), default_local_size(32), default_local_size(8)
        (96, 14, 4)
    """
    return max(_MIN_SIZE, round(image_size * _DINO_LOCAL_SIZE / _DINO_GLOBAL_SIZE))


def blur_parameters(image_size: int) -> tuple[int, tuple[float, float]]:
    """Kernel size and sigma range of DINO's Gaussian blur scaled to ``image_size``.

    Example:
        >>> blur_parameters(224)
        (13, (0.1, 2.0))
    """
    scale = image_size / _DINO_GLOBAL_SIZE
    sigma = (_DINO_SIGMA[0] * scale, _DINO_SIGMA[1] * scale)
    # 3 sigma on each side holds 99.7% of the Gaussian's mass.
    kernel_size = max(3, 2 * math.ceil(3 * sigma[1]) + 1)
    return kernel_size, sigma


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
        _check_size("image_size", image_size)
        _check_size("local_size", local_size)
        if isinstance(num_local_crops, bool) or not isinstance(num_local_crops, int):
            raise ValueError(f"num_local_crops must be an int (got {num_local_crops!r})")
        if num_local_crops < 0:
            raise ValueError(f"num_local_crops must be >= 0 (got {num_local_crops})")
        _check_scale("global_scale", global_scale)
        _check_scale("local_scale", local_scale)
        normalize = _normalize(mean, std)

        self.image_size = image_size
        self.local_size = local_size
        self.num_local_crops = num_local_crops
        self.blur_kernel_size, self.blur_sigma = blur_parameters(image_size)
        self.global_transform_1 = T.Compose(
            [
                self._crop(image_size, global_scale),
                _flip_and_color_jitter(),
                self._blur(1.0),
                normalize,
            ]
        )
        self.global_transform_2 = T.Compose(
            [
                self._crop(image_size, global_scale),
                _flip_and_color_jitter(),
                self._blur(0.1),
                T.RandomSolarize(threshold=128, p=0.2),
                normalize,
            ]
        )
        self.local_transform = T.Compose(
            [
                self._crop(local_size, local_scale),
                _flip_and_color_jitter(),
                self._blur(0.5),
                normalize,
            ]
        )

    @property
    def num_crops(self) -> int:
        """Crops per image: two global plus the local ones."""
        return 2 + self.num_local_crops

    def __call__(self, img: Image.Image) -> list[torch.Tensor]:
        crops = [self.global_transform_1(img), self.global_transform_2(img)]
        crops.extend(self.local_transform(img) for _ in range(self.num_local_crops))
        return crops

    @staticmethod
    def _crop(size: int, scale: tuple[float, float]) -> T.RandomResizedCrop:
        return T.RandomResizedCrop(size, scale=scale, interpolation=_BICUBIC)

    def _blur(self, p: float) -> T.RandomApply:
        # A kernel wider than twice the crop cannot be reflect-padded; cap it (still odd).
        smallest = min(self.image_size, self.local_size)
        kernel_size = min(self.blur_kernel_size, 2 * smallest - 1)
        return T.RandomApply([T.GaussianBlur(kernel_size, sigma=self.blur_sigma)], p=p)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(image_size={self.image_size}, "
            f"num_local_crops={self.num_local_crops}, local_size={self.local_size})"
        )


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
        self.image_size = image_size
        self.transform = T.Compose(
            [
                T.Resize(image_size, interpolation=_BICUBIC),
                T.CenterCrop(image_size),
                _normalize(mean, std),
            ]
        )

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return self.transform(img)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(image_size={self.image_size})"


def _flip_and_color_jitter() -> T.Compose:
    return T.Compose(
        [
            T.RandomHorizontalFlip(p=0.5),
            T.RandomApply(
                [T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)], p=0.8
            ),
            T.RandomGrayscale(p=0.2),
        ]
    )


def _normalize(mean: Sequence[float], std: Sequence[float]) -> T.Compose:
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std need 3 values, one per RGB channel (got {mean}, {std})")
    if any(s <= 0 for s in std):
        raise ValueError(f"std must be positive (got {std})")
    return T.Compose([T.ToTensor(), T.Normalize(tuple(mean), tuple(std))])


def _check_size(name: str, size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < _MIN_SIZE:
        raise ValueError(f"{name} must be an int >= {_MIN_SIZE} (got {size!r})")


def _check_scale(name: str, scale: tuple[float, float]) -> None:
    if len(scale) != 2 or not 0.0 < scale[0] <= scale[1] <= 1.0:
        raise ValueError(f"{name} must be (low, high) with 0 < low <= high <= 1 (got {scale})")
