r"""Official iBOT checkpoints (bytedance/ibot).

Source: ``models/head.py``, ``iBOTHead``: ``self.last_layer = weight_norm(...)`` for the
[CLS] token and ``self.last_layer2 = weight_norm(...)`` for the patch tokens when not
``shared_head``, else ``self.last_layer2 = self.last_layer`` (both saved);
``main_ibot.py`` saves ``save_dict = {'student', 'teacher', 'optimizer', 'epoch',
'args', 'ibot_loss', ...}``, as DINO does.

Prototype layers: ``<branch>.head.last_layer`` (heads ``<branch>/head``) and
``<branch>.head.last_layer2`` (``<branch>/patch_head``, omitted when it equals the
first: a shared head). Identified by ``last_layer2``; tried before DINO.
"""

from __future__ import annotations

import torch

from protossl.diagnostics.checkpoints.layout import LAYOUTS, HeadPattern, PatternLayout, head_name

__all__ = ["IBOT"]


class _IbotLayout(PatternLayout):
    def is_copy(
        self, heads: dict[str, torch.Tensor], branch: str, label: str, weights: torch.Tensor
    ) -> bool:
        """iBOT with ``shared_head``: ``last_layer2`` *is* ``last_layer`` (saved twice)."""
        if label != "patch_head":
            return False
        twin = heads.get(head_name(branch, "head"))
        return twin is not None and twin.shape == weights.shape and torch.equal(twin, weights)


IBOT = LAYOUTS.add(
    "ibot",
    _IbotLayout(
        patterns=(
            HeadPattern(r"head\.last_layer", "head"),
            HeadPattern(r"head\.last_layer2", "patch_head"),
        ),
        signature=frozenset({"patch_head"}),
        expected="'[module.]head.last_layer2.weight_g/_v' under 'student'/'teacher'",
        detect_rank=30,
    ),
)
