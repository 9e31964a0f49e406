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

import torch

from protossl.config import Config
from protossl.methods.base import Method, StepContext, StepOutput, register_method
from protossl.methods.multicrop import NUM_GLOBAL_CROPS, multicrop_features
from protossl.methods.regularizers import Regularizers
from protossl.methods.student_teacher import BackboneHead, build_backbone_and_head, frozen_copy
from protossl.objectives import DINOCrossEntropy, build_target_builder


class StudentTeacherNet(BackboneHead):
    """Backbone + head; crops of equal resolution go through in one batch."""

    def forward(self, crops: list[torch.Tensor]) -> torch.Tensor:
        """Prototype scores [num_crops, B, K] for a list of crops (each [B, 3, H, W])."""
        return self.forward_with_features(crops)[0]

    def forward_with_features(self, crops: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores [num_crops, B, K] and backbone features [num_crops, B, D]."""
        batch = crops[0].shape[0]
        # One head pass over every crop (DINO's MultiCropWrapper): a BatchNorm head
        # normalizes global and local crops together.
        flat = multicrop_features(self.backbone, crops)
        return self.head(flat).view(len(crops), batch, -1), flat.view(len(crops), batch, -1)


@register_method("dino")
class DINO(Method):
    """DINO with a configurable target builder and prototype regularizer."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        m, o = cfg.model, cfg.objective
        self.student: StudentTeacherNet = StudentTeacherNet(*build_backbone_and_head(cfg))
        self.teacher: StudentTeacherNet = frozen_copy(self.student)
        self.student_temp = o.student_temp
        self.teacher_temp = o.teacher_temp  # for evaluation logits (vMF heads need it)
        self.cross_entropy = DINOCrossEntropy(student_temp=o.student_temp)
        self.target_builder = build_target_builder(
            o.target,
            num_prototypes=m.num_prototypes,
            shared={"momentum": o.center_momentum},
            **o.target_options,
        )
        self.regularizers = Regularizers.from_config(o, num_prototypes=m.num_prototypes)

    def training_step(
        self,
        crops: list[torch.Tensor],
        teacher_temp: float,
        context: StepContext | None = None,
    ) -> StepOutput:
        with torch.no_grad():
            teacher_scores = self.teacher(crops[:NUM_GLOBAL_CROPS])
            teacher_logits = self.teacher.head.prototypes.adjust_logits(
                teacher_scores, teacher_temp
            )
            targets = self.target_builder.targets(teacher_logits, teacher_temp)
        student_scores, student_features = self.student.forward_with_features(crops)
        student_logits = self.student.head.prototypes.adjust_logits(
            student_scores, self.student_temp
        )
        ce = self.cross_entropy(student_logits, targets)
        terms = {"cross_entropy": float(ce.detach())}
        loss = self.regularizers.add_to(
            ce,
            terms,
            prototypes=self.student_prototypes(),
            student_probs=lambda: torch.softmax(student_logits / self.student_temp, dim=-1),
            embeddings=student_features[:NUM_GLOBAL_CROPS],
        )
        # The center moves only after this batch's targets were built (as in DINO).
        self.target_builder.update(teacher_logits, teacher_temp=teacher_temp)
        terms["loss"] = float(loss.detach())
        return StepOutput(loss=loss, terms=terms)

    @torch.no_grad()
    def teacher_logits(self, images: torch.Tensor) -> torch.Tensor:
        scores = self.teacher.head(self.teacher.backbone(images))
        # The vMF log-normalizer changes which prototype wins; identity otherwise.
        return self.teacher.head.prototypes.adjust_logits(scores, self.teacher_temp)
