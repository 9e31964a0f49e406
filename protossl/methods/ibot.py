"""iBOT: image BERT pre-training with an online tokenizer (Zhou et al., ICLR 2022).

DINO on the class tokens plus masked image modeling on the patch tokens, with
the EMA teacher as the online tokenizer:

- the student sees the two global crops with random blocks of patches replaced
  by a learned mask token (:class:`~protossl.data.masking.BlockMasking`), and
  the local crops unmasked; the teacher sees the global crops unmasked;
- class tokens: DINO's multi-crop cross-entropy against the teacher's centered
  class-token targets (same-view pairs skipped);
- patch tokens: for each global view, the student's masked patch tokens
  predict the teacher's patch distributions of the same view
  (:func:`~protossl.objectives.ibot.masked_patch_cross_entropy`), with a second
  target builder (its own center, as the official ``center2``) and a patch
  teacher temperature warmed up from ``ibot.warmup_patch_teacher_temp`` to
  ``ibot.patch_teacher_temp`` over ``objective.warmup_teacher_temp_epochs``
  (the trainer's ``Schedules`` compute it; it reaches the method as
  ``StepContext.patch_teacher_temp``);
- ``loss = class loss + ibot.patch_loss_weight * patch loss``, plus the
  optional regularizers (KoLeo-proto on the class head's prototypes, ...).

Example:
    >>> from protossl.config import load_config
    >>> ibot = IBOT(load_config("ibot", overrides=["model.num_prototypes=64"]))
    >>> crops = [torch.randn(4, 3, 16, 16)] * 2 + [torch.randn(4, 3, 8, 8)] * 2
    >>> out = ibot.training_step(crops, teacher_temp=0.04)
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from protossl.config import Config
from protossl.core.errors import UserError
from protossl.data.masking import BlockMasking
from protossl.method_config import IBOTConfig
from protossl.methods.base import Method, StepContext, StepOutput, register_method
from protossl.methods.multicrop import NUM_GLOBAL_CROPS, multicrop_features
from protossl.methods.regularizers import Regularizers
from protossl.methods.student_teacher import build_backbone_and_head, build_head, frozen_copy
from protossl.models import DINOHead, ViTBackbone
from protossl.objectives import DINOCrossEntropy, build_target_builder
from protossl.objectives.ibot import MaskedPatchCrossEntropy


class IBOTNet(nn.Module):
    """ViT backbone + class head (+ a separate patch head unless shared)."""

    def __init__(self, backbone: ViTBackbone, head: DINOHead, patch_head: DINOHead | None) -> None:
        super().__init__()
        self.backbone: ViTBackbone = backbone
        self.head: DINOHead = head
        # None: the class head also projects the patch tokens (iBOT's shared_head).
        self.patch_head: DINOHead | None = patch_head

    @property
    def patch_projector(self) -> DINOHead:
        """The head applied to the patch tokens."""
        return self.head if self.patch_head is None else self.patch_head

    def forward_globals(
        self, crops: list[torch.Tensor], masks: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Class tokens [V, B, D], class scores [V, B, K] and patch scores [V, B, N, Kp].

        Args:
            crops: V global crops of the same size, each [B, 3, H, W].
            masks: optional bool [V, B, rows, cols]; True patches become the mask token.
        """
        views, batch = len(crops), crops[0].shape[0]
        flat_mask = None if masks is None else masks.flatten(0, 1)
        cls, patches = self.backbone.forward_tokens(torch.cat(crops), mask=flat_mask)
        cls_scores = self.head(cls).view(views, batch, -1)
        patch_scores = self.patch_projector(patches)  # [V * B, N, Kp]
        return (
            cls.view(views, batch, -1),
            cls_scores,
            patch_scores.view(views, batch, *patch_scores.shape[1:]),
        )

    def forward_locals(self, crops: list[torch.Tensor]) -> torch.Tensor:
        """Class scores [L, B, K] of the (unmasked) local crops; one pass per crop size."""
        batch = crops[0].shape[0]
        return self.head(multicrop_features(self.backbone, crops)).view(len(crops), batch, -1)


