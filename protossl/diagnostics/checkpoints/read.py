"""``read_prototype_heads``: detect or force a layout, or read one ``--key``.

The layouts are the entries of :data:`~protossl.diagnostics.checkpoints.layout.LAYOUTS`
(registered by the modules of this package); this module knows none of them by name.
"""

from __future__ import annotations

from pathlib import Path

import torch

from protossl.core.errors import UserError
from protossl.diagnostics.checkpoints.common import Checkpoint, open_checkpoint
from protossl.diagnostics.checkpoints.keys import candidate_text, read_key
from protossl.diagnostics.checkpoints.layout import LAYOUTS, detection_order

__all__ = ["detect_format", "read_prototype_heads"]


def detect_format(ckpt: Checkpoint) -> str | None:
    """The first layout, in :func:`detection_order`, that recognizes ``ckpt``."""
    for name in detection_order():
        if LAYOUTS[name].detect(ckpt):
            return name
    return None


def read_prototype_heads(
    path: str | Path, format: str = "auto", key: str | None = None
) -> tuple[str, dict[str, torch.Tensor]]:
    """Detected format and the prototype matrices [K, p] of every head in a checkpoint.

    Args:
        path: A checkpoint file, or a protossl run directory (its ``checkpoints/last.pt``).
        format: ``"auto"`` (detect the layout) or one of ``FORMATS``; a forced
            format that does not match the file is a :class:`UserError`.
        key: Read exactly this 2-D tensor (its dotted path in the file, e.g.
            ``"student.module.head.last_layer.weight_v"``), or the weight-normalized
            layer of that name (``"teacher.head.last_layer"``), instead of detecting a
            layout. The format reported is then ``"key"``.

    Returns:
        ``(format, heads)``; heads by name, e.g. ``'teacher/dino_head'``,
        ``'student/head'``, ``'prototypes0'`` (``'student'`` / ``'teacher'`` for
        protossl checkpoints), each a float tensor [K, p] whose rows are the
        effective prototypes (``g * v / ||v||`` for weight-normalized layers).

    Raises:
        UserError: One line naming the file and the fix: unreadable or unsafe file,
            unknown layout (listing the tensors that look like prototype layers and
            how to pick one with ``--key``), a forced format that does not match, or a
            missing ``key`` (with close matches).

    Example:
        >>> fmt, heads = read_prototype_heads("runs/dino")  # doctest: +SKIP
        >>> fmt, sorted(heads)  # doctest: +SKIP
        ('protossl', ['student', 'teacher'])
    """
    choices = ("auto", *LAYOUTS)
    if format not in choices:
        raise UserError(f"unknown checkpoint format '{format}'; choose from {', '.join(choices)}")
    ckpt = open_checkpoint(path)
    file = ckpt.file
    if key is not None:
        if format != "auto":
            raise UserError("--key reads one tensor and skips layout detection; drop --format")
        return "key", read_key(key, ckpt)
    if format == "auto":
        detected = detect_format(ckpt)
        if detected is None:
            others = ", ".join(name for name in LAYOUTS if name != "protossl")
            raise UserError(
                f"{file} has an unknown checkpoint layout (not a protossl checkpoint, nor "
                f"{others}); {candidate_text(ckpt.flat)}; pick one with --key NAME"
            )
        heads = LAYOUTS[detected].read(ckpt)
        assert heads is not None
        return detected, heads
    heads = LAYOUTS[format].read(ckpt)
    if heads is None:
        detected = detect_format(ckpt)
        found = f"it looks like '{detected}'" if detected else "its layout is unknown"
        raise UserError(
            f"{file} does not have the {format} layout (expected {LAYOUTS[format].expected}); "
            f"{found}: use --format auto, or --key NAME"
        )
    return format, heads
