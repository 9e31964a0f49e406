"""Live collapse monitor: both faces of partial prototype collapse, every epoch.

Face one is duplicates: the number M of unique prototypes (Govindarajan et al.,
"On Partial Prototype Collapse in the DINO Family of Self-Supervised Methods").
Face two is usage: how many prototypes any evaluation image picks as its
teacher argmax (of the raw logits, without the training center, as a cluster
assignment at test time), and the entropy of that choice. They need not come together
(the demo ends with M = K = 1,024 and 23 prototypes used: docs/demo.md), so both are
always reported.

Two more numbers tell a run stuck on DINO's uniform plateau (loss at ln K) apart
from one that learns: ``embedding_mean_cosine``, the mean pairwise cosine of the
teacher head's unit-norm bottleneck embeddings of the fixed images (near 1: the
head maps every image to the same point), and ``target_entropy``, the mean
entropy in nats of the teacher's training targets for those images, next to
``log_K`` = ln K, its largest possible value (targets nearly uniform). Either is
NaN for a method that lacks what it needs (see :meth:`CollapseMonitor.measure`).

Example:
    >>> monitor = CollapseMonitor(torch.randn(32, 3, 16, 16), eps=0.025)
    >>> stats = monitor.measure(method)  # doctest: +SKIP
"""

from __future__ import annotations

import math

import torch

from protossl.config import Config
from protossl.core import distributed
from protossl.data import EvalTransform, load_dataset
from protossl.diagnostics import (
    count_unique_prototypes,
    distance_quantiles,
    nearest_neighbor_distances,
    usage_from_logits,
)
from protossl.methods.base import Method
from protossl.objectives.probability_centering import ProbabilityCentering
from protossl.objectives.targets import Centering

# Target builders whose ``targets`` uses no collective. The monitor runs on the main
# process only, so under torchrun another builder's all_reduce (Sinkhorn-Knopp) would
# wait for ranks that never join it; their target entropy is NaN there.
_LOCAL_TARGET_BUILDERS = (Centering, ProbabilityCentering)


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
        """Collapse statistics of ``method`` now (evaluation mode, no gradients).

        Besides the prototype statistics: ``embedding_mean_cosine`` (NaN when the
        teacher has no ``head.embed``, or for fewer than two images),
        ``target_entropy`` (the targets of ``method.target_builder`` at the final
        ``method.teacher_temp``, without updating the builder; NaN for a method
        without both, or under torchrun for a builder whose targets need a
        collective) and ``log_K``.
        """
        was_training = method.training
        method.eval()
        device = method.student_prototypes().device
        batches = [
            self.images[i : i + self.batch_size]
            for i in range(0, self.images.shape[0], self.batch_size)
        ]
        try:
            logits = torch.cat([method.teacher_logits(b.to(device)).cpu() for b in batches])
            embedding_cosine = _embedding_mean_cosine(method, batches, device)
            entropy = _target_entropy(method, logits.to(device))
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
            "embedding_mean_cosine": embedding_cosine,
            "target_entropy": entropy,
            "log_K": math.log(logits.shape[-1]),
        }


def _embedding_mean_cosine(
    method: Method, batches: list[torch.Tensor], device: torch.device
) -> float:
    """Mean off-diagonal cosine of the teacher head's embeddings, in O(N d).

    For vectors y_i, ``||sum y_i||^2 - sum ||y_i||^2`` is the sum of the N(N-1)
    off-diagonal entries of their Gram matrix; for unit y_i it is
    ``||sum y||^2 - N``. Accumulated in float64 (values near 1 matter).
    """
    try:
        embed = getattr(method.teacher.get_submodule("head"), "embed", None)
    except AttributeError:  # no teacher.head
        return math.nan
    if not callable(embed):
        return math.nan
    total: torch.Tensor | None = None
    squares = 0.0
    count = 0
    for images in batches:
        y = embed(method.teacher_features(images.to(device))).double()
        y = y.reshape(y.shape[0], -1)
        total = y.sum(dim=0) if total is None else total + y.sum(dim=0)
        squares += float(y.pow(2).sum())
        count += y.shape[0]
    if total is None or count < 2:
        return math.nan
    return (float(total.pow(2).sum()) - squares) / (count * (count - 1))


def _target_entropy(method: Method, logits: torch.Tensor) -> float:
    """Mean entropy (nats) of the method's training targets for ``logits`` [N, K].

    ``targets`` only reads the builder's state (the center); ``update`` is not called.
    """
    builder = getattr(method, "target_builder", None)
    temp = getattr(method, "teacher_temp", None)
    if builder is None or not isinstance(temp, int | float) or not hasattr(builder, "targets"):
        return math.nan
    if distributed.is_distributed() and not isinstance(builder, _LOCAL_TARGET_BUILDERS):
        return math.nan
    targets = builder.targets(logits, float(temp)).double()
    return float(-torch.special.xlogy(targets, targets).sum(dim=-1).mean())


def monitor_images(cfg: Config) -> torch.Tensor:
    """The fixed test images a run's collapse monitor measures usage on.

    A seed-0 random subset of ``monitor.monitor_samples`` test images: folder test
    splits are sorted by class, so the first images would all be one class and the
    usage statistics meaningless.
    """
    test_set = load_dataset(cfg.data.spec, "test", transform=EvalTransform(cfg.data.image_size))
    count = min(len(test_set), cfg.monitor.monitor_samples)
    order = torch.randperm(len(test_set), generator=torch.Generator().manual_seed(0))
    return torch.stack([test_set[int(i)][0] for i in order[:count]])
