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

from pathlib import Path

import torch
from torch import nn

from protossl.config import Config
from protossl.core.errors import UserError
from protossl.diagnostics.checkpoints.common import Checkpoint, open_checkpoint
from protossl.evaluation.finite import require_finite_weights
from protossl.methods import Method
from protossl.models.backbones import Backbone
from protossl.models.released import released_from_checkpoint
from protossl.runs.checkpoint import LoadedRun, is_training_state, method_from_state

__all__ = ["ReleasedMethod", "load_for_evaluation", "released_run"]


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


def load_for_evaluation(run: str | Path, image_size: int | None = None) -> LoadedRun:
    """A protossl run or checkpoint, or else a released DINO / iBOT / DINOv2 backbone,
    with finite weights (what ``eval`` and ``embed`` read).

    Args:
        run: A run directory (its ``checkpoints/last.pt``) or a checkpoint file.
        image_size: Evaluation image size; None: the run's training size (a released
            backbone's native size).

    Raises:
        UserError: missing, unsafe or unknown file; weights that are not finite.
    """
    checkpoint = open_checkpoint(run)  # code-free; admits the official files' saved args
    if is_training_state(checkpoint.state):
        loaded = method_from_state(checkpoint.state, checkpoint.file)
        if image_size is not None:
            loaded.cfg.data.image_size = image_size
    else:
        loaded = released_run(checkpoint, image_size)
    require_finite_weights(loaded.method, loaded.file)
    return loaded
