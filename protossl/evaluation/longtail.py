"""Accuracy split by class frequency: many-shot, medium-shot and few-shot classes.

The split of Liu et al. ("Large-Scale Long-Tailed Recognition in an Open
World", CVPR 2019), used by Kang et al. (ICLR 2020) and the iNaturalist /
ImageNet-LT literature: a class is *many-shot* with more than 100 training
images, *medium-shot* with 20 to 100, and *few-shot* with fewer than 20. The
counts are those of the training set the classifier actually saw (after a
``@lt=R`` subsampling, see :func:`protossl.data.sources.long_tail_counts`).
A group's accuracy is the share of correctly classified test images among the
test images of its classes (equal to the mean per-class accuracy when the test
set is balanced, as the long-tail benchmarks' test sets are).

Example:
    >>> shot_groups([150, 50, 5])
    ['many', 'medium', 'few']
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["FEW_MAX", "GROUPS", "MANY_MIN", "group_accuracy", "shot_groups"]

GROUPS = ("many", "medium", "few")
MANY_MIN = 101  # > 100 training images
FEW_MAX = 19  # < 20 training images


def shot_groups(train_counts: Sequence[int]) -> list[str]:
    """The group ("many", "medium" or "few") of every class, from its training count."""
    groups = []
    for count in train_counts:
        if count < 0:
            raise ValueError(f"class counts must be >= 0 (got {count})")
        groups.append("many" if count >= MANY_MIN else "few" if count <= FEW_MAX else "medium")
    return groups


def group_accuracy(
    predictions: Tensor, test_labels: Tensor, train_counts: Sequence[int], prefix: str = ""
) -> dict[str, float | int | None]:
    """Top-1 accuracy over the test images of each group's classes.

    Args:
        predictions: ``[M]`` predicted classes of the test images.
        test_labels: ``[M]`` true classes.
        train_counts: Training images per class (index = class).
        prefix: Prepended to every key (e.g. ``"longtail_knn_"``).

    Returns:
        ``{prefix+"many_top1": acc or None, ..., prefix+"many_classes": n, ...,
        prefix+"top1": overall}``; None for a group without test images.

    Example:
        >>> group_accuracy(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 2]), [200, 50, 3])
        {'many_top1': 1.0, 'many_classes': 1, 'medium_top1': 1.0, 'medium_classes': 1, \
'few_top1': 0.0, 'few_classes': 1, 'top1': 0.6666666666666666}
    """
    if predictions.shape != test_labels.shape or predictions.ndim != 1:
        raise ValueError("predictions and test_labels must both have shape [M]")
    if test_labels.numel() and int(test_labels.max()) >= len(train_counts):
        raise ValueError("a test label has no training count")
    groups = shot_groups(train_counts)
    correct = predictions.long() == test_labels.long()
    out: dict[str, float | int | None] = {}
    for name in GROUPS:
        members = torch.tensor([g == name for g in groups], dtype=torch.bool)
        in_group = members[test_labels.long()] if test_labels.numel() else test_labels.bool()
        total = int(in_group.sum())
        out[f"{prefix}{name}_top1"] = int(correct[in_group].sum()) / total if total else None
        out[f"{prefix}{name}_classes"] = int(members.sum())
    out[f"{prefix}top1"] = int(correct.sum()) / correct.numel() if correct.numel() else None
    return out
