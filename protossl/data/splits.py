"""Deterministic, class-stratified index selection: the 80/20 train/test split and the
exponential long-tail subsampling of a train split.

Both work per class, each class with its own generator seeded by ``(seed, class)``, so one
class's draw never depends on another's (adding images to one class leaves the others'
choice unchanged). The long tail follows CIFAR-10-LT (Cao et al., "Learning Imbalanced
Datasets with Label-Distribution-Aware Margin Loss", NeurIPS 2019).

The split seed is fixed on purpose and independent of any user seed: the test set of a data
spec must be the same in every run.

Example:
    >>> train, test = stratified_split([0] * 10 + [1] * 5)
    >>> len(train), len(test)
    (12, 3)
    >>> long_tail_counts([100, 100, 100], ratio=4)
    [100, 50, 25]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

TEST_FRACTION = 0.2
# Fixed on purpose and independent of any user seed: the test set of a spec must never change.
SPLIT_SEED = 0


def stratified_split(
    targets: Sequence[int], test_fraction: float = TEST_FRACTION, seed: int = SPLIT_SEED
) -> tuple[list[int], list[int]]:
    """Split indices into (train, test) so that every class keeps its proportion.

    Class c with n_c items puts ``floor(test_fraction * n_c + 0.5)`` of them in test (at most
    n_c - 1, so no class vanishes from train); which ones is a permutation drawn from a
    generator seeded by ``(seed, c)``, so one class's draw never depends on another's.
    Both index lists come back sorted.

    Example:
        >>> stratified_split([0] * 10 + [1] * 5)[1]
        [4, 6, 11]
    """
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1) (got {test_fraction})")
    train: list[int] = []
    test: list[int] = []
    for c, members in _indices_by_class(targets).items():
        n_test = min(math.floor(test_fraction * len(members) + 0.5), len(members) - 1)
        order = np.random.default_rng([seed, c]).permutation(len(members))
        test.extend(members[i] for i in order[:n_test])
        train.extend(members[i] for i in order[n_test:])
    return sorted(train), sorted(test)


def long_tail_counts(class_sizes: Sequence[int], ratio: float) -> list[int]:
    """How many items each class keeps under an exponential long tail of imbalance ``ratio``.

    Classes are ordered by index (folder names sorted, digits 0..9): class c of C keeps
    ``int(n_max * (1/ratio) ** (c / (C - 1)))`` items, capped by its own size and at least 1,
    where n_max is the largest class. This is the CIFAR-10-LT formula of Cao et al. (2019), so
    CIFAR-10 train at ratio 100 gives 5000, 2997, 1796, ..., 83, 50.

    Example:
        >>> long_tail_counts([5000] * 10, 100)
        [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    """
    if ratio < 1.0:
        raise ValueError(f"ratio must be >= 1 (got {ratio})")
    num_classes = len(class_sizes)
    n_max = max(class_sizes, default=0)
    counts = []
    for c, size in enumerate(class_sizes):
        fraction = (1.0 / ratio) ** (c / (num_classes - 1)) if num_classes > 1 else 1.0
        keep = min(size, max(1, int(n_max * fraction)))
        counts.append(keep)
    return counts


def long_tail_indices(
    targets: Sequence[int], num_classes: int, ratio: float, seed: int = 0
) -> list[int]:
    """Indices (sorted) of an exponentially long-tailed subset; see :func:`long_tail_counts`.

    Which items of class c survive is drawn from a generator seeded by ``(seed, c)``.

    Example:
        >>> len(long_tail_indices([0] * 100 + [1] * 100, 2, ratio=10))
        110
    """
    by_class = _indices_by_class(targets)
    # Classes with no items still count: the tail's shape depends on the class index.
    sizes = [len(by_class.get(c, [])) for c in range(num_classes)]
    kept: list[int] = []
    for c, keep in enumerate(long_tail_counts(sizes, ratio)):
        members = by_class.get(c, [])
        order = np.random.default_rng([seed, c]).permutation(len(members))
        kept.extend(members[i] for i in order[:keep])
    return sorted(kept)


def _indices_by_class(targets: Sequence[int]) -> dict[int, list[int]]:
    by_class: dict[int, list[int]] = {}
    for index, target in enumerate(targets):
        by_class.setdefault(int(target), []).append(index)
    # Sorted by class, so the classes are visited in the same order whatever the item order.
    return dict(sorted(by_class.items()))
