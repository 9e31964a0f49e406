"""DINO: self-distillation with no labels (Caron et al., ICCV 2021).

The student sees every crop; the EMA teacher sees the global crops. The
teacher's logits become targets through a pluggable target builder
(centering by default, as in DINO), and the student matches them with the
multi-crop cross-entropy. An optional prototype regularizer (KoLeo-proto,
Govindarajan et al.) acts on the student's prototypes.

Example:
    >>> from protossl.config import load_config
    >>> dino = DINO(load_config("dino-kp", overrides=["model.num_prototypes=64"]))
    >>> crops = [torch.randn(4, 3, 16, 16)] * 2 + [torch.randn(4, 3, 8, 8)] * 2
    >>> out = dino.training_step(crops, teacher_temp=0.04)
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import torch
from torch import nn

from protossl.config import Config
from protossl.methods.base import Method, StepOutput, register_method
from protossl.models import DINOHead, build_backbone
from protossl.objectives import (
    DINOCrossEntropy,
    build_prototype_regularizer,
    build_target_builder,
)

NUM_GLOBAL_CROPS = 2


class StudentTeacherNet(nn.Module):
    """Backbone + head; crops of equal resolution go through in one batch."""

    def __init__(self, backbone: nn.Module, head: DINOHead) -> None:
        super().__init__()
        self.backbone: nn.Module = backbone
        self.head: DINOHead = head

    def forward(self, crops: list[torch.Tensor]) -> torch.Tensor:
        """Logits [num_crops, B, K] for a list of crops (each [B, 3, H, W])."""
        batch = crops[0].shape[0]
        features: list[torch.Tensor] = []
        start = 0
        # Like DINO's MultiCropWrapper: one backbone pass per run of same-sized crops,
        # then one head pass over all of them (so a BatchNorm head sees every crop).
        while start < len(crops):
            end = start
            while end < len(crops) and crops[end].shape[-2:] == crops[start].shape[-2:]:
                end += 1
            features.append(self.backbone(torch.cat(crops[start:end])))
            start = end
        return self.head(torch.cat(features)).view(len(crops), batch, -1)


@register_method("dino")
class DINO(Method):
    """DINO with a configurable target builder and prototype regularizer."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        m, o = cfg.model, cfg.objective
        backbone = build_backbone(m.backbone, cfg.data.image_size)
        head = DINOHead(
            in_dim=backbone.embed_dim,
            num_prototypes=m.num_prototypes,
            hidden_dim=m.head_hidden_dim,
            bottleneck_dim=m.bottleneck_dim,
            num_layers=m.head_layers,
            use_bn=m.use_bn_in_head,
        )
        self.student: StudentTeacherNet = StudentTeacherNet(backbone, head)
        self.teacher: StudentTeacherNet = copy.deepcopy(self.student)
        for param in self.teacher.parameters():
            param.requires_grad_(False)
        self.cross_entropy = DINOCrossEntropy(student_temp=o.student_temp)
        self.target_builder = build_target_builder(
            o.target, num_prototypes=m.num_prototypes, momentum=o.center_momentum
        )
        self.prototype_regularizer: nn.Module | None = None
        if o.prototype_regularizer != "none":
            self.prototype_regularizer = build_prototype_regularizer(
                o.prototype_regularizer, weight=o.regularizer_weight
            )

    def training_step(self, crops: list[torch.Tensor], teacher_temp: float) -> StepOutput:
        with torch.no_grad():
            teacher_logits = self.teacher(crops[:NUM_GLOBAL_CROPS])
            targets = self.target_builder.targets(teacher_logits, teacher_temp)
        student_logits = self.student(crops)
        ce = self.cross_entropy(student_logits, targets)
        loss = ce
        terms = {"cross_entropy": float(ce.detach())}
        if self.prototype_regularizer is not None:
            reg = self.prototype_regularizer(self.student_prototypes())
            loss = loss + reg
            terms["prototype_regularizer"] = float(reg.detach())
        # The center moves only after this batch's targets were built (as in DINO).
        self.target_builder.update(teacher_logits)
        terms["loss"] = float(loss.detach())
        return StepOutput(loss=loss, terms=terms)

    def student_prototypes(self) -> torch.Tensor:
        return self.student.head.prototypes.weight

    def teacher_prototypes(self) -> torch.Tensor:
        return self.teacher.head.prototypes.weight

    def prototype_parameters(self) -> Iterator[nn.Parameter]:
        return self.student.head.prototypes.parameters()

    @torch.no_grad()
    def teacher_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.teacher.backbone(images)

    @torch.no_grad()
    def teacher_logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.teacher.head(self.teacher.backbone(images))
