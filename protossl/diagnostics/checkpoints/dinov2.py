r"""Official DINOv2 checkpoints (facebookresearch/dinov2).

Source: ``dinov2/train/ssl_meta_arch.py``: ``self.student`` / ``self.teacher =
nn.ModuleDict({'backbone', 'dino_head', 'ibot_head'})`` (``ibot_head`` only for a
separate iBOT head); ``dinov2/layers/dino_head.py``: ``self.last_layer =
nn.utils.weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))``.
``dinov2/train/train.py`` ``do_test`` saves ``{"teacher": model.teacher.state_dict()}``;
full checkpoints (fvcore ``Checkpointer``) are ``{'model': model.state_dict(), ...}``.

Prototype layers: ``<branch>.dino_head.last_layer`` and ``<branch>.ibot_head.last_layer``;
heads ``<branch>/dino_head``, ``<branch>/ibot_head``. Tried first among the DINO family.
"""

from __future__ import annotations

from protossl.diagnostics.checkpoints.layout import LAYOUTS, HeadPattern, PatternLayout

__all__ = ["DINOV2"]

DINOV2 = LAYOUTS.add(
    "dinov2",
    PatternLayout(
        patterns=(
            HeadPattern(r"dino_head\.last_layer", "dino_head"),
            HeadPattern(r"ibot_head\.last_layer", "ibot_head"),
        ),
        signature=frozenset({"dino_head", "ibot_head"}),
        expected="'student.dino_head.last_layer.weight_g/_v' or 'dino_head...' under 'teacher'",
        detect_rank=10,
    ),
)
