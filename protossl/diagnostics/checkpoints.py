"""Read prototype layers out of checkpoints, without importing any method code.

This first reader understands protossl's own training checkpoints (a run
directory or a ``.pt`` file). Every file is opened with
``torch.load(weights_only=True)``: a checkpoint never executes code.

Example:
    >>> heads = read_prototype_heads("runs/dino")  # doctest: +SKIP
    >>> sorted(heads)  # doctest: +SKIP
    ['student', 'teacher']
"""

from __future__ import annotations

from pathlib import Path

import torch

from protossl.engine.checkpoint import load_checkpoint
from protossl.errors import UserError

# Suffix of the prototype matrix in a protossl method's state dict.
PROTOSSL_PROTOTYPE_SUFFIX = "head.prototypes.weight"


def resolve_checkpoint_path(path: str | Path) -> Path:
    """A run directory means its ``checkpoints/last.pt``."""
    path = Path(path)
    if path.is_dir():
        candidate = path / "checkpoints" / "last.pt"
        if not candidate.is_file():
            raise UserError(f"{path} is a directory without checkpoints/last.pt; give a .pt file")
        return candidate
    return path


def read_prototype_heads(path: str | Path) -> dict[str, torch.Tensor]:
    """Prototype matrices [K, p] by head name ('student', 'teacher') of a protossl checkpoint."""
    file = resolve_checkpoint_path(path)
    state = load_checkpoint(file)
    if state.get("format") != "protossl" or not isinstance(state.get("method"), dict):
        names = ", ".join(sorted(str(k) for k in state)[:8])
        raise UserError(
            f"{file} is not a protossl checkpoint (top-level keys: {names}); "
            "other layouts (dino, ibot, dinov2, msn, swav) are not supported yet"
        )
    heads: dict[str, torch.Tensor] = {}
    for key, value in state["method"].items():
        if key.endswith(PROTOSSL_PROTOTYPE_SUFFIX) and isinstance(value, torch.Tensor):
            heads[key.split(".", 1)[0]] = value.float()
    if not heads:
        raise UserError(f"{file} holds no prototype layer ('*.{PROTOSSL_PROTOTYPE_SUFFIX}')")
    return heads
