"""``--key``: read one named tensor, and list the tensors that look like prototype layers.

Used when a file has none of the registered layouts (or the user picks the layer): the
error of an unknown layout lists candidates, and ``--key NAME`` reads exactly that 2-D
tensor, or the weight-normalized layer ``NAME`` (``NAME.weight_g`` / ``NAME.weight_v``
or ``NAME.parametrizations.weight.original0`` / ``original1``).

Example:
    >>> import torch
    >>> from pathlib import Path
    >>> ckpt = Checkpoint.of(Path("x.pt"), {"net": {"module.proto.weight": torch.ones(4, 2)}})
    >>> candidate_text(ckpt.flat)
    'tensors that look like prototype layers: net.module.proto.weight [4x2]'
    >>> sorted(read_key("net.proto.weight", ckpt))  # the name without its wrapper segment
    ['net.module.proto.weight']
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator

import torch

from protossl.core.errors import UserError
from protossl.diagnostics.checkpoints.common import (
    WEIGHT_NORM_SUFFIXES,
    Checkpoint,
    as_matrix,
    canonical,
    find_layers,
    layer_matrix,
)

__all__ = ["candidate_text", "prototype_candidates", "read_key"]

_MAX_CANDIDATES = 10
_CANDIDATE_HINT = re.compile(r"last_layer|prototype|head", re.IGNORECASE)


def prototype_candidates(flat: dict[str, torch.Tensor], limit: int = _MAX_CANDIDATES) -> list[str]:
    """Names that ``--key`` accepts and that look like prototype layers.

    Layers (weight-normalized ones by their layer name, others by tensor name) whose
    name mentions last_layer / prototype / head come first, then the largest other
    2-D tensors.
    """
    entries: dict[str, int] = {}  # name -> numel
    paired: set[str] = set()
    for layer in find_layers(flat):
        if layer.v is not None:
            entries[layer.name] = flat[layer.v].numel()
            paired.update({layer.g or "", layer.v})
    for name, tensor in flat.items():
        if tensor.dim() == 2 and name not in paired:
            entries[name] = tensor.numel()
    hinted = sorted(name for name in entries if _CANDIDATE_HINT.search(name))
    others = sorted((n for n in entries if n not in set(hinted)), key=lambda n: (-entries[n], n))
    return (hinted + others)[:limit]


def _all_keys(flat: dict[str, torch.Tensor]) -> Iterator[str]:
    yield from flat
    for layer in find_layers(flat):
        if layer.v is not None:
            yield layer.name


def read_key(key: str, ckpt: Checkpoint) -> dict[str, torch.Tensor]:
    """Exactly the 2-D tensor ``key``, or the weight-normalized layer named ``key``.

    A name given without (or with other) wrapper segments is accepted if it is
    unambiguous.

    Raises:
        UserError: ``key`` is not 2-D, or is missing (with close matches or candidates).
    """
    flat, file = ckpt.flat, ckpt.file
    layers = {layer.name: layer for layer in ckpt.layers if layer.v is not None}
    if key not in flat and key not in layers:
        same = {n for n in _all_keys(flat) if canonical(n) == canonical(key)}
        if len(same) == 1:
            key = same.pop()
    if key in flat:
        tensor = flat[key]
        if tensor.dim() != 2:
            raise UserError(
                f"{file}: '{key}' has shape {tuple(tensor.shape)}; --key needs a 2-D "
                "prototype matrix [K, p]"
            )
        return {key: as_matrix(tensor)}
    if key in layers:
        return {key: layer_matrix(layers[key], flat, file)}
    close = difflib.get_close_matches(key, sorted(set(_all_keys(flat))), n=5, cutoff=0.5)
    hint = f"close matches: {', '.join(close)}" if close else candidate_text(flat)
    raise UserError(f"{file} has no tensor '{key}' for --key; {hint}")


def candidate_text(flat: dict[str, torch.Tensor]) -> str:
    """``tensors that look like prototype layers: NAME [KxP], ...`` (for error messages)."""
    names = prototype_candidates(flat)
    if not names:
        return "it holds no 2-D tensor that could be a prototype matrix"
    shapes = ", ".join(f"{n} {_shape_text(n, flat)}" for n in names)
    return f"tensors that look like prototype layers: {shapes}"


def _shape_text(name: str, flat: dict[str, torch.Tensor]) -> str:
    for g_suffix, v_suffix in WEIGHT_NORM_SUFFIXES:
        if name + v_suffix in flat and name + g_suffix in flat:
            return "[" + "x".join(map(str, flat[name + v_suffix].shape)) + ", weight-normalized]"
    return "[" + "x".join(map(str, flat[name].shape)) + "]"
