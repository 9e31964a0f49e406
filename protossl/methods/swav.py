"""SwAV: swapped prediction of Sinkhorn-Knopp codes (Caron et al., NeurIPS 2020).

From "Unsupervised Learning of Visual Features by Contrasting Cluster
Assignments". There is no EMA teacher: one network scores every crop against
K unit-norm prototypes; the scores of each global crop, detached, become codes
q through Sinkhorn-Knopp (equal use of the prototypes over the batch, plus an
optional queue of past embeddings), and every other crop predicts those codes:

    L = 1/2 sum_{i in globals} 1/(V - 1) sum_{v != i} mean_b -sum_k q_i log softmax(s_v / T)

with T = ``objective.student_temp`` (SwAV: 0.1). This is exactly the average
over (global crop, other crop) pairs of DINO's multi-crop cross-entropy, so the
same :func:`~protossl.objectives.multicrop_cross_entropy` computes it. As in the
official code, the prototypes are renormalized in place at the start of every
step and frozen for the first ``swav.freeze_prototypes_steps`` iterations.

Example:
    >>> from protossl.config import load_config
    >>> swav = SwAV(load_config("swav", overrides=["model.num_prototypes=64"]))
    >>> crops = [torch.randn(4, 3, 16, 16)] * 2 + [torch.randn(4, 3, 8, 8)] * 2
    >>> out = swav.training_step(crops, teacher_temp=0.04)  # teacher_temp is unused
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from protossl.config import Config
from protossl.core import distributed
from protossl.core.errors import UserError
from protossl.method_config import SwAVConfig
from protossl.methods.base import Method, StepContext, StepOutput, register_method
from protossl.methods.multicrop import NUM_GLOBAL_CROPS, multicrop_features
from protossl.methods.regularizers import Regularizers
from protossl.methods.student_teacher import BackboneHead, build_backbone_and_head
from protossl.objectives import multicrop_cross_entropy
from protossl.objectives.sinkhorn import sinkhorn_knopp


class SwAVNet(BackboneHead):
    """Backbone + head (MLP -> normalized bottleneck -> prototypes), over all crops."""

    def forward(self, crops: list[torch.Tensor]) -> torch.Tensor:
        """Prototype scores [num_crops, B, K]."""
        return self.forward_all(crops)[0]

    def forward_all(
        self, crops: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Scores [V, B, K], bottleneck embeddings [V, B, p] and backbone features [V, B, D]."""
        batch = crops[0].shape[0]
        # SwAV's multi-resolution forward, then one head pass over all crops (a
        # BatchNorm head sees them all).
        flat = multicrop_features(self.backbone, crops)
        embeddings = self.head.embed(flat)
        scores = self.head.prototypes(embeddings)
        views = len(crops)
        return (
            scores.view(views, batch, -1),
            embeddings.view(views, batch, -1),
            flat.view(views, batch, -1),
        )


