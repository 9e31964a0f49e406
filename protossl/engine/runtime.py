"""Device, mixed precision, compilation and memory format of a run (``cfg.runtime``).

Kept apart from the trainer so that its loop reads the same on every device:
``runtime.autocast()`` around the forward pass, ``runtime.to_device(crops)``,
``runtime.backward(loss, optimizer)``.

Example:
    >>> from protossl.config import RuntimeConfig
    >>> rt = Runtime(RuntimeConfig(device="cpu"))
    >>> rt.device
    device(type='cpu')
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
from torch import nn

from protossl.config import RuntimeConfig
from protossl.core.errors import UserError

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """``auto``: this process's CUDA device (``LOCAL_RANK`` under torchrun) if any, else CPU."""
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError(
            "runtime.device=cuda but no CUDA device is available; use runtime.device=cpu"
        )
    index = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


class Runtime:
    """Applies ``cfg.runtime`` to a method and to each training step."""

    def __init__(self, cfg: RuntimeConfig) -> None:
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        if cfg.precision == "fp16" and self.device.type != "cuda":
            raise UserError("runtime.precision=fp16 needs a CUDA device; use bf16 or fp32 on CPU")
        self.dtype = _DTYPES.get(cfg.precision)
        # fp16 gradients underflow without loss scaling; bf16 has float32's range.
        self.scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" else None

    @property
    def pin_memory(self) -> bool:
        return self.cfg.pin_memory and self.device.type == "cuda"

    def prepare(self, module: nn.Module) -> None:
        """Move ``module`` to the device, set the memory format, compile backbones in place."""
        module.to(self.device)
        if self.cfg.channels_last:
            module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        if self.cfg.compile:
            for name, child in module.named_modules():
                if name.split(".")[-1] == "backbone":
                    child.compile()  # in place: parameter names stay the same

    def to_device(self, crops: list[torch.Tensor]) -> list[torch.Tensor]:
        fmt = torch.channels_last if self.cfg.channels_last else torch.contiguous_format
        return [c.to(self.device, non_blocking=True, memory_format=fmt) for c in crops]

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        if self.dtype is None:
            yield
            return
        with torch.autocast(device_type=self.device.type, dtype=self.dtype):
            yield

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring fp16-scaled gradients back to their true size before clipping."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
