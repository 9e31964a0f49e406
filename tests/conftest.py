"""Shared test set-up: the ``gpu`` marker skips where no CUDA device is present.

Every other test runs everywhere, CI included; ``slow`` only labels the long ones
(``pytest -m "not slow"`` for a quick local pass).
"""

from __future__ import annotations

import pytest
import torch


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# The tiny CNN run most trainer-level tests start from: digits at 8 px, one local crop, a
# 3-layer CNN, no kNN during training, one torch thread. A test states only what differs
# (its K, batch, epochs), so its reference numbers stay its own.
TINY_CNN: dict[str, object] = {
    "data.spec": "digits@lt=100",  # 354 training images
    "data.image_size": 8,
    "data.num_local_crops": 1,
    "model.backbone": "cnn_tiny",
    "monitor.eval_knn": "false",
    "num_threads": 1,
}


def tiny_overrides(**changes: object) -> list[str]:
    """``--set`` items: :data:`TINY_CNN` updated with ``changes`` (dots written as ``__``).

    Example: ``tiny_overrides(model__num_prototypes=16, data__batch_size=64)``.
    """
    merged = dict(TINY_CNN)
    merged.update({key.replace("__", "."): value for key, value in changes.items()})
    return [f"{key}={value}" for key, value in merged.items()]