@register_method("swav")
class SwAV(Method):
    """SwAV with an optional queue and the shared optional regularizers.

    Teacher: SwAV has none, so :attr:`teacher` is a read-only alias of the
    student (a property, not a registered submodule). The state dict therefore
    holds each parameter once, under ``student.*`` (what the checkpoint reader
    and the optimizer see), and a checkpoint resumes with ``load_state_dict``
    unchanged; ``teacher_prototypes`` / ``teacher_features`` / ``teacher_logits``
    evaluate the one network. :meth:`update_teacher` is a no-op.

    The ``teacher_temp`` that the trainer passes to :meth:`training_step` is not
    used: SwAV's codes are sharpened by ``swav.epsilon`` instead.

    Queue (``swav.queue_length`` > 0): for each global crop, the bottleneck
    embeddings of past batches (the newest first). From epoch
    ``swav.queue_start_epoch`` on, each step pushes the current embeddings, and
    once the queue is full its scores against the current prototypes are put
    in front of the batch's scores before Sinkhorn-Knopp (only the batch's codes
    are kept), as in the official code. ``queue_length`` is global: it is cut to
    a multiple of ``data.batch_size`` and split between processes, and lives in
    buffers so a checkpoint restores it (every process restores the main
    process's queue).
    """

    supported_targets = ("sinkhorn",)
    queue: torch.Tensor
    queue_size: torch.Tensor

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        m, o, s = cfg.model, cfg.objective, cfg.section(SwAVConfig)  # the swav: section
        if m.prototype_layer != "normalized":
            raise UserError(
                f"method 'swav' needs model.prototype_layer=normalized (got "
                f"{m.prototype_layer!r}): SwAV renormalizes its prototypes every step"
            )
        if o.target_options:
            raise UserError(
                "method 'swav' takes its Sinkhorn-Knopp settings from swav.epsilon and "
                "swav.sinkhorn_iterations; remove objective.target_options"
            )
        # No teacher to copy: SwAV trains one network (see the class docstring).
        self.student: SwAVNet = SwAVNet(*build_backbone_and_head(cfg))
        self.student_temp = float(o.student_temp)
        self.epsilon = float(s.epsilon)
        self.sinkhorn_iterations = int(s.sinkhorn_iterations)
        self.freeze_prototypes_steps = int(s.freeze_prototypes_steps)
        self.queue_start_epoch = int(s.queue_start_epoch)
        self.regularizers = Regularizers.from_config(o, num_prototypes=m.num_prototypes)

        # Official: the queue holds a whole number of global batches.
        length = s.queue_length - s.queue_length % cfg.data.batch_size
        if s.queue_length > 0 and length == 0:
            raise UserError(
                f"swav.queue_length ({s.queue_length}) must be 0 or at least data.batch_size "
                f"({cfg.data.batch_size})"
            )
        local_length = length // distributed.world_size()
        self.register_buffer("queue", torch.zeros(NUM_GLOBAL_CROPS, local_length, m.bottleneck_dim))
        # Valid entries in the queue; codes use the queue only once it is full.
        self.register_buffer("queue_size", torch.zeros((), dtype=torch.long))

    # Read-only alias: SwAV has no separate teacher (see the class docstring).
    @property
    def teacher(self) -> SwAVNet:  # type: ignore[override]  # an alias, never assigned
        return self.student

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """No EMA teacher in SwAV: nothing to update."""
        del momentum

    # ------------------------------------------------------------------ step

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        """Project the prototypes back onto the unit sphere (official: every iteration)."""
        weight = self.student.head.prototypes.weight
        weight.copy_(F.normalize(weight, dim=1))

    @property
    def queue_length(self) -> int:
        """Entries per global crop in this process's queue (0: no queue)."""
        return self.queue.shape[1]

    @torch.no_grad()
    def compute_codes(
        self, scores: torch.Tensor, embeddings: torch.Tensor, epoch: int
    ) -> torch.Tensor:
        """Sinkhorn-Knopp codes [2, B, K] of the global crops, with the queue if active.

        Args:
            scores: scores of the global crops [2, B, K] (detached here).
            embeddings: their bottleneck embeddings [2, B, p], pushed into the queue.
            epoch: the current epoch (the queue starts at ``swav.queue_start_epoch``).
        """
        scores, embeddings = scores.detach(), embeddings.detach()
        batch = scores.shape[1]
        use_queue = self.queue_length > 0 and epoch >= self.queue_start_epoch
        # Decided once per step, before this step's push (official order).
        queue_full = use_queue and int(self.queue_size) >= self.queue_length
        prototypes = F.normalize(self.student.head.prototypes.weight, dim=1)
        codes = []
        for i in range(scores.shape[0]):
            out = scores[i]
            if queue_full:
                queued = self.queue[i].to(prototypes.dtype) @ prototypes.t()
                out = torch.cat([queued.to(out.dtype), out])
            codes.append(sinkhorn_knopp(out, self.epsilon, self.sinkhorn_iterations)[-batch:])
            if use_queue:
                # Newest first; the oldest entries fall off the end.
                new = torch.cat([embeddings[i].to(self.queue.dtype), self.queue[i]])
                self.queue[i] = new[: self.queue_length]
        if use_queue:
            self.queue_size.fill_(min(self.queue_length, int(self.queue_size) + batch))
        return torch.stack(codes)

    def training_step(
        self,
        crops: list[torch.Tensor],
        teacher_temp: float,
        context: StepContext | None = None,
    ) -> StepOutput:
        """SwAV loss for 2 global crops then local crops; ``teacher_temp`` is unused."""
        del teacher_temp  # SwAV sharpens its codes with swav.epsilon
        if len(crops) < NUM_GLOBAL_CROPS:
            raise ValueError(f"SwAV needs at least {NUM_GLOBAL_CROPS} crops (got {len(crops)})")
        context = context if context is not None else StepContext()
        self.normalize_prototypes()
        scores, embeddings, features = self.student.forward_all(crops)
        codes = self.compute_codes(
            scores[:NUM_GLOBAL_CROPS], embeddings[:NUM_GLOBAL_CROPS], context.epoch
        )
        swapped = multicrop_cross_entropy(scores, codes, self.student_temp)
        terms = {"swapped_prediction": float(swapped.detach())}
        loss = self.regularizers.add_to(
            swapped,
            terms,
            prototypes=self.student_prototypes(),
            student_probs=lambda: torch.softmax(scores / self.student_temp, dim=-1),
            embeddings=features[:NUM_GLOBAL_CROPS],
        )
        terms["loss"] = float(loss.detach())
        return StepOutput(loss=loss, terms=terms)

    def frozen_parameters(self, context: StepContext) -> list[nn.Parameter]:
        """The prototypes during the first ``swav.freeze_prototypes_steps`` iterations."""
        if context.step < self.freeze_prototypes_steps:
            return list(self.prototype_parameters())
        return []

    # ------------------------------------------------------------ accessors

    @torch.no_grad()
    def teacher_logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.student.head(self.student.backbone(images))