@register_method("ibot")
class IBOT(Method):
    """iBOT with pluggable target builders (class and patch) and the shared regularizers."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        m, o, ib = cfg.model, cfg.objective, cfg.section(IBOTConfig)  # the ibot: section
        backbone, head = build_backbone_and_head(cfg)
        if not isinstance(backbone, ViTBackbone):
            raise UserError(
                f"method 'ibot' needs a ViT backbone for its patch tokens (got "
                f"model.backbone={m.backbone}); set model.backbone=vit_tiny or vit_small"
            )
        patch_k = m.num_prototypes if m.patch_num_prototypes is None else m.patch_num_prototypes
        if m.shared_head and patch_k != m.num_prototypes:
            raise UserError(
                f"model.shared_head=true uses one head for class and patch tokens, so "
                f"model.patch_num_prototypes ({m.patch_num_prototypes}) must be null or equal "
                f"model.num_prototypes ({m.num_prototypes}); or set model.shared_head=false"
            )
        patch_head = None if m.shared_head else build_head(m, backbone.embed_dim, patch_k)
        self.student: IBOTNet = IBOTNet(backbone, head, patch_head)
        self.teacher: IBOTNet = frozen_copy(self.student)
        self.student_temp = o.student_temp
        self.teacher_temp = o.teacher_temp  # for evaluation logits (vMF heads need it)
        self.patch_teacher_temp = ib.patch_teacher_temp  # without a scheduled value
        self.patch_loss_weight = ib.patch_loss_weight
        self.masking = BlockMasking(mask_ratio=ib.mask_ratio, mask_probability=ib.mask_probability)
        self.cross_entropy = DINOCrossEntropy(student_temp=o.student_temp)
        self.patch_cross_entropy = MaskedPatchCrossEntropy(student_temp=o.student_temp)
        shared = {"momentum": o.center_momentum}
        # Separate running statistics for class and patch targets (iBOT's center, center2).
        self.target_builder = build_target_builder(
            o.target, num_prototypes=m.num_prototypes, shared=shared, **o.target_options
        )
        self.patch_target_builder = build_target_builder(
            o.target, num_prototypes=patch_k, shared=shared, **o.target_options
        )
        self.regularizers = Regularizers.from_config(o, num_prototypes=m.num_prototypes)

    def patch_temperature(self, context: StepContext | None) -> float:
        """Patch teacher temperature at this step: the context's scheduled value.

        The trainer's ``Schedules`` warm it up (as the class-token one, Zhou et al.
        2022); without a context or a value in it, the final ``ibot.patch_teacher_temp``.
        """
        if context is None or context.patch_teacher_temp is None:
            return self.patch_teacher_temp
        return context.patch_teacher_temp

    def draw_masks(self, crops: list[torch.Tensor]) -> torch.Tensor:
        """Block masks [V, B, rows, cols] on the CPU for the global crops (global torch RNG).

        Each view gets its own masks (as iBOT draws one per crop).
        """
        batch, (height, width) = crops[0].shape[0], crops[0].shape[-2:]
        grid = self.student.backbone.patch_grid(int(height), int(width))
        return torch.stack([self.masking(batch, grid) for _ in crops])

    def training_step(
        self,
        crops: list[torch.Tensor],
        teacher_temp: float,
        context: StepContext | None = None,
    ) -> StepOutput:
        global_crops, local_crops = crops[:NUM_GLOBAL_CROPS], crops[NUM_GLOBAL_CROPS:]
        patch_temp = self.patch_temperature(context)
        cpu_masks = self.draw_masks(global_crops)
        masks = cpu_masks.to(global_crops[0].device, non_blocking=True)
        with torch.no_grad():
            _, t_cls_scores, t_patch_scores = self.teacher.forward_globals(global_crops)
            t_cls_logits = self.teacher.head.prototypes.adjust_logits(t_cls_scores, teacher_temp)
            t_patch_logits = self.teacher.patch_projector.prototypes.adjust_logits(
                t_patch_scores, patch_temp
            )
            cls_targets = self.target_builder.targets(t_cls_logits, teacher_temp)
            patch_targets = self.patch_target_builder.targets(t_patch_logits, patch_temp)

        s_cls, s_cls_scores, s_patch_scores = self.student.forward_globals(global_crops, masks)
        if local_crops:
            s_cls_scores = torch.cat([s_cls_scores, self.student.forward_locals(local_crops)])
        s_cls_logits = self.student.head.prototypes.adjust_logits(s_cls_scores, self.student_temp)
        s_patch_logits = self.student.patch_projector.prototypes.adjust_logits(
            s_patch_scores, self.student_temp
        )

        cls_loss = self.cross_entropy(s_cls_logits, cls_targets)
        patch_loss = self.patch_cross_entropy(s_patch_logits, patch_targets, masks)
        loss = cls_loss + self.patch_loss_weight * patch_loss
        terms = {
            "cross_entropy": float(cls_loss.detach()),
            "patch_cross_entropy": float(patch_loss.detach()),
            "masked_fraction": float(cpu_masks.float().mean()),
            "patch_teacher_temp": float(patch_temp),
        }
        loss = self.regularizers.add_to(
            loss,
            terms,
            prototypes=self.student_prototypes(),
            student_probs=lambda: torch.softmax(s_cls_logits / self.student_temp, dim=-1),
            embeddings=s_cls,
        )
        # Running statistics move only after this batch's targets were built (as in iBOT).
        self.target_builder.update(t_cls_logits, teacher_temp=teacher_temp)
        self.patch_target_builder.update(t_patch_logits, teacher_temp=patch_temp)
        terms["loss"] = float(loss.detach())
        return StepOutput(loss=loss, terms=terms)

    def prototype_parameters(self) -> Iterator[nn.Parameter]:
        # Official iBOT freezes both heads' last layers ("last_layer" and "last_layer2").
        yield from self.student.head.prototypes.parameters()
        if self.student.patch_head is not None:
            yield from self.student.patch_head.prototypes.parameters()

    def prototype_layers(self) -> dict[str, nn.Module]:
        layers = super().prototype_layers()
        student, teacher = self.student.patch_head, self.teacher.patch_head
        if student is not None and teacher is not None:  # a separate patch head
            layers["student_patch"] = student.prototypes
            layers["teacher_patch"] = teacher.prototypes
        return layers

    @torch.no_grad()
    def teacher_logits(self, images: torch.Tensor) -> torch.Tensor:
        scores = self.teacher.head(self.teacher.backbone(images))
        # The vMF log-normalizer changes which prototype wins; identity otherwise.
        return self.teacher.head.prototypes.adjust_logits(scores, self.teacher_temp)
