"""Epoch order and per-image augmentation seeds that do not depend on the process count.

A run with global batch B must see the same images, augmented the same way, on
one process or on W processes (each with B / W images of every global batch),
and after a resume. So:

- :class:`ShardedEpochSampler` draws one permutation per epoch from
  ``(seed, epoch)``, cuts it into global batches of B (the incomplete last one
  is dropped, as ``drop_last=True``) and gives rank r the r-th slice of B / W
  of every global batch;
- it yields ``(index, sample_seed)`` pairs; :class:`SeededAugmentation` wraps a
  data set and draws each image's augmentation from its own generator state,
  seeded by ``sample_seed`` (which depends on seed, epoch and index only), with
  the caller's global RNG state untouched.

Example:
    >>> sampler = ShardedEpochSampler(10, global_batch=4, seed=0, epoch=0, rank=1, world_size=2)
    >>> len(sampler)  # 2 global batches of 4, 2 images each for rank 1
    4
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

_MIX = 0x9E3779B97F4A7C15  # odd 64-bit constant (golden ratio) for seed mixing


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's order (the trainer's historical formula)."""
    return seed * 1_000_003 + epoch


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one image's augmentation in one epoch."""
    return (epoch_seed(seed, epoch) * _MIX + index * 0xBF58476D1CE4E5B9 + 1) % (1 << 63)


class ShardedEpochSampler(Sampler[tuple[int, int]]):
    """This rank's ``(index, sample_seed)`` pairs of one epoch, in global-batch order.

    Args:
        num_samples: Size of the data set.
        global_batch: B, images per optimizer step over all processes.
        seed: The run's seed.
        epoch: The epoch (with ``seed``, fixes the order and the augmentations).
        rank: This process's rank r in [0, world_size).
        world_size: W; must divide ``global_batch``.
    """

    def __init__(
        self,
        num_samples: int,
        global_batch: int,
        seed: int,
        epoch: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size (got {rank}, {world_size})")
        if global_batch < 1 or global_batch % world_size:
            raise ValueError(
                f"global batch {global_batch} must be a positive multiple of {world_size} processes"
            )
        self.num_samples = num_samples
        self.global_batch = global_batch
        self.seed = seed
        self.epoch = epoch
        self.rank = rank
        self.world_size = world_size
        self.local_batch = global_batch // world_size
        self.num_batches = num_samples // global_batch

    def __len__(self) -> int:
        return self.num_batches * self.local_batch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        order = torch.randperm(self.num_samples, generator=generator).tolist()
        start = self.rank * self.local_batch
        for batch in range(self.num_batches):
            offset = batch * self.global_batch + start
            for index in order[offset : offset + self.local_batch]:
                yield index, sample_seed(self.seed, self.epoch, index)


class SeededAugmentation(Dataset[Any]):
    """Wraps a data set whose transform draws from torch's global RNG (torchvision).

    ``dataset[(index, seed)]`` loads item ``index`` with the global RNG seeded by
    ``seed`` for the duration of the call and restored afterwards, so the result
    depends only on ``(index, seed)``: not on worker processes, on the order of
    calls, or on the number of training processes.
    """

    def __init__(self, dataset: Dataset[Any]) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]
