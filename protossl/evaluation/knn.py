"""Weighted k-nearest-neighbour evaluation of frozen features (DINO protocol).

Implements the kNN classifier of DINO (Caron et al., "Emerging Properties in
Self-Supervised Vision Transformers", ICCV 2021, Sec. 4.1 and the official
``eval_knn.py``, itself following Wu et al., 2018): features are
L2-normalised, each test point retrieves its ``k`` most cosine-similar training
points, and each neighbour votes for its label with weight ``exp(sim / T)``.
DINO reports k = 20 and T = 0.07.

Work is chunked over test points, so peak memory is ``O(chunk_size * N)`` for
``N`` training points rather than ``O(M * N)``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["knn_accuracy", "knn_predict"]


def _check_features(train_features: Tensor, train_labels: Tensor, test_features: Tensor) -> None:
    """Raise ValueError unless the shapes describe N train and M test points in R^d."""
    if train_features.ndim != 2 or test_features.ndim != 2:
        raise ValueError(
            "features must be 2-D [num_points, dim] "
            f"(got train {tuple(train_features.shape)}, test {tuple(test_features.shape)})"
        )
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(
            "train and test features must have the same dimension "
            f"(got {train_features.shape[1]} and {test_features.shape[1]})"
        )
    if train_features.shape[0] == 0:
        raise ValueError("train_features is empty: kNN needs at least one training point")
    _check_labels(train_labels, train_features.shape[0], "train")


def _check_labels(labels: Tensor, num_points: int, name: str) -> None:
    """Raise ValueError unless ``labels`` is a 1-D integer tensor with one label per point."""
    if labels.ndim != 1 or labels.shape[0] != num_points:
        raise ValueError(
            f"{name}_labels must have shape [{num_points}] (got {tuple(labels.shape)})"
        )
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"{name}_labels must be an integer tensor (got {labels.dtype})")


def _check_hyperparameters(k: int, temperature: float, chunk_size: int) -> None:
    """Raise ValueError for k, T or chunk size outside their valid ranges."""
    if k < 1:
        raise ValueError(f"k must be >= 1 (got {k})")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (got {temperature})")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 (got {chunk_size})")


def _check_num_classes(labels: Tensor, num_classes: int, name: str = "train") -> None:
    """Raise ValueError if a label does not fit in ``num_classes`` score columns."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1 (got {num_classes})")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(
            f"{name} labels must lie in [0, {num_classes - 1}] for num_classes={num_classes} "
            f"(got range [{lo}, {hi}])"
        )


def _normalize(features: Tensor) -> Tensor:
    """L2-normalise rows in float32.

    float32 because exp(1 / 0.07) ~ 1.6e6 overflows float16, and half-precision
    features straight from an AMP model are common.
    """
    return F.normalize(features.float(), dim=1)


