"""Data-loading glue of the batched pipeline: the loader only decodes images to uint8
tensors, and :class:`BatchedAugmentation` makes every crop of a batch on the device.

Moving the augmentation out of the loader workers is the point of the batched pipeline:
the workers' per-image work shrinks to a decode and a copy (:func:`image_to_uint8`), and
images of any size travel in one zero-padded batch with their true sizes
(:func:`collate_images`), which :class:`~protossl.data.batched_multicrop.BatchedMultiCrop`
respects. Each item carries its ``sample_seed`` (:mod:`protossl.data.sampling`), so the
crops depend on the image and the seed only.

Example:
    >>> import torch
    >>> from PIL import Image
    >>> item = (image_to_uint8(Image.new("RGB", (3, 2))), 5, 1)
    >>> images, sizes, seeds, labels = collate_images([item])
    >>> images.dtype, sizes.tolist(), seeds.tolist(), labels.tolist()
    (torch.uint8, [[2, 3]], [5], [1])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from protossl.data.batched_multicrop import BatchedMultiCrop


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
        # The sampler sends the seed with the index (made from the run's seed, the epoch and
        # the index only), so it does not depend on which worker process loads the item.
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
