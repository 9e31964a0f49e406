"""Frozen-feature extraction for the evaluation protocols.

Three kinds of features come out of a trained method's *teacher* (the EMA
network DINO evaluates):

* ``backbone`` -- the backbone output (:meth:`Method.teacher_features`; DINO's
  kNN and linear protocols use it);
* ``bottleneck`` -- the head's unit-norm bottleneck embedding y, on which the
  prototypes act;
* ``logits`` -- the teacher's prototype scores (:meth:`Method.teacher_logits`),
  whose argmax is an image's cluster.

Example:
    >>> encode = feature_encoder(method, "backbone")  # doctest: +SKIP
    >>> feats, labels = extract_features(encode, dataset, progress=True)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from protossl.core.errors import UserError
from protossl.methods.base import Method

__all__ = ["FEATURE_KINDS", "extract_features", "feature_encoder"]

FEATURE_KINDS = ("backbone", "bottleneck")
Encoder = Callable[[torch.Tensor], torch.Tensor]


def feature_encoder(method: Method, kind: str) -> Encoder:
    """The function mapping a batch of images to ``kind`` features of ``method``'s teacher.

    ``kind`` is one of :data:`FEATURE_KINDS` or ``"logits"``. A method may define
    ``teacher_bottleneck(images)``; otherwise the bottleneck is read from a DINO-style
    ``method.teacher.head.embed``.

    Raises:
        UserError: For an unknown kind, or a method without a bottleneck.
    """
    if kind == "backbone":
        return method.teacher_features
    if kind == "logits":
        return method.teacher_logits
    if kind != "bottleneck":
        raise UserError(f"unknown feature kind '{kind}'; use one of: {', '.join(FEATURE_KINDS)}")
    own = getattr(method, "teacher_bottleneck", None)
    if callable(own):
        return own  # type: ignore[no-any-return]
    head = getattr(getattr(method, "teacher", None), "head", None)
    if head is None or not callable(getattr(head, "embed", None)):
        raise UserError(
            f"method {type(method).__name__} has no head bottleneck to evaluate; "
            "use --features backbone"
        )

    def bottleneck(images: torch.Tensor) -> torch.Tensor:
        return head.embed(method.teacher_features(images))  # type: ignore[no-any-return,operator]

    return bottleneck


@torch.no_grad()
def extract_features(
    encode: Callable[[torch.Tensor], torch.Tensor],
    dataset: Dataset,
    batch_size: int = 256,
    num_workers: int = 0,
    progress: bool = False,
    description: str = "features",
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``encode`` over a labelled dataset in order; returns (features, labels) on CPU.

    Images are moved to ``device`` (default: left where the loader puts them); the
    features come back as float32 on the CPU, in dataset order.
    """
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    features: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    for images, targets in tqdm(loader, desc=description, disable=not progress, leave=False):
        if device is not None:
            images = images.to(device, non_blocking=True)
        features.append(encode(images).float().cpu())
        labels.append(torch.as_tensor(targets))
    if not features:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.long)
    return torch.cat(features), torch.cat(labels).long()
