r"""Official SwAV checkpoints (facebookresearch/swav).

Source: ``src/resnet50.py``: ``self.prototypes = nn.Linear(output_dim, nmb_prototypes,
bias=False)``, or ``MultiPrototypes`` whose layers are ``'prototypes' + str(i)``;
``main_swav.py`` saves ``save_dict = {'epoch', 'state_dict': model.state_dict(),
'optimizer'}`` (DDP, hence ``module.``).

Prototype layers: ``prototypes.weight`` (head ``prototypes``) or
``prototypes.prototypes<i>.weight`` (heads ``prototypes<i>``). Tried after the DINO
family.
"""

from __future__ import annotations

from protossl.diagnostics.checkpoints.layout import LAYOUTS, HeadPattern, PatternLayout

__all__ = ["SWAV"]

SWAV = LAYOUTS.add(
    "swav",
    PatternLayout(
        patterns=(
            HeadPattern(r"prototypes\.prototypes(\d+)", "prototypes{0}"),
            HeadPattern(r"prototypes", "prototypes"),
        ),
        signature=frozenset({"prototypes"}),  # 'prototypes<i>' counts as 'prototypes'
        expected="'[module.]prototypes.weight' or '[module.]prototypes.prototypes0.weight'",
        detect_rank=50,
    ),
)
