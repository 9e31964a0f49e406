"""DINO's multi-crop augmentation of a whole batch on its own device: :class:`BatchedMultiCrop`.

The crops follow :class:`~protossl.data.multicrop.MultiCropTransform` (Caron et al.,
"Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021: 2 global + n local
crops), made from a padded batch ``[B, 3, H, W]`` with a handful of batched tensor
operations per group of same-sized crops instead of ~30 PIL calls per crop. The steps, in
torchvision's order, live in their own modules:

* the parameters -- :mod:`protossl.data.crop_params` (counter-based, host arrays);
* crop + resize + flip -- :mod:`protossl.data.batched_resample` (one matmul pair);
* colour jitter, grayscale, solarization -- :mod:`protossl.data.batched_colour`;
* blur -- :mod:`protossl.data.batched_blur`.

Example:
    >>> import torch
    >>> aug = BatchedMultiCrop(image_size=16, num_local_crops=2)
    >>> images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    >>> [tuple(c.shape) for c in aug(images, seeds=torch.arange(4))]
    [(4, 3, 16, 16), (4, 3, 16, 16), (4, 3, 7, 7), (4, 3, 7, 7)]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from protossl.data.batched_blur import gaussian_blur
from protossl.data.batched_colour import ADJUSTMENTS, grayscale, solarize
from protossl.data.batched_resample import resample_matrices
from protossl.data.crop_params import CropParameters, ViewSpec, sample_crop_parameters
from protossl.data.multicrop import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    blur_parameters,
    check_multicrop_arguments,
    default_local_size,
)


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
        # DINO's three recipes: global 1 always blurred, global 2 rarely blurred and
        # sometimes solarized, locals blurred half the time.
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

        # ColorJitter applies its four adjustments in a random order per crop: at each
        # position, every adjustment runs once on the crops that have it there.
        for position in range(4):
            for op in range(4):
                chosen = np.flatnonzero(p.jitter & (p.order[:, position] == op))
                if chosen.size:
                    index = put(chosen)
                    factor = put(p.factors[chosen, op].astype(np.float32))
                    x[index] = ADJUSTMENTS[op](x[index], factor)
        chosen = np.flatnonzero(p.gray)
        if chosen.size:
            index = put(chosen)
            x[index] = grayscale(x[index])
        chosen = np.flatnonzero(p.blur)
        if chosen.size:
            index = put(chosen)
            sigma = put(p.sigma[chosen].astype(np.float32))
            x[index] = gaussian_blur(x[index], sigma, self.blur_radius)
        chosen = np.flatnonzero(p.solarize)
        if chosen.size:
            index = put(chosen)
            x[index] = solarize(x[index])
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
