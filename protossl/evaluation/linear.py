"""Linear probe on frozen features, hyperparameters chosen on held-out *training* data.

The protocol of DINO (Caron et al., ICCV 2021, ``eval_linear.py``: a linear
layer trained with SGD, momentum 0.9, a cosine learning-rate schedule, 100
epochs) with the learning-rate sweep of DINOv2 (Oquab et al., 2023), shrunk to
a small grid so it runs on a CPU:

1. Features are standardized (z-scored per dimension with the mean and std of
   the data the classifier is fitted on). Standardized rather than
   L2-normalized because one learning-rate grid then suits every backbone:
   raw feature scales differ by orders of magnitude between checkpoints.
2. Every (lr, weight decay) pair of the grid is fitted on 80% of the training
   set and scored on the other 20% (a stratified split with a fixed seed).
3. The best pair (ties: the first in grid order) is refitted on the whole
   training set, and only then applied to the test features.

Test labels never enter :func:`linear_probe`: it takes test *features* and
returns predictions; accuracy is computed afterwards by the caller.

Example:
    >>> x, y = torch.randn(60, 8), torch.arange(60) % 3
    >>> probe = linear_probe(x, y, x[:5], num_classes=3, epochs=5)
    >>> probe.ranked.shape
    torch.Size([5, 3])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from protossl.data.sources import stratified_split

__all__ = [
    "DEFAULT_LRS",
    "DEFAULT_WEIGHT_DECAYS",
    "LinearProbe",
    "Standardizer",
    "fit_linear",
    "linear_probe",
]

# SGD on z-scored features: 0.1 is the usual sweet spot; one decade either side.
DEFAULT_LRS = (0.01, 0.1, 1.0)
# DINO uses no weight decay for its linear probe; 1e-4 and 1e-3 cover mild regularization.
DEFAULT_WEIGHT_DECAYS = (0.0, 1e-4, 1e-3)
VAL_FRACTION = 0.2
MOMENTUM = 0.9


@dataclass(frozen=True)
class Standardizer:
    """Per-dimension z-scoring with statistics of the data it was fitted on.

    Example:
        >>> s = Standardizer.fit(torch.tensor([[0.0, 1.0], [2.0, 1.0]]))
        >>> s(torch.tensor([[1.0, 1.0]])).tolist()
        [[0.0, 0.0]]
    """

    mean: Tensor
    std: Tensor

    @classmethod
    def fit(cls, x: Tensor) -> Standardizer:
        x = x.double()
        std = x.std(dim=0, unbiased=False)
        # A constant dimension carries no information; dividing by ~0 would blow it up.
        return cls(x.mean(dim=0), torch.where(std > 1e-8, std, torch.ones_like(std)))

    def __call__(self, x: Tensor) -> Tensor:
        return ((x.double() - self.mean) / self.std).float()


@dataclass
class LinearProbe:
    """Result of :func:`linear_probe`: test predictions and the chosen hyperparameters."""

    ranked: Tensor  # [M, min(5, C)] classes, best first
    lr: float
    weight_decay: float
    val_top1: float
    grid: dict[str, float] = field(default_factory=dict)  # "lr=..,wd=.." -> val top-1


def _check(x: Tensor, y: Tensor, num_classes: int) -> None:
    if x.ndim != 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"need features [N, d] and labels [N] (got {tuple(x.shape)}, {tuple(y.shape)})"
        )
    if x.shape[0] == 0:
        raise ValueError("the linear probe needs at least one training point")
    if int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes - 1}]")


def fit_linear(
    x: Tensor,
    y: Tensor,
    num_classes: int,
    lr: float,
    weight_decay: float,
    epochs: int = 100,
    batch_size: int = 256,
    seed: int = 0,
) -> torch.nn.Linear:
    """Fit a linear softmax classifier with SGD (momentum 0.9) and a cosine schedule.

    The layer starts at zero (the loss is convex, so nothing is gained from a random
    start and zero makes the fit independent of the global RNG); mini-batches are
    drawn from a generator seeded by ``seed``. ``x`` should already be standardized.

    Example:
        >>> layer = fit_linear(torch.eye(2), torch.tensor([0, 1]), 2, lr=0.5, weight_decay=0.0)
        >>> layer(torch.eye(2)).argmax(1).tolist()
        [0, 1]
    """
    _check(x, y, num_classes)
    if lr <= 0 or weight_decay < 0 or epochs < 1 or batch_size < 1:
        raise ValueError("need lr > 0, weight_decay >= 0, epochs >= 1 and batch_size >= 1")
    layer = torch.nn.Linear(x.shape[1], num_classes)
    torch.nn.init.zeros_(layer.weight)
    torch.nn.init.zeros_(layer.bias)
    optimizer = torch.optim.SGD(
        layer.parameters(), lr=lr, momentum=MOMENTUM, weight_decay=weight_decay
    )
    g = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(x.shape[0] / batch_size)
    total = epochs * steps_per_epoch
    y = y.long()
    step = 0
    for _ in range(epochs):
        order = torch.randperm(x.shape[0], generator=g)
        for start in range(0, x.shape[0], batch_size):
            batch = order[start : start + batch_size]
            for group in optimizer.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
            loss = F.cross_entropy(layer(x[batch]), y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
    return layer


@torch.no_grad()
def _rank(layer: torch.nn.Linear, x: Tensor, top: int) -> Tensor:
    logits = layer(x)
    # A diverged fit (lr too large) gives NaN logits: rank them last, never "correct".
    logits = torch.nan_to_num(logits, nan=-math.inf)
    return logits.topk(top, dim=1).indices


def _top1(layer: torch.nn.Linear, x: Tensor, y: Tensor) -> float:
    if not all(torch.isfinite(p).all() for p in layer.parameters()):
        return 0.0
    return float((_rank(layer, x, 1)[:, 0] == y).float().mean())


def linear_probe(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    num_classes: int,
    lrs: Sequence[float] = DEFAULT_LRS,
    weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
    epochs: int = 100,
    batch_size: int = 256,
    val_fraction: float = VAL_FRACTION,
    seed: int = 0,
) -> LinearProbe:
    """Choose (lr, weight decay) on held-out training data, refit on all of it, predict test.

    Args:
        train_x: ``[N, d]`` frozen training features.
        train_y: ``[N]`` training labels in ``[0, num_classes)``.
        test_x: ``[M, d]`` frozen test features (their labels are not an argument).
        num_classes: Number of classes.
        lrs: Learning rates of the grid.
        weight_decays: Weight decays of the grid.
        epochs: Epochs of every fit (DINO: 100).
        batch_size: Mini-batch size.
        val_fraction: Share of every class held out for the selection.
        seed: Seed of the held-out split and of the mini-batch order.

    Returns:
        A :class:`LinearProbe` with the top-5 (or top-C) ranked test classes.

    Raises:
        ValueError: On bad shapes or labels, or an empty grid.
    """
    _check(train_x, train_y, num_classes)
    if not lrs or not weight_decays:
        raise ValueError("the lr and weight-decay grids must not be empty")
    fit_idx, val_idx = stratified_split(train_y.tolist(), val_fraction, seed=seed)
    grid: dict[str, float] = {}
    best: tuple[float, float, float] | None = None
    if val_idx:
        fit_x, fit_y = train_x[fit_idx], train_y[fit_idx]
        scale = Standardizer.fit(fit_x)
        fit_z, val_z = scale(fit_x), scale(train_x[val_idx])
        val_y = train_y[val_idx].long()
        for lr in lrs:
            for wd in weight_decays:
                layer = fit_linear(fit_z, fit_y, num_classes, lr, wd, epochs, batch_size, seed)
                acc = _top1(layer, val_z, val_y)
                grid[f"lr={lr:g},wd={wd:g}"] = acc
                if best is None or acc > best[2]:
                    best = (lr, wd, acc)
    if best is None:  # too few images to hold any out: fall back to the grid's middle
        best = (lrs[len(lrs) // 2], weight_decays[0], math.nan)
    lr, wd, val_acc = best
    scale = Standardizer.fit(train_x)
    layer = fit_linear(scale(train_x), train_y, num_classes, lr, wd, epochs, batch_size, seed)
    ranked = _rank(layer, scale(test_x), min(5, num_classes))
    return LinearProbe(ranked=ranked, lr=lr, weight_decay=wd, val_top1=val_acc, grid=grid)
