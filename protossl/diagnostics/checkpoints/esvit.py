r"""Official EsViT checkpoints (microsoft/esvit).

Source: ``main_esvit.py``: ``student.head = DINOHead(...)`` and, with
``use_dense_prediction``, ``student.head_dense = DINOHead(...)``
(``utils.MultiCropWrapper(backbone, head, head_dense=...)`` for torchvision
backbones); ``save_dict`` as in DINO (``'student'``, ``'teacher'``, ``'args'``, ...).

Prototype layers: ``<branch>.head.last_layer`` and ``<branch>.head_dense.last_layer``;
heads ``<branch>/head``, ``<branch>/head_dense``. Detected by ``head_dense`` (before
iBOT and DINO); a forced ``--format esvit`` also takes a file with ``head`` only.
"""

from __future__ import annotations

from protossl.diagnostics.checkpoints.layout import LAYOUTS, HeadPattern, PatternLayout

__all__ = ["ESVIT"]

ESVIT = LAYOUTS.add(
    "esvit",
    PatternLayout(
        patterns=(
            HeadPattern(r"head\.last_layer", "head"),
            HeadPattern(r"head_dense\.last_layer", "head_dense"),
        ),
        signature=frozenset({"head_dense"}),
        forced_signature=frozenset({"head", "head_dense"}),
        expected="'[module.]head.last_layer' / 'head_dense.last_layer' under 'student'/'teacher'",
        detect_rank=20,
    ),
)
