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
