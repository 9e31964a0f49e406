"""Student and teacher networks: the set-up every bundled method shares.

Each method trains a backbone + projection head + prototype layer (the head of
DINO, Caron et al., ICCV 2021). DINO, iBOT (Zhou et al., ICLR 2022) and MSN
(Assran et al., ECCV 2022) add an EMA teacher (MSN's target encoder) that starts
as an exact copy of the student and is never trained by gradient: only
:meth:`~protossl.methods.base.Method.update_teacher` moves it. SwAV (Caron et
al., NeurIPS 2020) has no teacher but builds the same student.

Example:
    >>> from protossl.config import load_config
    >>> cfg = load_config("dino", overrides=["model.num_prototypes=64"])
    >>> student = BackboneHead(*build_backbone_and_head(cfg))
    >>> teacher = frozen_copy(student)
    >>> any(p.requires_grad for p in teacher.parameters())
    False
    >>> teacher.head.prototypes.weight.equal(student.head.prototypes.weight)
    True
"""

from __future__ import annotations

import copy
from typing import TypeVar

from torch import nn

from protossl.config import Config, ModelConfig
from protossl.models import Backbone, DINOHead, build_backbone

NetT = TypeVar("NetT", bound=nn.Module)


class BackboneHead(nn.Module):
    """A backbone and its head, under the state-dict names ``backbone.*`` and ``head.*``.

    Those names are what checkpoints and :class:`~protossl.methods.base.Method`'s
    prototype accessors (``head.prototypes``) rely on; each method subclasses it
    with its own forward pass.
    """

    def __init__(self, backbone: nn.Module, head: DINOHead) -> None:
        super().__init__()
        self.backbone: nn.Module = backbone
        self.head: DINOHead = head


def build_head(model: ModelConfig, in_dim: int, num_prototypes: int | None = None) -> DINOHead:
    """The configured projection head + prototype layer (``num_prototypes``: default K)."""
    return DINOHead(
        in_dim=in_dim,
        num_prototypes=model.num_prototypes if num_prototypes is None else num_prototypes,
        hidden_dim=model.head_hidden_dim,
        bottleneck_dim=model.bottleneck_dim,
        num_layers=model.head_layers,
        use_bn=model.use_bn_in_head,
        prototype_layer=model.prototype_layer,
    )


def build_backbone_and_head(cfg: Config) -> tuple[Backbone, DINOHead]:
    """The configured backbone, then its head (this order: it fixes the seeded weights)."""
    backbone = build_backbone(cfg.model.backbone, cfg.data.image_size)
    return backbone, build_head(cfg.model, in_dim=backbone.embed_dim)


def frozen_copy(student: NetT) -> NetT:
    """The teacher at step 0: a deep copy of ``student`` that takes no gradient.

    A copy, not a second initialization, so teacher and student start equal (DINO
    Algorithm 1: ``gt.params = gs.params``), buffers included; frozen, so the
    optimizer never sees it and ``loss.backward()`` leaves it without ``.grad``.
    """
    teacher = copy.deepcopy(student)
    for param in teacher.parameters():
        param.requires_grad_(False)
    return teacher
