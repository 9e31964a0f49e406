"""Official MSN checkpoints (facebookresearch/msn).

Source: ``src/msn_train.py`` ``save_checkpoint`` saves ``{'encoder', 'target_encoder',
'prototypes': prototypes.data, 'opt', 'epoch', ...}``: the prototypes are a bare
top-level [K, p] tensor, not a layer.

Prototype matrix: the 2-D tensor named ``prototypes`` once wrapper segments are removed
(``state_dict.prototypes`` counts); head ``prototypes``. Tried last, after every layout
of named layers.
"""

from __future__ import annotations

import torch

from protossl.diagnostics.checkpoints.common import Checkpoint, as_matrix, canonical
from protossl.diagnostics.checkpoints.layout import LAYOUTS, Layout

__all__ = ["MsnLayout"]


def _prototypes_name(flat: dict[str, torch.Tensor]) -> str | None:
    """Name of MSN's top-level ``prototypes`` tensor (wrappers allowed), if there is one."""
    for name, tensor in flat.items():
        if canonical(name) == "prototypes" and tensor.dim() == 2:
            return name
    return None


class MsnLayout(Layout):
    """A top-level ``prototypes`` tensor."""

    expected = "a top-level 'prototypes' tensor"
    detect_rank = 60

    def detect(self, ckpt: Checkpoint) -> bool:
        return _prototypes_name(ckpt.flat) is not None

    def read(self, ckpt: Checkpoint) -> dict[str, torch.Tensor] | None:
        name = _prototypes_name(ckpt.flat)
        return None if name is None else {"prototypes": as_matrix(ckpt.flat[name])}


LAYOUTS.add("msn", MsnLayout())
