r"""Official DINO checkpoints (facebookresearch/dino).

Source: ``vision_transformer.py``, ``DINOHead``: ``self.last_layer =
nn.utils.weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))``, wrapped in
``utils.MultiCropWrapper(backbone, head)``; ``main_dino.py`` saves ``save_dict =
{'student': student.state_dict(), 'teacher': teacher.state_dict(), 'optimizer', 'epoch',
'args', 'dino_loss', ...}`` (the student under DDP, hence ``module.``).

Prototype layer: ``<branch>.head.last_layer.{weight_g, weight_v | weight}``; heads
``<branch>/head``. Detected after iBOT, EsViT and DINOv2, whose files also hold DINO's
keys.
"""

from __future__ import annotations

from protossl.diagnostics.checkpoints.layout import LAYOUTS, HeadPattern, PatternLayout

__all__ = ["DINO"]

DINO = LAYOUTS.add(
    "dino",
    PatternLayout(
        patterns=(HeadPattern(r"head\.last_layer", "head"),),
        signature=frozenset({"head"}),
        expected="'[module.]head.last_layer.weight_g/_v' under 'student'/'teacher'",
        detect_rank=40,
    ),
)