def _neighbours(train_n: Tensor, test_chunk: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-k cosine similarities and indices, sorted from most to least similar."""
    similarity = test_chunk @ train_n.T  # [chunk, N]; this is the O(chunk * N) buffer
    return similarity.topk(k, dim=1, largest=True, sorted=True)


def _vote(
    sims: Tensor, indices: Tensor, train_labels: Tensor, num_classes: int, temperature: float
) -> Tensor:
    """Sum the weights exp(sim / T) of the neighbours per label -> [chunk, num_classes]."""
    weights = (sims / temperature).exp()
    neighbour_labels = train_labels[indices]
    scores = torch.zeros(sims.shape[0], num_classes, dtype=weights.dtype, device=weights.device)
    return scores.scatter_add_(1, neighbour_labels, weights)


def _chunks(test_n: Tensor, chunk_size: int) -> Iterator[Tensor]:
    """Yield consecutive row blocks of at most ``chunk_size`` test points."""
    for start in range(0, test_n.shape[0], chunk_size):
        yield test_n[start : start + chunk_size]


def knn_predict(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> Tensor:
    """Class scores of DINO's weighted kNN classifier (Caron et al., 2021).

    For every test point, the ``k`` training points with the highest cosine
    similarity vote for their label with weight ``exp(sim / temperature)``;
    the score of class c is the summed weight of the neighbours labelled c
    (zero for a class no neighbour carries). ``k`` larger than the number of
    training points is reduced to it.

    Args:
        train_features: ``[N, d]`` training features (normalised inside).
        train_labels: ``[N]`` integer labels in ``[0, num_classes)``.
        test_features: ``[M, d]`` test features (normalised inside).
        num_classes: Number of score columns.
        k: Number of neighbours (DINO: 20).
        temperature: Temperature T of the vote weights (DINO: 0.07).
        chunk_size: Test points processed at once; bounds memory to
            ``O(chunk_size * N)``.

    Returns:
        ``[M, num_classes]`` float32 scores on the device of ``train_features``.

    Raises:
        ValueError: On mismatched shapes, non-integer or out-of-range labels,
            an empty training set, ``k < 1``, ``temperature <= 0`` or
            ``chunk_size < 1``.

    Example:
        >>> train, labels = torch.randn(100, 8), torch.randint(0, 3, (100,))
        >>> scores = knn_predict(train, labels, torch.randn(5, 8), num_classes=3, k=10)
        >>> scores.shape
        torch.Size([5, 3])
    """
    _check_features(train_features, train_labels, test_features)
    _check_hyperparameters(k, temperature, chunk_size)
    _check_num_classes(train_labels, num_classes)
    device = train_features.device
    train_n = _normalize(train_features)
    labels = train_labels.to(device=device, dtype=torch.long)
    k = min(k, train_n.shape[0])
    test_n = _normalize(test_features.to(device))
    if test_n.shape[0] == 0:
        return torch.zeros(0, num_classes, device=device)
    out = []
    for chunk in _chunks(test_n, chunk_size):
        sims, indices = _neighbours(train_n, chunk, k)
        out.append(_vote(sims, indices, labels, num_classes, temperature))
    return torch.cat(out)


def _count_correct(scores: Tensor, targets: Tensor, top: int) -> tuple[int, int]:
    """Numbers of test points whose label is the top-1 / within the top-``top`` classes.

    A class only counts if some neighbour voted for it (score > 0): otherwise
    the order among zero-score classes is arbitrary and a label that no
    neighbour carries could be "found" by chance. DINO's ``eval_knn.py``
    achieves the same for k < 5 by looking at only ``min(5, k)`` predictions.
    """
    top_scores, top_classes = scores.topk(top, dim=1)
    hit = (top_classes == targets[:, None]) & (top_scores > 0)
    return int(hit[:, 0].sum()), int(hit.any(dim=1).sum())


def knn_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    num_classes: int | None = None,
    ks: Sequence[int] = (20,),
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Top-1 (and top-5) accuracy of DINO's weighted kNN for several k (Caron et al., 2021).

    The similarity search runs once with the largest k; each smaller k reuses
    the leading neighbours of the same sorted list, so evaluating DINO's usual
    ``ks=(10, 20, 100, 200)`` costs about as much as the largest k alone.

    Args:
        train_features: ``[N, d]`` training features.
        train_labels: ``[N]`` integer training labels.
        test_features: ``[M, d]`` test features (M >= 1).
        test_labels: ``[M]`` integer test labels.
        num_classes: Number of classes; defaults to the largest label (train
            or test) plus one.
        ks: Numbers of neighbours to evaluate (each >= 1).
        temperature: Temperature T of the vote weights (DINO: 0.07).
        chunk_size: Test points processed at once.

    Returns:
        ``{"knn_top1@K": acc, "knn_top5@K": acc, ...}`` with accuracies in
        [0, 1]; top-5 keys only when ``num_classes >= 5``.

    Raises:
        ValueError: On mismatched shapes, an empty test set, an empty ``ks``,
            out-of-range labels or invalid k / temperature.

    Example:
        >>> x, y = torch.randn(200, 16), torch.randint(0, 10, (200,))
        >>> res = knn_accuracy(x[:150], y[:150], x[150:], y[150:], ks=(10, 20))
        >>> sorted(res)
        ['knn_top1@10', 'knn_top1@20', 'knn_top5@10', 'knn_top5@20']
    """
    _check_features(train_features, train_labels, test_features)
    _check_labels(test_labels, test_features.shape[0], "test")
    if test_features.shape[0] == 0:
        raise ValueError("test_features is empty: accuracy needs at least one test point")
    if len(ks) == 0:
        raise ValueError("ks must contain at least one k")
    for k in ks:
        _check_hyperparameters(k, temperature, chunk_size)
    if num_classes is None:
        num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    _check_num_classes(train_labels, num_classes)
    _check_num_classes(test_labels, num_classes, "test")

    device = train_features.device
    train_n = _normalize(train_features)
    labels = train_labels.to(device=device, dtype=torch.long)
    targets = test_labels.to(device=device, dtype=torch.long)
    test_n = _normalize(test_features.to(device))
    k_max = min(max(ks), train_n.shape[0])
    top = min(5, num_classes)
    correct = {k: [0, 0] for k in ks}
    for start in range(0, test_n.shape[0], chunk_size):
        sims, indices = _neighbours(train_n, test_n[start : start + chunk_size], k_max)
        chunk_targets = targets[start : start + chunk_size]
        for k in ks:
            kk = min(k, k_max)
            scores = _vote(sims[:, :kk], indices[:, :kk], labels, num_classes, temperature)
            top1, top5 = _count_correct(scores, chunk_targets, top)
            correct[k][0] += top1
            correct[k][1] += top5
    return _accuracy_dict(correct, test_n.shape[0], report_top5=num_classes >= 5)


def _accuracy_dict(
    correct: dict[int, list[int]], total: int, report_top5: bool
) -> dict[str, float]:
    """Turn per-k correct counts into the ``knn_top1@k`` / ``knn_top5@k`` dictionary."""
    result: dict[str, float] = {}
    for k, (top1, top5) in correct.items():
        result[f"knn_top1@{k}"] = top1 / total
        if report_top5:
            result[f"knn_top5@{k}"] = top5 / total
    return result
