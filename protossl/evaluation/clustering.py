"""How the teacher's prototypes cluster the test images (the paper's fine-grainedness claim).

Each test image goes to the prototype with the highest teacher score (its
argmax cluster). Against the true labels we report, with scikit-learn's
definitions: NMI (normalized mutual information, arithmetic mean of the
entropies), AMI (adjusted for chance), ARI (adjusted Rand index); and the
number of distinct clusters used and the cluster purity
``(1/N) * sum_clusters max_class |cluster & class|``. Purity rewards many small
clusters (it is 1 when every image has its own cluster), so read it together
with the number of clusters: a model that uses more of its K prototypes and
keeps them pure has learned a finer partition.

Example:
    >>> cluster_metrics(torch.tensor([3, 3, 7, 7]), torch.tensor([0, 0, 1, 1]))["purity"]
    1.0
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["argmax_clusters", "cluster_metrics", "purity"]


def purity(assignments: np.ndarray, labels: np.ndarray) -> float:
    """Share of images whose cluster's majority class is their own class."""
    if assignments.size == 0:
        raise ValueError("purity needs at least one image")
    _, cluster = np.unique(assignments, return_inverse=True)
    _, label = np.unique(labels, return_inverse=True)
    table = np.zeros((cluster.max() + 1, label.max() + 1), dtype=np.int64)
    np.add.at(table, (cluster, label), 1)
    return float(table.max(axis=1).sum() / assignments.size)


def cluster_metrics(assignments: Tensor, labels: Tensor) -> dict[str, float | int]:
    """NMI, AMI, ARI, clusters used and purity of cluster ``assignments`` vs ``labels``.

    Args:
        assignments: ``[M]`` cluster index of every image (e.g. argmax prototype).
        labels: ``[M]`` true classes.

    Returns:
        ``{"nmi", "ami", "ari", "clusters_used", "purity", "num_images"}``.
    """
    from sklearn.metrics import (
        adjusted_mutual_info_score,
        adjusted_rand_score,
        normalized_mutual_info_score,
    )

    if assignments.ndim != 1 or assignments.shape != labels.shape:
        raise ValueError("assignments and labels must both have shape [M]")
    if assignments.numel() == 0:
        raise ValueError("clustering metrics need at least one image")
    a = assignments.long().numpy()
    y = labels.long().numpy()
    return {
        "nmi": float(normalized_mutual_info_score(y, a)),
        "ami": float(adjusted_mutual_info_score(y, a)),
        "ari": float(adjusted_rand_score(y, a)),
        "clusters_used": int(np.unique(a).size),
        "purity": purity(a, y),
        "num_images": int(a.size),
    }


@torch.no_grad()
def argmax_clusters(logits: Tensor) -> Tensor:
    """The argmax prototype of every row of teacher scores ``[M, K]``."""
    if logits.ndim != 2 or logits.shape[1] == 0:
        raise ValueError(f"teacher logits must be [M, K] with K >= 1 (got {tuple(logits.shape)})")
    return logits.argmax(dim=1)
