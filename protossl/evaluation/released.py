"""A released backbone (DINO, iBOT, DINOv2) seen by the evaluation as a frozen teacher.

``protossl eval`` evaluates a method's teacher backbone; a released file has only a
backbone (its prototypes are not protossl's), so it is wrapped as a method whose teacher
is that backbone: the feature protocols (kNN, linear, few-shot, long-tail) run on it, the
protocols that need protossl's prototype logits do not.

Example:
    >>> from protossl.models.backbones import build_backbone
    >>> wrapped = ReleasedMethod(build_backbone("vit_tiny", 16))
    >>> wrapped.teacher_features(torch.zeros(1, 3, 16, 16)).shape
    torch.Size([1, 96])
"""

from __future__ import annotations

import torch
from torch import nn

from protossl.config import Config
from protossl.core.errors import UserError
from protossl.diagnostics.checkpoints.common import Checkpoint
from protossl.methods import Method
from protossl.models.backbones import Backbone
from protossl.models.released import released_from_checkpoint
from protossl.runs.checkpoint import LoadedRun

__all__ = ["ReleasedMethod", "released_run"]


class ReleasedMethod(Method):
    """A backbone as a teacher-only method (no head, no prototypes, no training)."""

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.teacher = nn.ModuleDict({"backbone": backbone})
        self.student = self.teacher  # nothing is trained; the accessors see one network

    @torch.no_grad()
    def teacher_logits(self, images: torch.Tensor) -> torch.Tensor:
        raise UserError(
            "a released backbone has no protossl prototypes: use the feature protocols "
            "(knn, linear, fewshot, longtail)"
        )


def released_run(checkpoint: Checkpoint, image_size: int | None) -> LoadedRun:
    """The released ViT in ``checkpoint`` as a :class:`LoadedRun` for the evaluation.

    Args:
        checkpoint: An opened file that is not a protossl training checkpoint.
        image_size: Evaluation image size; None: the backbone's native size.
    """
    released = released_from_checkpoint(checkpoint)
    cfg = Config()
    cfg.model.backbone = f"released:{released.layout}"
    cfg.data.image_size = image_size or released.image_size
    return LoadedRun(ReleasedMethod(released.backbone).eval(), cfg, checkpoint.file)
