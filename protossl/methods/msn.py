"""MSN and PMSN: masked anchors predict the EMA target's prototype assignment.

From Assran et al., "Masked Siamese Networks for Label-Efficient Learning"
(ECCV 2022) and, for PMSN, "The Hidden Uniform Cluster Prior in
Self-Supervised Learning" (ICLR 2023), following the official
facebookresearch/msn code (src/msn_train.py, src/losses.py, src/deit.py):

- views: the first crop is the *target* view, seen by the EMA target encoder;
  every other crop is an *anchor* view, seen by the student. With protossl's
  multi-crop layout this is MSN's ``imgs[0]`` (target), ``imgs[1]`` (the
  "rand" anchor, same size) and the local crops (the "focal" anchors);
- masking: the anchors of the target's size drop ``msn.mask_ratio`` of their
  patches after the position embedding (``floor(N (1 - ratio))`` kept, at least
  one); focal anchors are not masked, as official ``deit.py`` resets
  ``patch_drop`` to 0 after the first resolution group. Unlike the official
  code, which drops one random subset for the whole batch, each image draws its
  own subset (the same distribution per image, less correlation in the batch);
- scores: cosine similarities between the L2-normalized head output and the K
  normalized prototypes; the prototypes are *shared* by anchor and target (MSN
  keeps one ``prototypes`` parameter; only the encoder + projection head is an
  EMA copy). Anchors use ``softmax(s / objective.student_temp)`` (MSN: 0.1);
- targets: the configured target builder, by default ``"sharpen"``
  (:class:`~protossl.objectives.msn.SharpenedTargets`): ``softmax(s / T_t)``
  with the trainer's teacher temperature (MSN: 0.1), sharpened by
  ``msn.sharpen_temp`` (0.25), then Sinkhorn-Knopp if ``msn.use_sinkhorn``;
- loss: :func:`~protossl.objectives.msn.msn_cross_entropy` (mean over anchor
  views and images) plus ``objective.mlcd_weight`` times the MLCD regularizer on
  the anchors' mean prediction: ``"me-max"`` for MSN, ``"prior-kl"`` for PMSN
  (:mod:`protossl.objectives.mlcd`), plus the optional prototype (KoLeo-proto)
  and embedding regularizers.

Backbones: masking needs a ViT. A non-ViT backbone is rejected with a
:class:`~protossl.core.errors.UserError` unless ``msn.mask_ratio=0``, in which case
the method runs without masking (MSN's "no masking" ablation), never silently.

Example:
    >>> from protossl.config import load_config
    >>> msn = MSN(load_config("msn", overrides=["model.num_prototypes=64"]))
    >>> crops = [torch.randn(4, 3, 16, 16)] * 2 + [torch.randn(4, 3, 8, 8)] * 2
    >>> out = msn.training_step(crops, teacher_temp=0.1)
"""

from __future__ import annotations

import math

import torch

from protossl.config import Config
from protossl.core.errors import UserError
from protossl.method_config import MSNConfig
from protossl.methods.base import Method, StepContext, StepOutput, register_method
from protossl.methods.multicrop import multicrop_features
from protossl.methods.regularizers import Regularizers
from protossl.methods.student_teacher import BackboneHead, build_backbone_and_head, frozen_copy
from protossl.models import ViTBackbone
from protossl.objectives import build_target_builder
from protossl.objectives.msn import msn_cross_entropy

# The prototype matrix in MSNNet's state dict; the target's copy is kept equal to
# the student's (shared prototypes), not averaged.
PROTOTYPES_KEY = "head.prototypes.weight"


def num_kept_patches(num_patches: int, mask_ratio: float) -> int:
    """Patches an anchor keeps: ``floor(N (1 - mask_ratio))`` (official deit.py), at least 1.

    Example:
        >>> num_kept_patches(196, 0.15), num_kept_patches(16, 0.15), num_kept_patches(4, 0.9)
        (166, 13, 1)
    """
    if num_patches < 1:
        raise ValueError(f"num_patches must be >= 1 (got {num_patches})")
    if not 0 <= mask_ratio < 1:
        raise ValueError(f"mask_ratio must be in [0, 1) (got {mask_ratio})")
    # The small slack keeps e.g. 20 * (1 - 0.15) = 16.999999999999996 from flooring to 16.
    return max(1, math.floor(num_patches * (1.0 - mask_ratio) + 1e-9))


