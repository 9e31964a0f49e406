"""Weighted k-nearest-neighbour evaluation of frozen features (DINO protocol).

Implements the kNN classifier of DINO (Caron et al., "Emerging Properties in
Self-Supervised Vision Transformers", ICCV 2021, Sec. 4.1 and the official
``eval_knn.py``, itself following Wu et al., 2018): features are
L2-normalised, each test point retrieves its ``k`` most cosine-similar training
points, and each neighbour votes for its label with weight ``exp(sim / T)``.
DINO reports k = 20 and T = 0.07 (and k in 10, 20, 100, 200 in its appendix).

The search is exact and chunked over test points. The chunk is chosen so that
the ``[chunk, N]`` similarity block fits in ``memory_budget`` bytes (default
256 MiB), and that block is allocated once and reused; so beyond the inputs and
their normalised copies, peak extra memory is the budget plus
``chunk * k_max * 12`` bytes of neighbours and ``M * len(ks) * 5 * 8`` bytes of
ranked predictions. For 100k x 100k features of dimension 384 that is 256 MiB +
~0.5 MiB + 32 MiB, whereas a plain ``test @ train.T`` would need 40 GB.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from protossl.core.neighbours import iter_tiled_topk

__all__ = ["DEFAULT_MEMORY_BUDGET", "knn_accuracy", "knn_classify", "knn_predict", "knn_search"]

# 256 MiB of float32 similarities per chunk: big enough that a BLAS call amortises its
# overhead, small enough for any laptop; measured in benchmarks/knn_speed.py.
DEFAULT_MEMORY_BUDGET = 256 * 2**20


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


def _check_hyperparameters(k: int, temperature: float, chunk_size: int | None) -> None:
    """Raise ValueError for k, T or chunk size outside their valid ranges."""
    if k < 1:
        raise ValueError(f"k must be >= 1 (got {k})")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (got {temperature})")
    if chunk_size is not None and chunk_size < 1:
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


def _chunk_rows(chunk_size: int | None, num_train: int, memory_budget: int) -> int:
    """Test rows per chunk: ``chunk_size`` if given, else as many as the budget allows."""
    if chunk_size is not None:
        return chunk_size
    return max(1, memory_budget // (4 * max(num_train, 1)))


def _search_chunks(
    train_n: Tensor, test_n: Tensor, k: int, rows: int
) -> Iterator[tuple[int, Tensor, Tensor]]:
    """Yield ``(start, sims, indices)`` of the top-k neighbours, block by block of test rows.

    Each block of test rows is one tile as wide as the train bank (``block_cols=None``),
    so its neighbours come from one ``torch.topk`` over its full similarity rows: the
    order among equal similarities, which can decide a vote, is the untiled search's.
    The tile lives in one buffer written in place by ``torch.mm(out=...)``: a fresh
    256 MiB block per chunk would be returned to the OS and page-faulted back every
    time, which costs as much as the matrix product itself on CPU.
    """
    return iter_tiled_topk(test_n, train_n, k, block_rows=rows)


def knn_search(
    train_features: Tensor,
    test_features: Tensor,
    k: int,
    chunk_size: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> tuple[Tensor, Tensor]:
    """Exact top-k cosine neighbours of every test point among the training points.

    Args:
        train_features: ``[N, d]`` (normalised inside).
        test_features: ``[M, d]`` (normalised inside).
        k: Neighbours per test point (reduced to N if larger).
        chunk_size: Test points per block; default: as many as ``memory_budget`` allows.
        memory_budget: Bytes for one ``[chunk, N]`` float32 similarity block.

    Returns:
        ``(sims, indices)``, both ``[M, min(k, N)]``, most similar first.

    Example:
        >>> x = torch.eye(3)
        >>> knn_search(x, x, k=1)[1].flatten().tolist()
        [0, 1, 2]
    """
    if train_features.ndim != 2 or test_features.ndim != 2:
        raise ValueError("features must be 2-D [num_points, dim]")
    if train_features.shape[0] == 0:
        raise ValueError("train_features is empty: kNN needs at least one training point")
    _check_hyperparameters(k, 1.0, chunk_size)
    train_n = _normalize(train_features)
    test_n = _normalize(test_features.to(train_n.device))
    k = min(k, train_n.shape[0])
    rows = _chunk_rows(chunk_size, train_n.shape[0], memory_budget)
    if test_n.shape[0] == 0:
        empty = torch.empty(0, k, device=train_n.device)
        return empty, empty.long()
    sims, idx = zip(*((s, i) for _, s, i in _search_chunks(train_n, test_n, k, rows)), strict=True)
    return torch.cat(sims), torch.cat(idx)


def _vote(
    sims: Tensor, indices: Tensor, train_labels: Tensor, num_classes: int, temperature: float
) -> Tensor:
    """Sum the weights exp(sim / T) of the neighbours per label -> [chunk, num_classes]."""
    weights = (sims / temperature).exp()
    neighbour_labels = train_labels[indices]
    scores = torch.zeros(sims.shape[0], num_classes, dtype=weights.dtype, device=weights.device)
    return scores.scatter_add_(1, neighbour_labels, weights)


def _ranked(scores: Tensor, top: int) -> Tensor:
    """The ``top`` best classes per row, best first; -1 where no neighbour voted.

    A class only counts if some neighbour voted for it (score > 0): otherwise the
    order among zero-score classes is arbitrary and a label that no neighbour carries
    could be "found" by chance. DINO's ``eval_knn.py`` achieves the same for k < 5 by
    looking at only ``min(5, k)`` predictions.
    """
    top_scores, top_classes = scores.topk(top, dim=1)
    return top_classes.masked_fill(top_scores <= 0, -1)


def knn_predict(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk_size: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
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
        chunk_size: Test points processed at once (default: from ``memory_budget``).
        memory_budget: Bytes of one ``[chunk, N]`` similarity block.

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
    rows = _chunk_rows(chunk_size, train_n.shape[0], memory_budget)
    out = [
        _vote(sims, indices, labels, num_classes, temperature)
        for _, sims, indices in _search_chunks(train_n, test_n, k, rows)
    ]
    return torch.cat(out)


def knn_classify(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    num_classes: int,
    ks: Sequence[int] = (10, 20, 100, 200),
    temperature: float = 0.07,
    top: int = 5,
    chunk_size: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> dict[int, Tensor]:
    """Ranked kNN predictions for several k from one search with the largest k.

    Each smaller k reuses the leading neighbours of the same sorted list, so DINO's
    ``ks=(10, 20, 100, 200)`` cost about as much as k = 200 alone. Only the ranked
    classes are kept per chunk (not the neighbours), so memory stays bounded.

    Returns:
        ``{k: [M, min(top, num_classes)] long}``: the best classes first, -1 where
        fewer classes received a vote.

    Example:
        >>> x, y = torch.eye(4), torch.tensor([0, 1, 2, 3])
        >>> knn_classify(x, y, x, 4, ks=(1,), top=2)[1].tolist()[0]
        [0, -1]
    """
    _check_features(train_features, train_labels, test_features)
    if len(ks) == 0:
        raise ValueError("ks must contain at least one k")
    for k in ks:
        _check_hyperparameters(k, temperature, chunk_size)
    if top < 1:
        raise ValueError(f"top must be >= 1 (got {top})")
    _check_num_classes(train_labels, num_classes)
    device = train_features.device
    train_n = _normalize(train_features)
    labels = train_labels.to(device=device, dtype=torch.long)
    test_n = _normalize(test_features.to(device))
    k_max = min(max(ks), train_n.shape[0])
    top = min(top, num_classes)
    ranked = {k: torch.empty(test_n.shape[0], top, dtype=torch.long, device=device) for k in ks}
    if test_n.shape[0] == 0:
        return ranked
    rows = _chunk_rows(chunk_size, train_n.shape[0], memory_budget)
    for start, sims, indices in _search_chunks(train_n, test_n, k_max, rows):
        for k in ks:
            kk = min(k, k_max)
            scores = _vote(sims[:, :kk], indices[:, :kk], labels, num_classes, temperature)
            ranked[k][start : start + sims.shape[0]] = _ranked(scores, top)
    return ranked


def knn_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    num_classes: int | None = None,
    ks: Sequence[int] = (20,),
    temperature: float = 0.07,
    chunk_size: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> dict[str, float]:
    """Top-1 (and top-5) accuracy of DINO's weighted kNN for several k (Caron et al., 2021).

    The similarity search runs once with the largest k (see :func:`knn_classify`).

    Args:
        train_features: ``[N, d]`` training features.
        train_labels: ``[N]`` integer training labels.
        test_features: ``[M, d]`` test features (M >= 1).
        test_labels: ``[M]`` integer test labels (only compared with predictions).
        num_classes: Number of classes; defaults to the largest label (train
            or test) plus one.
        ks: Numbers of neighbours to evaluate (each >= 1).
        temperature: Temperature T of the vote weights (DINO: 0.07).
        chunk_size: Test points processed at once (default: from ``memory_budget``).
        memory_budget: Bytes of one ``[chunk, N]`` similarity block.

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
    if num_classes is None:
        num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    _check_num_classes(train_labels, num_classes)
    _check_num_classes(test_labels, num_classes, "test")
    ranked = knn_classify(
        train_features,
        train_labels,
        test_features,
        num_classes,
        ks=ks,
        temperature=temperature,
        chunk_size=chunk_size,
        memory_budget=memory_budget,
    )
    targets = test_labels.to(device=train_features.device, dtype=torch.long)[:, None]
    result: dict[str, float] = {}
    for k, classes in ranked.items():
        hits = classes == targets
        # Integer counts over the total: exact fractions, independent of the chunking.
        result[f"knn_top1@{k}"] = int(hits[:, 0].sum()) / classes.shape[0]
        if num_classes >= 5:
            result[f"knn_top5@{k}"] = int(hits.any(dim=1).sum()) / classes.shape[0]
    return result
