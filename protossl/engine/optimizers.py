"""The student's optimizer, by name, as in the official DINO code.

DINO (Caron et al., "Emerging Properties in Self-Supervised Vision Transformers",
ICCV 2021, ``main_dino.py``) builds AdamW by default and SGD with momentum 0.9
for ResNets (``--optimizer sgd``); learning rate and weight decay are set on every
step by the trainer's schedules, so both start at zero here. Biases and 1-d
parameters (normalization) get no weight decay (DINO's ``get_params_groups``).

Example:
    >>> net = torch.nn.Linear(4, 2)
    >>> type(build_optimizer("sgd", net)).__name__
    'SGD'
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from protossl.config import OPTIMIZER_NAMES
from protossl.core.errors import UserError

SGD_MOMENTUM = 0.9  # main_dino.py: torch.optim.SGD(params_groups, lr=0, momentum=0.9)


def parameter_groups(module: torch.nn.Module) -> list[dict[str, Any]]:
    """Two groups: decayed weights first, then biases and 1-d parameters without decay."""
    decayed: list[torch.nn.Parameter] = []
    plain: list[torch.nn.Parameter] = []
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        (plain if name.endswith(".bias") or param.ndim <= 1 else decayed).append(param)
    return [{"params": decayed}, {"params": plain, "weight_decay": 0.0}]


def _adamw(groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups)


def _sgd(groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=0.0, momentum=SGD_MOMENTUM)


OPTIMIZERS: dict[str, Callable[[list[dict[str, Any]]], torch.optim.Optimizer]] = {
    "adamw": _adamw,
    "sgd": _sgd,
}
assert tuple(OPTIMIZERS) == OPTIMIZER_NAMES  # the config validates against the same names


def build_optimizer(name: str, module: torch.nn.Module) -> torch.optim.Optimizer:
    """The optimizer ``name`` over ``module``'s trainable parameters (DINO's groups)."""
    if name not in OPTIMIZERS:
        raise UserError(f"unknown optim.optimizer '{name}'; choose one of: {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name](parameter_groups(module))
