"""protossl's own training checkpoints (``format: 'protossl'``).

A protossl checkpoint is a dict with ``format == 'protossl'`` whose ``method`` entry is
the method's state dict. Its prototype layers are
``method['<branch>.head.prototypes.weight']`` (heads ``student``, ``teacher``) and, for
a separate iBOT patch head, ``method['<branch>.patch_head.prototypes.weight']`` (head
``<branch>/patch_head``). It is recognized by its ``format`` marker, before every other
layout.
"""

from __future__ import annotations

from typing import Any

import torch

from protossl.core.errors import UserError
from protossl.diagnostics.checkpoints.common import Checkpoint
from protossl.diagnostics.checkpoints.layout import LAYOUTS, Layout

__all__ = ["PROTOSSL_PROTOTYPE_SUFFIX", "ProtosslLayout"]

# Suffix of the prototype matrix in a protossl method's state dict.
PROTOSSL_PROTOTYPE_SUFFIX = "head.prototypes.weight"


def _is_protossl(state: dict[str, Any]) -> bool:
    return state.get("format") == "protossl" and isinstance(state.get("method"), dict)


class ProtosslLayout(Layout):
    """``method['<branch>.head.prototypes.weight']`` of a ``format: 'protossl'`` file."""

    expected = "format='protossl' and method['<branch>.head.prototypes.weight']"
    detect_rank = 0  # its format marker is unambiguous

    def detect(self, ckpt: Checkpoint) -> bool:
        return _is_protossl(ckpt.state)

    def read(self, ckpt: Checkpoint) -> dict[str, torch.Tensor] | None:
        """The heads; a protossl file without any prototype layer is a UserError."""
        if not _is_protossl(ckpt.state):
            return None
        heads: dict[str, torch.Tensor] = {}
        for key, value in ckpt.state["method"].items():
            if not isinstance(value, torch.Tensor):
                continue
            branch, _, rest = key.partition(".")
            # student.head.prototypes.weight -> "student"; iBOT's separate patch head
            # (student.patch_head.prototypes.weight) -> "student/patch_head".
            if rest == PROTOSSL_PROTOTYPE_SUFFIX:
                heads[branch] = value.float()
            elif rest.endswith("_" + PROTOSSL_PROTOTYPE_SUFFIX):
                head_name = rest.removesuffix(".prototypes.weight")
                heads[f"{branch}/{head_name}"] = value.float()
        if not heads:
            raise UserError(
                f"{ckpt.file} holds no prototype layer ('*.{PROTOSSL_PROTOTYPE_SUFFIX}')"
            )
        return heads


LAYOUTS.add("protossl", ProtosslLayout())
