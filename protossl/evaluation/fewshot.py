"""Few-shot classification on frozen features with logistic regression (MSN protocol).

MSN (Assran et al., "Masked Siamese Networks for Label-Efficient Learning",
ECCV 2022, ``logistic_eval.py``) trains an L2-regularized multinomial logistic
regression on the frozen features of 1, 2 or 5 images per class (and 13, about
1% of ImageNet) and reports top-1 on the full test set, as mean and std over
several random draws of the labelled images. Following that code:

* each feature vector is centred (its own mean subtracted) and L2-normalized,
  the same for train and test ("cyanure.preprocess(normalize=True,
  columns=False, centering=True)");
* no intercept, penalty lambda = 0.00025 on ``0.5 * ||W||^2`` summed over the
  images, i.e. scikit-learn's ``C = 1 / lambda = 4000``.

Draw ``d`` of class c is a permutation drawn from a generator seeded by
``(seed, d, c)``; the n-shot set takes its first n images, so the 1-shot set is
inside the 2-shot set of the same draw, and no draw depends on another class.
A class with fewer than n training images contributes all of them.

Example:
    >>> x, y = torch.randn(100, 8), torch.arange(100) % 4
    >>> res = few_shot_accuracy(x, y, x, y, num_classes=4, shots=(1, 2), draws=2)
    >>> sorted(res)[:2]
    ['fewshot_1shot_top1_mean', 'fewshot_1shot_top1_std']
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "DEFAULT_DRAWS",
    "DEFAULT_SHOTS",
    "MSN_LAMBDA",
    "few_shot_accuracy",
    "few_shot_indices",
    "fit_logistic_predict",
    "msn_preprocess",
]

DEFAULT_SHOTS = (1, 2, 5, 13)
DEFAULT_DRAWS = 5
# MSN's logistic_eval.py default --lambd (l2 penalty, no intercept).
MSN_LAMBDA = 0.00025


def few_shot_indices(labels: Sequence[int], shots: int, draw: int, seed: int = 0) -> list[int]:
    """Sorted indices of ``shots`` images per class for draw number ``draw``.

    Example:
        >>> few_shot_indices([0, 0, 0, 1, 1], shots=1, draw=0)
        [2, 4]
    """
    if shots < 1:
        raise ValueError(f"shots must be >= 1 (got {shots})")
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(int(label), []).append(index)
    chosen: list[int] = []
    for c, members in sorted(by_class.items()):
        order = np.random.default_rng([seed, draw, c]).permutation(len(members))
        chosen.extend(members[i] for i in order[:shots])
    return sorted(chosen)


def msn_preprocess(x: Tensor) -> np.ndarray:
    """Centre every row on its own mean, then L2-normalize it (float64 numpy)."""
    rows = x.double().numpy()
    rows = rows - rows.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.maximum(norms, 1e-12)


def fit_logistic_predict(
    train_x: Tensor, train_y: Tensor, test_x: Tensor, lambd: float = MSN_LAMBDA
) -> np.ndarray:
    """Fit MSN's logistic regression on (train_x, train_y); return test predictions.

    Test labels are not an argument, so they cannot leak into the fit.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    if lambd <= 0:
        raise ValueError(f"lambd must be > 0 (got {lambd})")
    classes = np.unique(train_y.numpy())
    if classes.size == 1:  # scikit-learn refuses one class; the answer is that class
        return np.full(test_x.shape[0], classes[0])
    model = LogisticRegression(C=1.0 / lambd, fit_intercept=False, max_iter=1000)
    with warnings.catch_warnings():
        # A few images per class are separable, so the weights grow until max_iter;
        # the argmax (all we use) has long stopped changing by then.
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(msn_preprocess(train_x), train_y.numpy())
    return np.asarray(model.predict(msn_preprocess(test_x)))


def few_shot_accuracy(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    num_classes: int,
    shots: Sequence[int] = DEFAULT_SHOTS,
    draws: int = DEFAULT_DRAWS,
    seed: int = 0,
    lambd: float = MSN_LAMBDA,
) -> dict[str, float]:
    """Top-1 of n-shot logistic regression, mean and std over ``draws`` draws.

    Args:
        train_x, train_y: The labelled pool the shots are drawn from.
        test_x, test_y: The test set (labels only compared with predictions).
        num_classes: Number of classes (for the label check).
        shots: Images per class (MSN: 1, 2, 5 and 13 = ~1% of ImageNet).
        draws: Random draws per n (std uses ``ddof=1``, the sample std).
        seed: Base seed of the draws.
        lambd: L2 penalty (MSN: 0.00025).

    Returns:
        ``{"fewshot_{n}shot_top1_mean": ..., "fewshot_{n}shot_top1_std": ...}``.
    """
    if draws < 1:
        raise ValueError(f"draws must be >= 1 (got {draws})")
    if train_y.numel() == 0 or test_y.numel() == 0:
        raise ValueError("few-shot needs a non-empty pool and test set")
    if int(train_y.max()) >= num_classes or int(test_y.max()) >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes - 1}]")
    labels = train_y.tolist()
    truth = test_y.numpy()
    result: dict[str, float] = {}
    for n in shots:
        accs = []
        for d in range(draws):
            idx = torch.as_tensor(few_shot_indices(labels, n, d, seed))
            pred = fit_logistic_predict(train_x[idx], train_y[idx], test_x, lambd)
            accs.append(float((pred == truth).mean()))
        result[f"fewshot_{n}shot_top1_mean"] = float(np.mean(accs))
        result[f"fewshot_{n}shot_top1_std"] = float(np.std(accs, ddof=1)) if draws > 1 else 0.0
    return result
