"""The one guarded module for collective operations.

Every collective (all_reduce for the teacher center, usage statistics, later
Sinkhorn-Knopp and ME-MAX) goes through here. When torch.distributed is not
available or not initialized, each function is a cheap no-op, so a
single-process CPU run never touches torch.distributed.

Example:
    >>> import torch
    >>> all_reduce_mean(torch.ones(3))
    tensor([1., 1., 1.])
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when torch.distributed is available and a process group exists."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of processes (1 without torch.distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """Rank of this process (0 without torch.distributed)."""
    return dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    """Only the main process writes checkpoints, logs and progress."""
    return rank() == 0


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all processes (returns a new tensor; input untouched)."""
    if not is_distributed():
        return tensor
    out = tensor.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Average ``tensor`` over all processes (returns a new tensor)."""
    if not is_distributed():
        return tensor
    return all_reduce_sum(tensor) / world_size()


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """Elementwise maximum of ``tensor`` over all processes (returns a new tensor)."""
    if not is_distributed():
        return tensor
    out = tensor.clone()
    dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return out


def all_reduce_logsumexp(tensor: torch.Tensor) -> torch.Tensor:
    """``log(sum over processes of exp(tensor))``, elementwise, without overflow."""
    if not is_distributed():
        return tensor
    shift = all_reduce_max(tensor.detach()).nan_to_num(neginf=0.0)
    return torch.log(all_reduce_sum(torch.exp(tensor - shift))) + shift
