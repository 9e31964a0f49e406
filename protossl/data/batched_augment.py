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

This module is the entry point (:func:`build_train_augmentation`) and keeps the names it
always had; the work is done by one module per step:

* :mod:`protossl.data.counter_rng` -- the counter-based uniforms;
* :mod:`protossl.data.crop_params` -- every crop's random parameters (:class:`ViewSpec`);
* :mod:`protossl.data.batched_resample` -- crop + resize + flip as resampling matrices;
* :mod:`protossl.data.batched_colour` -- colour jitter, grayscale, solarization;
* :mod:`protossl.data.batched_blur` -- the per-crop Gaussian blur;
* :mod:`protossl.data.batched_multicrop` -- :class:`BatchedMultiCrop`, which runs them;
* :mod:`protossl.data.batched_loading` -- the loader side and :class:`BatchedAugmentation`.

Example:
    >>> aug = BatchedMultiCrop(image_size=16, num_local_crops=2)
    >>> images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    >>> crops = aug(images, seeds=torch.arange(4))
    >>> [tuple(c.shape) for c in crops]
    [(4, 3, 16, 16), (4, 3, 16, 16), (4, 3, 7, 7), (4, 3, 7, 7)]
"""

from __future__ import annotations

from typing import Any

import torch

from protossl.config import DataConfig
from protossl.core.errors import UserError
from protossl.data.batched_blur import gaussian_blur
from protossl.data.batched_colour import (
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
)
from protossl.data.batched_loading import (
    BatchedAugmentation,
    SeededImages,
    collate_images,
    image_to_uint8,
)
from protossl.data.batched_multicrop import BatchedMultiCrop
from protossl.data.batched_resample import resample_matrices
from protossl.data.counter_rng import counter_uniforms
from protossl.data.crop_params import CropParameters, ViewSpec, sample_crop_parameters
from protossl.data.multicrop import MultiCropTransform, StandardAugmentation

__all__ = [
    "AUGMENTATIONS",
    "BatchedAugmentation",
    "BatchedMultiCrop",
    "CropParameters",
    "SeededImages",
    "ViewSpec",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "build_train_augmentation",
    "collate_images",
    "counter_uniforms",
    "gaussian_blur",
    "image_to_uint8",
    "resample_matrices",
    "sample_crop_parameters",
]

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
