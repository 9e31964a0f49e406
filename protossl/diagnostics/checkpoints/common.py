"""Machinery every layout shares: opening a file, flattening it, finding linear layers.

A checkpoint is opened with ``torch.load(weights_only=True)``
(:func:`protossl.core.files.load_checkpoint`), so it never executes code. The only class
admitted beyond tensors and plain containers is ``argparse.Namespace``, which the
official DINO (facebookresearch/dino ``main_dino.py``), iBOT (bytedance/ibot
``main_ibot.py``) and EsViT (microsoft/esvit ``main_esvit.py``) scripts store under
``'args'``; it is rebuilt as a plain attribute bag (no constructor runs).

The nested dictionaries are flattened to dotted tensor paths. A ``module.`` prefix
(DistributedDataParallel), ``_orig_mod.`` (torch.compile), FSDP / activation
checkpointing wrapper segments and the wrapping dictionaries (``state_dict``; ``model``
for DINOv2's fvcore checkpointer) are ignored when names are compared. A
weight-normalized layer is stored as ``weight_g`` / ``weight_v``
(``torch.nn.utils.weight_norm``) or as ``parametrizations.weight.original0`` /
``original1`` (``torch.nn.utils.parametrizations.weight_norm``); its effective matrix
``w = g * v / ||v||`` (per row) is reconstructed exactly.

Example:
    >>> import torch
    >>> ckpt = Checkpoint.of(Path("x.pt"), {"student": {"module.head.weight": torch.ones(3, 2)}})
    >>> [layer.name for layer in ckpt.layers], canonical("student.module.head")
    (['student.module.head'], 'student.head')
"""

from __future__ import annotations

import argparse
import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from protossl.core.errors import UserError
from protossl.core.files import load_checkpoint

__all__ = [
    "WEIGHT_NORM_SUFFIXES",
    "Checkpoint",
    "Layer",
    "as_matrix",
    "canonical",
    "find_layers",
    "layer_matrix",
    "open_checkpoint",
    "resolve_checkpoint_path",
    "weight_norm_matrix",
]

# Path segments that wrap a model without naming a part of it: DistributedDataParallel
# ('module'), torch.compile ('_orig_mod'), FSDP and activation checkpointing, and the
# dictionaries checkpoints put a state dict in ('state_dict'; 'model' for DINOv2's
# fvcore checkpointer).
_WRAPPER_SEGMENTS = frozenset(
    {
        "module",
        "_orig_mod",
        "_fsdp_wrapped_module",
        "_checkpoint_wrapped_module",
        "state_dict",
        "model",
        "model_state_dict",
    }
)
# Top-level entries that never hold a model's prototypes (optimizer moments have the
# prototypes' shape and would pollute the candidate list of an unknown layout).
_SKIPPED_ENTRIES = frozenset(
    {
        "optimizer",
        "opt",
        "optim",
        "optimizer_state_dict",
        "fp16_scaler",
        "scaler",
        "amp",
        "lr_scheduler",
        "scheduler",
    }
)
_MAX_DEPTH = 6

# Tensor-name suffixes of one linear layer's weight, in order of preference.
WEIGHT_NORM_SUFFIXES = (
    (".weight_g", ".weight_v"),  # torch.nn.utils.weight_norm
    (".parametrizations.weight.original0", ".parametrizations.weight.original1"),
)


