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

import contextlib
import datetime
import os
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.distributed as dist

from protossl.core.errors import UserError


class CollectiveError(RuntimeError):
    """A collective failed: another process died, or did not answer in time."""


@contextlib.contextmanager
def _collective() -> Iterator[None]:
    # gloo reports a dead peer as a plain RuntimeError ("Connection closed by
    # peer"); name it, so the command line can end with one line instead of a
    # traceback on every surviving rank.
    try:
        yield
    except RuntimeError as exc:
        if isinstance(exc, CollectiveError):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CollectiveError(first[:300]) from exc


# How long a collective may wait for a missing process before every rank gives up
# (a dead rank must not hang the others forever); PROTOSSL_DIST_TIMEOUT overrides it.
DEFAULT_TIMEOUT_SECONDS = 300


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
    with _collective():
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
    with _collective():
        dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return out


def all_reduce_logsumexp(tensor: torch.Tensor) -> torch.Tensor:
    """``log(sum over processes of exp(tensor))``, elementwise, without overflow."""
    if not is_distributed():
        return tensor
    shift = all_reduce_max(tensor.detach()).nan_to_num(neginf=0.0)
    return torch.log(all_reduce_sum(torch.exp(tensor - shift))) + shift


def launched_with_torchrun() -> bool:
    """True when the environment describes more than one process (torchrun sets it)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_environment() -> bool:
    """Join the process group described by torchrun's variables; False for one process.

    The backend is nccl when CUDA is available, gloo otherwise. Collectives time
    out after ``PROTOSSL_DIST_TIMEOUT`` seconds (default 300), so the surviving
    ranks of a run whose process died stop with an error instead of hanging.
    """
    if is_distributed():
        return True
    if not launched_with_torchrun():
        return False
    if not dist.is_available():
        raise UserError("this PyTorch build has no torch.distributed; run a single process")
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise UserError(
            f"WORLD_SIZE > 1 but {', '.join(missing)} not set; launch with "
            "'torchrun --nproc_per_node N -m protossl train ...'"
        )
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    seconds = int(os.environ.get("PROTOSSL_DIST_TIMEOUT", DEFAULT_TIMEOUT_SECONDS))
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=seconds))
    return True


def shutdown() -> None:
    """Leave the process group (no-op without one)."""
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every process (no-op without torch.distributed)."""
    if is_distributed():
        with _collective():
            dist.barrier()


@torch.no_grad()
def all_reduce_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Average the gradients of ``parameters`` over processes, in one flat buffer.

    Every rank holds the gradient of its local mean loss; their average is the
    gradient of the mean over the global batch (equal local batches). A
    parameter without a gradient on every rank (frozen) is skipped alike on all.
    """
    if not is_distributed():
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    with _collective():
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


class _AllReduceMean(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.detach().clone()
        with _collective():
            dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out / world_size()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        # Identity, not grad / W: the trainer averages parameter gradients over
        # ranks afterwards, and every rank computes the same function of the
        # global mean, so this gives the gradient of the single-process loss.
        return grad


def all_reduce_mean_differentiable(tensor: torch.Tensor) -> torch.Tensor:
    """Mean over processes that gradients flow through (ME-MAX, prior KL on the global batch).

    Pair it with :func:`all_reduce_gradients`: the result equals the one-process
    gradient of a loss on the global mean (no-op without torch.distributed).
    """
    if not is_distributed():
        return tensor
    return _AllReduceMean.apply(tensor)
