"""Epoch order and per-image seeds independent of the number of processes."""

from __future__ import annotations

import pytest
import torch

from protossl.data.sampling import SeededAugmentation, ShardedEpochSampler, sample_seed


@pytest.mark.parametrize("n,batch,world", [(10, 4, 2), (100, 12, 3), (64, 8, 8), (7, 7, 1)])
def test_shards_of_each_global_batch_rebuild_the_single_process_batch(
    n: int, batch: int, world: int
) -> None:
    single = list(ShardedEpochSampler(n, batch, seed=3, epoch=5))
    assert len(single) == (n // batch) * batch
    shards = [
        list(ShardedEpochSampler(n, batch, seed=3, epoch=5, rank=r, world_size=world))
        for r in range(world)
    ]
    local = batch // world
    for b in range(n // batch):
        rebuilt = [pair for shard in shards for pair in shard[b * local : (b + 1) * local]]
        assert rebuilt == single[b * batch : (b + 1) * batch]
    indices = [i for i, _ in single]
    assert len(set(indices)) == len(indices)  # a permutation, no repeats
    assert all(seed == sample_seed(3, 5, i) for i, seed in single)


def test_epochs_differ_and_repeat() -> None:
    a = list(ShardedEpochSampler(50, 10, seed=0, epoch=0))
    assert a == list(ShardedEpochSampler(50, 10, seed=0, epoch=0))
    assert a != list(ShardedEpochSampler(50, 10, seed=0, epoch=1))
    assert a != list(ShardedEpochSampler(50, 10, seed=1, epoch=0))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="multiple"):
        ShardedEpochSampler(10, 5, seed=0, epoch=0, rank=0, world_size=2)
    with pytest.raises(ValueError, match="rank"):
        ShardedEpochSampler(10, 4, seed=0, epoch=0, rank=2, world_size=2)


class RandomItems(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 5

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.rand(3) + index  # draws from the global RNG, like torchvision


def test_seeded_items_do_not_depend_on_call_order_or_touch_the_global_rng() -> None:
    data = SeededAugmentation(RandomItems())
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = [data[(i, 1000 + i)] for i in range(5)]
    assert torch.equal(torch.get_rng_state(), state)
    again = [data[(i, 1000 + i)] for i in reversed(range(5))][::-1]
    for x, y in zip(first, again, strict=True):
        assert torch.equal(x, y)
    assert not torch.equal(data[(0, 1)], data[(0, 2)])
