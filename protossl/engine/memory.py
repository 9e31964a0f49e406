"""A lower bound on a configuration's training memory, checked before anything is allocated.

Without it, a typo such as ``model.num_prototypes=100000000`` is found only when PyTorch
fails to allocate, seconds into building the model (or when the kernel kills the
process). :func:`check_training_memory` counts the tensors whose size the configuration
fixes exactly and refuses, with the estimate in one line, a configuration that cannot
fit in the memory this process can use.

What is counted (float32, per process), all of it certainly allocated by a training step:

* the head's linear layers after the backbone (``h x h`` hidden layers, ``h x p``
  bottleneck, the ``K x p`` prototypes), five times: student weights, their gradients,
  AdamW's two moments, the EMA teacher;
* the student's logits over all crops and their gradient, the teacher's logits of the
  global crops and its targets: ``B x crops x K`` each;
* the batch of crops itself.

The backbone, the activations and everything else come on top, so the bound only refuses
configurations that cannot work; it never refuses one that could.

Example:
    >>> from protossl.config import load_config
    >>> estimate = estimate_training_bytes(load_config("dino"))
    >>> 0 < estimate.total < 2**30
    True
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protossl.core.errors import UserError

__all__ = [
    "MemoryEstimate",
    "available_memory_bytes",
    "check_memory_for_device",
    "check_training_memory",
]

FLOAT_BYTES = 4
GIB = 2**30


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes the configuration certainly allocates, by part."""

    head: int  # head and prototypes x (weights, grads, 2 AdamW moments, teacher)
    logits: int  # student logits + gradient, teacher logits + targets
    batch: int  # the crops of one batch

    @property
    def total(self) -> int:
        return self.head + self.logits + self.batch

    def describe(self) -> str:
        return (
            f"{self.total / GIB:.1f} GiB (head and prototypes with gradients, AdamW state "
            f"and teacher {self.head / GIB:.1f} GiB, logits {self.logits / GIB:.1f} GiB, "
            f"crops {self.batch / GIB:.1f} GiB)"
        )


def estimate_training_bytes(cfg: Any, world_size: int = 1) -> MemoryEstimate:
    """The lower bound of the module docstring for one of ``world_size`` processes."""
    model, data = cfg.model, cfg.data
    k, p, h = model.num_prototypes, model.bottleneck_dim, model.head_hidden_dim
    hidden_layers = max(model.head_layers - 2, 0)
    head_params = k * p + (h * p if model.head_layers > 1 else 0) + hidden_layers * h * h
    batch = max(data.batch_size // max(world_size, 1), 1)
    crops = 2 + data.num_local_crops
    local = data.local_size or 0  # unknown here: not counted (a lower bound)
    logits = batch * _logit_values_per_image(k, crops)
    pixels = batch * 3 * (2 * data.image_size**2 + data.num_local_crops * local**2)
    return MemoryEstimate(
        head=5 * head_params * FLOAT_BYTES,
        logits=logits * FLOAT_BYTES,
        batch=pixels * FLOAT_BYTES,
    )


def _logit_values_per_image(k: int, crops: int) -> int:
    """Logit values per image: student (crops) and its gradient, teacher (2) and targets."""
    return 2 * crops * k + 2 * 2 * k


def _cgroup_limit() -> int | None:
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:
            return int(text)
    return None


def available_memory_bytes() -> int | None:
    """Memory this process may still use: MemAvailable, capped by a cgroup limit (Linux)."""
    available: int | None = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        available = None
    if available is None and hasattr(os, "sysconf"):
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            available = None
    limit = _cgroup_limit()
    if limit is not None:
        available = limit if available is None else min(available, limit)
    return available


def check_training_memory(
    cfg: Any, world_size: int = 1, available: int | None = None, where: str = "this machine"
) -> MemoryEstimate:
    """Refuse a configuration whose lower-bound memory exceeds what is available.

    Args:
        cfg: A validated :class:`~protossl.config.Config`.
        world_size: Processes sharing the global batch.
        available: Bytes available (default: :func:`available_memory_bytes`; unknown
            means no check).
        where: Named in the message (``this machine``, ``the GPU``).

    Raises:
        UserError: One line with the estimate, what is available and what to lower.
    """
    estimate = estimate_training_bytes(cfg, world_size)
    if available is None:
        available = available_memory_bytes()
    if available is not None and estimate.total > available:
        raise UserError(
            f"this configuration needs at least {estimate.describe()} per process, but "
            f"{where} has {available / GIB:.1f} GiB available; lower model.num_prototypes "
            f"({cfg.model.num_prototypes}), model.head_hidden_dim "
            f"({cfg.model.head_hidden_dim}) or data.batch_size ({cfg.data.batch_size})"
        )
    return estimate


def check_memory_for_device(cfg: Any, world_size: int, device: Any) -> MemoryEstimate:
    """:func:`check_training_memory` against host memory, or a CUDA device's free memory."""
    if getattr(device, "type", str(device)) == "cuda":
        import torch

        free, _total = torch.cuda.mem_get_info(device)
        return check_training_memory(cfg, world_size, available=free, where="the GPU")
    return check_training_memory(cfg, world_size)
