"""Frozen-feature extraction for evaluation protocols (kNN, later linear and few-shot).

Example:
    >>> feats, labels = extract_features(method.teacher_features, dataset)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm


@torch.no_grad()
def extract_features(
    encode: Callable[[torch.Tensor], torch.Tensor],
    dataset: Dataset,
    batch_size: int = 256,
    num_workers: int = 0,
    progress: bool = False,
    description: str = "features",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``encode`` over a labelled dataset in order; returns (features, labels)."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    features: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    for images, targets in tqdm(loader, desc=description, disable=not progress, leave=False):
        features.append(encode(images).float())
        labels.append(torch.as_tensor(targets))
    if not features:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.long)
    return torch.cat(features), torch.cat(labels).long()