@dataclass(frozen=True)
class Layer:
    """One linear layer in the file: its plain weight, or the two weight-norm halves."""

    name: str  # raw path in the file, e.g. "student.module.head.last_layer"
    weight: str | None = None  # tensor name of a plain weight
    g: str | None = None  # tensor names of a weight-normalized layer
    v: str | None = None


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint as the layouts see it.

    Attributes:
        file: The file it was read from (for messages).
        state: The loaded top-level dictionary.
        flat: Every tensor by its dotted path (optimizer states skipped).
        layers: The linear layers among ``flat`` (:func:`find_layers`).
    """

    file: Path
    state: dict[str, Any]
    flat: dict[str, torch.Tensor]
    layers: tuple[Layer, ...]

    @classmethod
    def of(cls, file: Path, state: dict[str, Any]) -> Checkpoint:
        """Flatten ``state`` (already loaded from ``file``) and find its layers."""
        flat: dict[str, torch.Tensor] = {}
        _flatten(state, "", flat, 0)
        return cls(file, state, flat, tuple(find_layers(flat)))


def _flatten(obj: dict[Any, Any], prefix: str, out: dict[str, torch.Tensor], depth: int) -> None:
    """Every tensor in nested dicts, by its dotted path (optimizer states skipped)."""
    for key, value in obj.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, torch.Tensor):
            out[name] = value
        elif (
            isinstance(value, dict)
            and depth < _MAX_DEPTH
            and not (depth == 0 and str(key) in _SKIPPED_ENTRIES)
            and not _is_optimizer_state(value)
        ):
            _flatten(value, name, out, depth + 1)


def _is_optimizer_state(value: dict[Any, Any]) -> bool:
    return "param_groups" in value and "state" in value


def canonical(name: str) -> str:
    """The path without wrapper segments: 'student.module.head' -> 'student.head'."""
    return ".".join(part for part in name.split(".") if part not in _WRAPPER_SEGMENTS)


def find_layers(flat: dict[str, torch.Tensor]) -> list[Layer]:
    """Linear layers (2-D weights), weight-normalized halves paired up."""
    layers: dict[str, Layer] = {}
    for name in flat:
        for g_suffix, v_suffix in WEIGHT_NORM_SUFFIXES:
            if name.endswith(v_suffix):
                base = name[: -len(v_suffix)]
                if base + g_suffix in flat and base not in layers:
                    layers[base] = Layer(base, g=base + g_suffix, v=name)
    for name, tensor in flat.items():
        if name.endswith(".weight") and tensor.dim() == 2:
            base = name[: -len(".weight")]
            layers.setdefault(base, Layer(base, weight=name))
    return list(layers.values())


def weight_norm_matrix(g: torch.Tensor, v: torch.Tensor, where: str) -> torch.Tensor:
    """Effective weight ``g * v / ||v||`` of ``weight_norm(dim=0)`` (or ``dim=None``).

    Computed in float64 and returned in ``v``'s floating dtype (at least float32).
    A zero row of ``v`` gives a zero prototype, not NaN.
    """
    if v.dim() != 2:
        raise UserError(f"{where}: weight_v must be 2-D [K, p] (got shape {tuple(v.shape)})")
    out_dtype = torch.promote_types(v.dtype, torch.float32) if v.is_floating_point() else None
    v64 = v.detach().to("cpu", torch.float64)
    g64 = g.detach().to("cpu", torch.float64)
    if g64.numel() == v64.shape[0]:
        scale = g64.reshape(-1, 1) / torch.linalg.vector_norm(v64, dim=1, keepdim=True)
    elif g64.numel() == 1:  # weight_norm(dim=None): one norm over the whole matrix
        scale = g64.reshape(1, 1) / torch.linalg.vector_norm(v64)
    else:
        raise UserError(
            f"{where}: weight_g has shape {tuple(g.shape)}, which does not fit weight_v "
            f"{tuple(v.shape)} (expected [{v.shape[0]}, 1]); the file is damaged or not a "
            "weight-normalized layer"
        )
    w = v64 * torch.nan_to_num(scale, nan=0.0, posinf=0.0, neginf=0.0)
    return w.to(out_dtype or torch.float32)


def as_matrix(tensor: torch.Tensor) -> torch.Tensor:
    """A prototype matrix as analyzed: floating, at least float32, on the CPU."""
    dtype = torch.promote_types(tensor.dtype, torch.float32)
    if not dtype.is_floating_point:
        dtype = torch.float32
    return tensor.detach().to("cpu", dtype)


def layer_matrix(layer: Layer, flat: dict[str, torch.Tensor], file: Path) -> torch.Tensor:
    """The effective weight matrix of ``layer`` (weight-norm halves combined)."""
    if layer.weight is not None:
        return as_matrix(flat[layer.weight])
    assert layer.g is not None and layer.v is not None
    return weight_norm_matrix(flat[layer.g], flat[layer.v], f"{file}: {layer.name}")


def resolve_checkpoint_path(path: str | Path) -> Path:
    """A run directory means its ``checkpoints/last.pt``."""
    path = Path(path)
    if path.is_dir():
        candidate = path / "checkpoints" / "last.pt"
        if not candidate.is_file():
            raise UserError(f"{path} is a directory without checkpoints/last.pt; give a .pt file")
        return candidate
    return path


def _safe_globals() -> contextlib.AbstractContextManager[Any]:
    """Admit ``argparse.Namespace`` (the official scripts' saved ``args``) to weights_only."""
    admit = getattr(torch.serialization, "safe_globals", None)
    return admit([argparse.Namespace]) if admit is not None else contextlib.nullcontext()


def open_checkpoint(path: str | Path) -> Checkpoint:
    """Resolve ``path`` (:func:`resolve_checkpoint_path`), load it code-free and flatten it.

    Raises:
        UserError: unreadable or unsafe file (one line, from ``load_checkpoint``).
    """
    file = resolve_checkpoint_path(path)
    with _safe_globals():
        state = load_checkpoint(file)
    return Checkpoint.of(file, state)
