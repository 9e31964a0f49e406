"""Weighted kNN of a method's frozen teacher backbone on a labelled data set.

DINO (Caron et al. 2021) evaluates the teacher backbone with a weighted kNN
(k = 20, T = 0.07) on L2-normalized features; this runs that protocol for a
method object, on the train split (bank) and the test split of a data spec.

Example:
    >>> evaluate_knn(method, cfg)  # doctest: +SKIP
    {'knn_top1@20': 0.97, 'knn_top5@20': 0.99}
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from protossl.config import Config
from protossl.core.errors import UserError
from protossl.data import EvalTransform, ImageDataset, load_dataset
from protossl.evaluation.features import extract_features
from protossl.evaluation.knn import knn_accuracy
from protossl.methods import Method


def evaluate_knn(
    method: Method,
    cfg: Config,
    train_spec: str | None = None,
    test_spec: str | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Weighted kNN (DINO: k=20, T=0.07) on the teacher backbone's frozen features."""
    was_training = method.training
    method.eval()
    try:
        return knn_of_features(method.teacher_features, cfg, train_spec, test_spec, progress)
    finally:
        method.train(was_training)


def knn_of_features(
    features: Callable[[torch.Tensor], torch.Tensor],
    cfg: Config,
    train_spec: str | None = None,
    test_spec: str | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """The same protocol for any map from evaluation images to features (e.g. raw pixels)."""
    transform = EvalTransform(cfg.data.image_size)
    train: ImageDataset = load_dataset(train_spec or cfg.data.spec, "train", transform=transform)
    test: ImageDataset = load_dataset(
        test_spec or train_spec or cfg.data.spec, "test", transform=transform
    )
    if train.classes != test.classes:
        raise UserError(
            f"the kNN bank and the test set have different classes ({len(train.classes)} vs "
            f"{len(test.classes)}); give --test-data with the same class folders"
        )
    train_x, train_y = extract_features(features, train, progress=progress)
    test_x, test_y = extract_features(features, test, progress=progress)
    num_classes = max(len(train.classes), int(train_y.max()) + 1, int(test_y.max()) + 1)
    return knn_accuracy(
        train_x,
        train_y,
        test_x,
        test_y,
        num_classes=num_classes,
        ks=(cfg.monitor.knn_k,),
        temperature=cfg.monitor.knn_temperature,
    )
