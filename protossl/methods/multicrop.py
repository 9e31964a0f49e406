"""The multi-crop forward pass that DINO, iBOT, MSN and SwAV share.

Multi-crop (SwAV, Caron et al., NeurIPS 2020) gives each image
:data:`NUM_GLOBAL_CROPS` global crops at ``data.image_size`` and several smaller
local crops; the trainer hands a method the list of crops, globals first. A
backbone batches only crops of one resolution, so, as DINO's ``MultiCropWrapper``
(Caron et al., ICCV 2021), consecutive crops of equal size go through the
backbone in one pass and the caller then runs its head once over the
concatenated features: a BatchNorm head normalizes every crop together, and the
features keep the crop order (crop ``v`` of image ``b`` is row ``v * B + b``).

Example:
    >>> crops = [torch.zeros(4, 3, 16, 16)] * 2 + [torch.zeros(4, 3, 8, 8)] * 3
    >>> [tuple(images.shape) for images in resolution_runs(crops)]
    [(8, 3, 16, 16), (12, 3, 8, 8)]
    >>> multicrop_features(lambda images: images.mean(dim=(2, 3)), crops).shape
    torch.Size([20, 3])
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

# Crops 0 and 1 of every batch are the global crops (DINO, iBOT, SwAV: two).
NUM_GLOBAL_CROPS = 2


def resolution_runs(crops: list[torch.Tensor]) -> Iterator[torch.Tensor]:
    """Each run of consecutive same-sized crops, concatenated along the batch.

    Only consecutive crops are grouped (the crop order is kept), as in DINO's
    ``MultiCropWrapper``; a generator, so a caller that draws random numbers per
    run (MSN's patch drop) draws them in run order, right before that run's pass.
    """
    start = 0
    while start < len(crops):
        end = start
        while end < len(crops) and crops[end].shape[-2:] == crops[start].shape[-2:]:
            end += 1
        yield torch.cat(crops[start:end])
        start = end


def multicrop_features(
    encode: Callable[[torch.Tensor], torch.Tensor], crops: list[torch.Tensor]
) -> torch.Tensor:
    """``encode`` (a backbone) applied once per resolution run: features [V * B, ...].

    Args:
        encode: maps a batch of same-sized images [N, 3, H, W] to features [N, ...].
        crops: V crops, each [B, 3, H_v, W_v].
    """
    return torch.cat([encode(images) for images in resolution_runs(crops)])
