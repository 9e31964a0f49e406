"""protossl's DINO trainer against an independent DINO built from lightly's modules.

A short version of ``benchmarks/parity_lightly.py``: same backbone and initial weights,
same crops, float64; the reference is the official DINO loop (schedules, parameter
groups, per-parameter clipping, last-layer freezing) around lightly's ``DINOLoss``,
``DINOProjectionHead`` and ``update_momentum``. lightly is installed by the Makefile
(``pip install --no-deps lightly``): it must be there, not skipped.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

PARITY = Path(__file__).resolve().parents[2] / "benchmarks" / "parity_lightly.py"


def _parity_module():
    spec = importlib.util.spec_from_file_location("parity_lightly", PARITY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


TINY = [
    "data.spec=digits@lt=100",
    "data.batch_size=32",
    "model.num_prototypes=64",
    "model.head_hidden_dim=64",
    "model.bottleneck_dim=16",
    "optim.epochs=2",
    "optim.warmup_epochs=1",
    "num_threads=1",
]


@pytest.mark.parametrize(
    "extra",
    [
        [],  # AdamW, centering, frozen last layer in epoch 0
        ["optim.optimizer=sgd", "optim.lr=0.1", "model.use_bn_in_head=true"],
        ["data.num_local_crops=2", "objective.teacher_temp=0.07", "optim.clip_grad=0"],
    ],
)
def test_trainer_matches_lightly_reference_in_float64(extra: list[str]) -> None:
    torch.set_num_threads(1)
    parity = _parity_module()
    result = parity.run(steps=16, dtype=torch.float64, overrides=[*TINY, *extra])
    ours, theirs = result["ours"], result["theirs"]
    assert len(ours) == len(theirs) == 16  # 2 epochs of 8 steps: the freeze ends in between
    # lightly keeps the teacher temperature as a float32 tensor (0.04 -> 0.039999999):
    # that, and nothing else, separates the two by ~1e-8 relative.
    assert math.isclose(ours[0], theirs[0], rel_tol=1e-6)
    for a, b in zip(ours, theirs, strict=True):
        assert math.isclose(a, b, rel_tol=1e-6), (ours, theirs)
    # The losses move: a trainer that did nothing could not match by accident.
    assert max(ours) - min(ours) > 1e-3
