"""Refuse to evaluate NaN or inf: a diverged checkpoint must never yield numbers.

NaN compares False with everything, so a diverged run would otherwise report plausible
clusters (argmax of NaN logits is 0 for every image) or a kNN accuracy of chance. ``eval``
and ``report`` call these before any protocol runs; ``analyze`` and ``dedupe`` have their
own check in :mod:`protossl.diagnostics`.

Example:
    >>> import torch
    >>> nonfinite_rows(torch.tensor([[0.0, 1.0], [float("nan"), 0.0], [1.0, float("inf")]]))
    [1, 2]
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from protossl.core.errors import UserError

_MAX_NAMED = 5


def nonfinite_rows(tensor: torch.Tensor) -> list[int]:
    """Indices of the rows (first dimension) holding any NaN or inf; a 0-d tensor is row 0."""
    bad = ~torch.isfinite(tensor.detach())
    if bad.dim() == 0:
        return [0] if bool(bad) else []
    return bad.reshape(bad.shape[0], -1).any(dim=1).nonzero().flatten().tolist()


def _named(rows: Sequence[int | str]) -> str:
    shown = ", ".join(str(r) for r in rows[:_MAX_NAMED])
    return shown + (f" and {len(rows) - _MAX_NAMED} more" if len(rows) > _MAX_NAMED else "")


def require_finite_weights(module: nn.Module, source: str | Path) -> None:
    """Raise a one-line UserError naming the first tensor (and its rows) that is not finite.

    Args:
        module: the loaded method (every parameter and floating-point buffer is checked).
        source: the checkpoint, for the message.
    """
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        if not tensor.is_floating_point() or bool(torch.isfinite(tensor).all()):
            continue
        rows = nonfinite_rows(tensor)
        of = f" of {tensor.shape[0]}" if tensor.dim() else ""
        raise UserError(
            f"{source}: {name} holds NaN or inf in {len(rows)} row(s){of} ({_named(rows)}); "
            "the run diverged before this checkpoint: evaluate an earlier one"
        )


def require_finite_features(
    features: torch.Tensor, what: str, files: Sequence[str] | None = None
) -> None:
    """Raise a one-line UserError when any row of ``features`` is NaN or inf.

    Args:
        features: [N, D] per-image features or logits.
        what: e.g. ``"backbone features of the test split"``, for the message.
        files: the images' paths, row for row, to name the first bad ones.
    """
    rows = nonfinite_rows(features)
    if not rows:
        return
    named = [files[r] for r in rows] if files is not None and len(files) == len(features) else rows
    raise UserError(
        f"{what} are NaN or inf for {len(rows)} of {len(features)} images ({_named(named)}); "
        "the checkpoint's network is not finite on them"
    )
