"""Live collapse monitor: both faces of partial prototype collapse, every epoch.

Face one is duplicates: the number M of unique prototypes (Govindarajan et al.,
"On Partial Prototype Collapse in the DINO Family of Self-Supervised Methods").
Face two is usage: how many prototypes any evaluation image picks as its
teacher argmax (of the raw logits, without the training center, as a cluster
assignment at test time), and the entropy of that choice. They need not come together
(see the known pitfalls in the design notes), so both are always reported.

Example:
    >>> monitor = CollapseMonitor(torch.randn(32, 3, 16, 16), eps=0.025)
    >>> stats = monitor.measure(method)  # doctest: +SKIP
"""

from __future__ import annotations

import torch

from protossl.diagnostics import (
    count_unique_prototypes,
    distance_quantiles,
    nearest_neighbor_distances,
    usage_from_logits,
)
from protossl.methods.base import Method


class CollapseMonitor:
    """Measures M, nearest-neighbour distances and prototype usage on fixed images."""

    def __init__(self, images: torch.Tensor, eps: float = 0.025, batch_size: int = 256) -> None:
        if images.ndim != 4 or images.shape[0] == 0:
            raise ValueError("CollapseMonitor needs a non-empty batch of images [N, C, H, W]")
        self.images = images
        self.eps = eps
        self.batch_size = batch_size

    @torch.no_grad()
    def measure(self, method: Method) -> dict[str, float | int]:
        """Collapse statistics of ``method`` now (evaluation mode, no gradients)."""
        was_training = method.training
        method.eval()
        device = method.student_prototypes().device
        try:
            logits = torch.cat(
                [
                    method.teacher_logits(self.images[i : i + self.batch_size].to(device)).cpu()
                    for i in range(0, self.images.shape[0], self.batch_size)
                ]
            )
        finally:
            method.train(was_training)
        usage = usage_from_logits(logits)
        student = method.student_prototypes().detach()
        unique = count_unique_prototypes(student, eps=self.eps)
        teacher_unique = count_unique_prototypes(method.teacher_prototypes().detach(), eps=self.eps)
        nn_quantiles = distance_quantiles(nearest_neighbor_distances(student))
        return {
            "K": unique.num_prototypes,
            "M": unique.num_unique,
            "M_over_K": unique.fraction,
            "teacher_M": teacher_unique.num_unique,
            "usage_entropy": usage.entropy,
            "usage_perplexity": usage.perplexity,
            "prototypes_used": usage.num_used,
            "dead_prototypes": usage.num_dead,
            "nn_distance_q10": nn_quantiles["q10"],
            "nn_distance_median": nn_quantiles["q50"],
        }
