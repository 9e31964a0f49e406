"""Every bundled preset: listed, builds, lowers its loss on a fixed batch, trains via the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from protossl.cli import main
from protossl.config import Config, available_presets, load_config
from protossl.methods import StepContext, build_method

# Issue 3: the presets that must ship (each trains on digits with `train --preset NAME`).
REQUIRED = [
    "dino",
    "dino-kp",
    "dino-vmf",
    "dino-vmf-kp",
    "ibot",
    "ibot-kp",
    "ibot-vmf",
    "ibot-vmf-kp",
    "msn",
    "msn-kp",
    "pmsn",
    "swav",
    "swav-kp",
]

# Tiny but faithful: every preset keeps its method, target and regularizers; only the
# sizes shrink (a ViT so that iBOT's and MSN's masking apply).
TINY = [
    "model.backbone=vit_tiny",
    "model.num_prototypes=32",
    "model.head_hidden_dim=32",
    "model.bottleneck_dim=16",
    "data.num_local_crops=2",
    "swav.freeze_prototypes_steps=0",
]


def tiny(preset: str) -> Config:
    return load_config(preset, overrides=TINY)


def test_all_required_presets_are_bundled() -> None:
    missing = sorted(set(REQUIRED) - set(available_presets()))
    assert not missing, f"presets missing: {missing}"


def test_kp_presets_differ_from_their_base_only_by_koleo_proto() -> None:
    # A fair comparison: "-kp" changes the prototype regularizer and nothing else.
    for name in [p for p in REQUIRED if p.endswith("-kp")]:
        base, kp = load_config(name[: -len("-kp")]), load_config(name)
        assert kp.objective.prototype_regularizer == "koleo"
        assert base.objective.prototype_regularizer == "none"
        kp.objective.prototype_regularizer = base.objective.prototype_regularizer
        kp.objective.regularizer_weight = base.objective.regularizer_weight
        assert kp == base, name


@pytest.mark.parametrize("preset", REQUIRED)
def test_preset_lowers_its_loss_on_a_fixed_batch(preset: str) -> None:
    torch.manual_seed(0)
    cfg = tiny(preset)
    method = build_method(cfg)
    gen = torch.Generator().manual_seed(1)
    crops = [torch.randn(8, 3, 16, 16, generator=gen) for _ in range(2)] + [
        torch.randn(8, 3, 8, 8, generator=gen) for _ in range(2)
    ]
    params = [p for p in method.student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    losses = []
    for step in range(8):
        context = StepContext(step=step, epoch=0, steps_per_epoch=100, total_steps=100)
        out = method.training_step(crops, cfg.objective.teacher_temp, context)
        assert math.isfinite(out.terms["loss"]), (preset, step, out.terms)
        losses.append(out.terms["loss"])
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        method.update_teacher(0.9)
    assert losses[-1] < losses[0], (preset, losses)


@pytest.mark.parametrize("preset", REQUIRED)
def test_preset_trains_on_digits_from_the_cli(tmp_path: Path, preset: str) -> None:
    out = tmp_path / preset
    code = main(
        [
            "train",
            "--preset",
            preset,
            "--out",
            str(out),
            *[f"--set={o}" for o in TINY],
            "--set=data.batch_size=64",
            "--max-steps=2",
            "--set=monitor.monitor_samples=32",
            "--set=monitor.eval_knn=false",
        ]
    )
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["finished"]
    assert 1 <= summary["M"] <= 32
