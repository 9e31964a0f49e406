r"""Read prototype layers out of checkpoints, without importing any method code.

Understands protossl's own training checkpoints and the checkpoints of the official
DINO-family repositories, one module per repository (its docstring cites the source):

=========  ==============================================================  ========================
format     prototype layers (after ``module.`` and wrapper keys)           head names
=========  ==============================================================  ========================
protossl   ``method[<branch>.head.prototypes.weight]``                      student, teacher
dino       ``<branch>.head.last_layer.{weight_g,weight_v | weight}``        <branch>/head
ibot       ``<branch>.head.last_layer``, ``<branch>.head.last_layer2``      <branch>/head,
                                                                            <branch>/patch_head
dinov2     ``<branch>.dino_head.last_layer``, ``<branch>.ibot_head...``     <branch>/dino_head,
                                                                            <branch>/ibot_head
msn        top-level ``prototypes`` tensor                                  prototypes
swav       ``prototypes.weight`` or ``prototypes.prototypes<i>.weight``     prototypes,
                                                                            prototypes<i>
esvit      ``<branch>.head.last_layer``, ``<branch>.head_dense...``         <branch>/head,
                                                                            <branch>/head_dense
=========  ==============================================================  ========================

``<branch>`` is ``student`` / ``teacher`` (or nothing, for a bare state dict).
Wrapper segments and dictionaries are ignored, weight-normalized layers are combined to
their effective matrix, and every file is opened with ``torch.load(weights_only=True)``
(see :mod:`~protossl.diagnostics.checkpoints.common`); ``--key`` and the candidate list
of an unknown layout are in :mod:`~protossl.diagnostics.checkpoints.keys`.

A new layout is one file + one registration: a module in this package that adds a
:class:`~protossl.diagnostics.checkpoints.layout.Layout` to
:data:`~protossl.diagnostics.checkpoints.layout.LAYOUTS` under its format name, imported
below (its place there is its place in :data:`FORMATS`; ``detect_rank`` places it in
``--format auto``)::

    from protossl.diagnostics.checkpoints.layout import LAYOUTS, HeadPattern, PatternLayout

    LAYOUTS.add("mine", PatternLayout(
        patterns=(HeadPattern(r"proj_head\.last_layer", "proj_head"),),
        signature=frozenset({"proj_head"}), expected="'proj_head.last_layer'", detect_rank=45))

Example:
    >>> FORMATS == tuple(LAYOUTS), detection_order()
    (True, ['protossl', 'dinov2', 'esvit', 'ibot', 'dino', 'swav', 'msn'])
    >>> fmt, heads = read_prototype_heads("dino_vitbase16_full_checkpoint.pth")  # doctest: +SKIP
    >>> fmt, sorted(heads)  # doctest: +SKIP
    ('dino', ['student/head', 'teacher/head'])
"""

from protossl.diagnostics.checkpoints.common import resolve_checkpoint_path
from protossl.diagnostics.checkpoints.layout import LAYOUTS, detection_order
from protossl.diagnostics.checkpoints.read import read_prototype_heads

# The layouts, in the order of FORMATS; each module registers itself in LAYOUTS.
from protossl.diagnostics.checkpoints import protossl as _protossl  # noqa: F401  isort: skip
from protossl.diagnostics.checkpoints import dino as _dino  # noqa: F401  isort: skip
from protossl.diagnostics.checkpoints import ibot as _ibot  # noqa: F401  isort: skip
from protossl.diagnostics.checkpoints import dinov2 as _dinov2  # noqa: F401  isort: skip
from protossl.diagnostics.checkpoints import msn as _msn  # noqa: F401  isort: skip
from protossl.diagnostics.checkpoints import swav as _swav  # noqa: F401  isort: skip
from protossl.diagnostics.checkpoints import esvit as _esvit  # noqa: F401  isort: skip
from protossl.diagnostics.checkpoints.protossl import PROTOSSL_PROTOTYPE_SUFFIX

FORMATS: tuple[str, ...] = tuple(LAYOUTS)
"""Checkpoint layouts :func:`read_prototype_heads` understands."""

FORMAT_CHOICES: tuple[str, ...] = ("auto", *FORMATS)
"""Values of ``protossl analyze --format``."""

__all__ = [
    "FORMATS",
    "FORMAT_CHOICES",
    "LAYOUTS",
    "PROTOSSL_PROTOTYPE_SUFFIX",
    "detection_order",
    "read_prototype_heads",
    "resolve_checkpoint_path",
]
