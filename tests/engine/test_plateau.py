"""Stuck-run detection: the plateau detector, the monitor's new values, a collapsing run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from protossl.config import Config, load_config
from protossl.engine.monitor import CollapseMonitor
from protossl.engine.plateau import PlateauDetector
from protossl.engine.trainer import Trainer
from protossl.methods import build_method

torch.set_num_threads(1)

LN_32 = math.log(32)

TINY = [
    # digits@lt=100: 354 training images, 11 steps of 32 per epoch; 8-px images and a
    # 3-layer CNN keep an epoch well under a second on one core.
    "data.spec=digits@lt=100",
    "data.image_size=8",
    "data.local_size=4",
    "data.batch_size=32",
    "data.num_local_crops=1",
    "model.backbone=cnn_tiny",
    "model.num_prototypes=32",
    "model.head_hidden_dim=32",
    "model.bottleneck_dim=16",
    "monitor.monitor_samples=64",
    "monitor.eval_knn=false",
]


def tiny_config(*extra: str) -> Config:
    return load_config("dino", overrides=[*TINY, *extra])


def record(step: int, loss: float, cosine: float, **extra: float) -> dict[str, float]:
    return {"step": step, "loss": loss, "K": 32, "embedding_mean_cosine": cosine, **extra}


# ---------------------------------------------------------------- PlateauDetector


def test_warns_once_at_the_plateau_after_warmup() -> None:
    detector = PlateauDetector(warmup_steps=100)
    assert detector.observe(record(50, LN_32, 0.999)) is None  # still warming up
    assert not detector.warned
    message = detector.observe(record(100, LN_32 * 1.005, 0.5))
    assert message is not None and detector.warned
    assert "\n" not in message
    assert f"within 1% of ln K = {LN_32:.4f}" in message and "docs/recipe.md" in message
    assert detector.observe(record(110, LN_32, 0.999)) is None  # never again


def test_embedding_cosine_alone_triggers_and_is_named() -> None:
    message = PlateauDetector(warmup_steps=0).observe(record(5, 0.6 * LN_32, 0.995))
    assert message is not None
    assert "mean cosine 0.995" in message and "ln K" not in message


def test_no_warning_away_from_the_plateau() -> None:
    detector = PlateauDetector(warmup_steps=100)
    for step in range(100, 2000, 100):
        assert detector.observe(record(step, 0.6 * LN_32, 0.5)) is None
        assert detector.observe(record(step, LN_32 * 1.02, 0.99)) is None  # just outside
    assert not detector.warned


def test_nan_values_are_ignored() -> None:
    detector = PlateauDetector(warmup_steps=0)
    assert detector.observe(record(10, math.nan, math.nan)) is None
    assert detector.observe({"step": 20, "loss": LN_32, "K": 32}) is not None  # no cosine key
    detector = PlateauDetector(warmup_steps=0)
    assert detector.observe(record(10, math.nan, 0.999)) is not None  # the cosine still counts


def test_only_once_over_many_records() -> None:
    detector = PlateauDetector(warmup_steps=100)
    messages = [detector.observe(record(step, LN_32, 0.999)) for step in range(0, 10_000, 10)]
    assert sum(m is not None for m in messages) == 1
    assert messages.index(next(m for m in messages if m is not None)) == 10  # step 100


def test_cross_entropy_is_preferred_to_the_regularized_loss() -> None:
    # KoLeo-proto shifts the total loss; the cross-entropy is what sits at ln K.
    stuck = record(200, LN_32 - 0.4, 0.5, cross_entropy=LN_32, target_entropy=3.46)
    message = PlateauDetector().observe(stuck)
    assert message is not None and "cross-entropy 3.4657" in message
    assert "teacher target entropy 3.4600 nats" in message


def test_healthy_run_records_never_warn() -> None:
    detector = PlateauDetector(warmup_steps=100)
    for epoch in range(50):
        loss = LN_32 * (0.9 - 0.01 * epoch)  # falling well below ln K
        assert detector.observe(record(11 * (epoch + 1), loss, 0.3, target_entropy=2.0)) is None
    assert not detector.warned


# ---------------------------------------------------------------- monitor values


@pytest.fixture(scope="module")
def method() -> nn.Module:
    torch.manual_seed(0)
    dino = build_method(tiny_config())
    with torch.no_grad():  # a non-trivial center, so the targets are not a plain softmax
        dino.target_builder.center.copy_(0.3 * torch.randn_like(dino.target_builder.center))
    return dino


def test_embedding_mean_cosine_matches_brute_force(method: nn.Module) -> None:
    images = torch.randn(10, 3, 8, 8)
    method.train()
    stats = CollapseMonitor(images, batch_size=4).measure(method)  # 3 batches
    assert method.training  # mode restored
    method.eval()
    with torch.no_grad():
        y = method.teacher.head.embed(method.teacher.backbone(images))
        y = F.normalize(y.double(), dim=-1)
        gram = y @ y.T
        off_diagonal = gram[~torch.eye(10, dtype=torch.bool)]
    method.train()
    assert stats["embedding_mean_cosine"] == pytest.approx(float(off_diagonal.mean()), abs=1e-6)


def test_target_entropy_matches_softmax_entropy_without_side_effects(method: nn.Module) -> None:
    images = torch.randn(12, 3, 8, 8)
    center = method.target_builder.center.clone()
    stats = CollapseMonitor(images, batch_size=5).measure(method)
    assert torch.equal(method.target_builder.center, center)  # update() was not called
    method.eval()
    with torch.no_grad():
        logits = method.teacher.head(method.teacher.backbone(images)).double()
    method.train()
    scaled = (logits - center.double()) / method.teacher_temp
    p = torch.softmax(scaled, dim=-1)
    reference = float(-(p * torch.log_softmax(scaled, dim=-1)).sum(dim=-1).mean())
    assert stats["target_entropy"] == pytest.approx(reference, abs=1e-5)
    assert stats["log_K"] == pytest.approx(LN_32)
    assert 0 < stats["target_entropy"] < LN_32


class _HeadWithoutEmbed(nn.Module):
    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.inner = head
        self.prototypes = head.prototypes

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.inner(features)


def test_nan_without_head_embed_or_target_builder() -> None:
    torch.manual_seed(0)
    dino = build_method(tiny_config())
    dino.teacher.head = _HeadWithoutEmbed(dino.teacher.head)
    del dino.target_builder
    stats = CollapseMonitor(torch.randn(6, 3, 8, 8)).measure(dino)
    assert math.isnan(stats["embedding_mean_cosine"]) and math.isnan(stats["target_entropy"])
    assert stats["K"] == 32 and stats["log_K"] == pytest.approx(LN_32)


# ---------------------------------------------------------------- end to end


def test_a_run_forced_onto_the_plateau_warns_exactly_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Teacher temperature 1 throughout: centering with no sharpening, targets uniform.
    cfg = tiny_config(
        "optim.epochs=3",
        "optim.lr=0.05",
        "optim.warmup_epochs=0",
        "optim.freeze_last_layer_epochs=0",
        "objective.teacher_temp=1.0",
        "objective.warmup_teacher_temp=1.0",
    )
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    trainer.plateau = PlateauDetector(warmup_steps=1)
    trainer.fit()
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("warning: step 11: the run is stuck on the uniform plateau")
    rows = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert len(rows) == 3
    for row in rows:
        assert row["embedding_mean_cosine"] > 0.99
        assert row["log_K"] == pytest.approx(LN_32)
        assert LN_32 - 0.05 < row["target_entropy"] <= LN_32 + 1e-9  # nearly uniform
        assert "plateau_warning" not in row