class MSNNet(BackboneHead):
    """Backbone + projection head (MLP -> L2-normalized bottleneck -> cosine prototype scores)."""

    def features(self, images: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Backbone features [B, D]; ``keep`` [B, N_keep]: patch indices a ViT keeps."""
        if keep is None:
            return self.backbone(images)
        assert isinstance(self.backbone, ViTBackbone)  # checked in MSN.__init__
        return self.backbone.forward_tokens(images, keep=keep)[0]

    def forward(self, images: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Prototype scores [B, K]."""
        return self.head(self.features(images, keep))


@register_method("msn")
class MSN(Method):
    """MSN / PMSN (see the module docstring); PMSN is ``objective.mlcd_regularizer=prior-kl``."""

    # Targets that are a distribution built from the target view's scores alone.
    # "probability-centering" belongs to vMF prototypes, which MSN's cosine scores exclude.
    supported_targets = ("sharpen", "centering", "sinkhorn")

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        m, o, ms = cfg.model, cfg.objective, cfg.section(MSNConfig)  # the msn: section
        if m.prototype_layer != "normalized":
            raise UserError(
                f"method 'msn' scores anchors by cosine similarity to the prototypes, so it needs "
                f"model.prototype_layer=normalized (got {m.prototype_layer!r})"
            )
        backbone, head = build_backbone_and_head(cfg)
        if ms.mask_ratio > 0 and not isinstance(backbone, ViTBackbone):
            raise UserError(
                f"method 'msn' drops anchor patches, which needs a ViT backbone (got "
                f"model.backbone={m.backbone}); set model.backbone=vit_tiny or vit_small, "
                "or msn.mask_ratio=0 to train without masking"
            )
        self.student: MSNNet = MSNNet(backbone, head)
        self.teacher: MSNNet = frozen_copy(self.student)
        self.student_temp = float(o.student_temp)
        self.teacher_temp = float(o.teacher_temp)  # for evaluation logits
        self.mask_ratio = float(ms.mask_ratio)
        shared = {
            "momentum": o.center_momentum,
            "sharpen_temp": ms.sharpen_temp,
            "use_sinkhorn": ms.use_sinkhorn,
        }
        self.target_builder = build_target_builder(
            o.target, num_prototypes=m.num_prototypes, shared=shared, **o.target_options
        )
        self.regularizers = Regularizers.from_config(o, num_prototypes=m.num_prototypes)

    # ------------------------------------------------------------------ masking

    def draw_keep(self, batch: int, num_patches: int) -> torch.Tensor:
        """Kept patch indices [batch, N_keep] (sorted, distinct) per image, on the CPU.

        Drawn from the global torch RNG, so a seeded run is reproducible on any device.
        """
        kept = num_kept_patches(num_patches, self.mask_ratio)
        order = torch.rand(batch, num_patches).argsort(dim=1)
        return order[:, :kept].sort(dim=1).values

    def anchor_forward(
        self, anchors: list[torch.Tensor], masked_size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Student scores [A, B, K], features [A, B, D] and the kept fraction of masked anchors.

        One backbone pass per run of same-sized anchors
        (:func:`~protossl.methods.multicrop.multicrop_features`); runs of
        ``masked_size`` (the target's size) drop patches when ``mask_ratio`` > 0.
        One head pass over all anchors, so a BatchNorm head sees every anchor view.
        """
        batch = anchors[0].shape[0]
        kept_fraction = 1.0

        def encode(images: torch.Tensor) -> torch.Tensor:
            # MSN's own part of the multi-crop pass: the target-sized run drops patches
            # (indices drawn from the global RNG right before its pass); focal anchors
            # keep all of theirs, as official deit.py.
            nonlocal kept_fraction
            height, width = (int(s) for s in images.shape[-2:])
            keep = None
            if self.mask_ratio > 0 and (height, width) == masked_size:
                assert isinstance(self.student.backbone, ViTBackbone)
                rows, cols = self.student.backbone.patch_grid(height, width)
                keep = self.draw_keep(images.shape[0], rows * cols)
                kept_fraction = keep.shape[1] / (rows * cols)
                keep = keep.to(images.device, non_blocking=True)
            return self.student.features(images, keep)

        flat = multicrop_features(encode, anchors)
        scores = self.student.head(flat)
        views = len(anchors)
        return scores.view(views, batch, -1), flat.view(views, batch, -1), kept_fraction

    # ------------------------------------------------------------------ step

    @torch.no_grad()
    def target_scores(self, images: torch.Tensor) -> torch.Tensor:
        """Target-encoder embeddings scored against the (shared) student prototypes [B, K]."""
        embeddings = self.teacher.head.embed(self.teacher.backbone(images))
        return self.student.head.prototypes(embeddings)

    def training_step(
        self,
        crops: list[torch.Tensor],
        teacher_temp: float,
        context: StepContext | None = None,
    ) -> StepOutput:
        """MSN loss: ``crops[0]`` is the target view, ``crops[1:]`` the anchor views."""
        del context  # no step-dependent schedule (MSN's sharpening T is constant)
        if len(crops) < 2:
            raise ValueError(f"MSN needs a target view and at least one anchor (got {len(crops)})")
        target_view, anchors = crops[0], crops[1:]
        masked_size = (int(target_view.shape[-2]), int(target_view.shape[-1]))
        with torch.no_grad():
            t_scores = self.target_scores(target_view).unsqueeze(0)  # [1, B, K]
            targets = self.target_builder.targets(t_scores, teacher_temp)
        a_scores, a_features, kept_fraction = self.anchor_forward(anchors, masked_size)
        ce = msn_cross_entropy(a_scores, targets, self.student_temp)
        terms = {
            "cross_entropy": float(ce.detach()),
            "kept_patch_fraction": float(kept_fraction),
            # Official MSN's "np": distinct prototypes that are some target's argmax.
            "target_prototypes": float(targets[0].argmax(dim=-1).unique().numel()),
        }
        loss = self.regularizers.add_to(
            ce,
            terms,
            prototypes=self.student_prototypes(),
            # ME-MAX / prior KL on the mean over all anchor views and images (MSN).
            student_probs=lambda: torch.softmax(a_scores / self.student_temp, dim=-1),
            embeddings=a_features[:1],  # the anchor of the target's size
        )
        # Running statistics (centering) move only after this batch's targets were built.
        self.target_builder.update(t_scores, teacher_temp=teacher_temp)
        terms["loss"] = float(loss.detach())
        return StepOutput(loss=loss, terms=terms)

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """EMA of the encoder and projection head; the prototypes are copied (shared in MSN)."""
        for (name, t_param), s_param in zip(
            self.teacher.named_parameters(), self.student.parameters(), strict=True
        ):
            if name == PROTOTYPES_KEY:
                t_param.copy_(s_param.detach())
            else:
                t_param.mul_(momentum).add_(s_param.detach(), alpha=1 - momentum)

    # ------------------------------------------------------------ accessors

    def teacher_prototypes(self) -> torch.Tensor:
        # The target scores with the student's prototypes (MSN shares them).
        return self.student.head.prototypes.weight

    @torch.no_grad()
    def teacher_logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.target_scores(images)
