"""Released ViT backbones (DINO, iBOT, DINOv2 layouts) read into timm ViTs.

The files are built here with the key names the official code writes (no download):
DINO / iBOT training checkpoints (``teacher`` / ``student``, ``module.`` and
``backbone.`` prefixes, optimizer and ``args`` beside them), a backbone-only file, and
DINOv2 training (``model.teacher.backbone.blocks.C.I``) and hub files (bare keys,
``register_tokens``, LayerScale). DINOv2's forward is written below from its formula
(Oquab et al. 2024, registers: Darcet et al. 2024), independently of timm.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from protossl.core.errors import UserError
from protossl.models.released import load_released_backbone

WIDTH, HEADS, DEPTH, PATCH, GRID, HIDDEN = 128, 2, 3, 4, 4, 256


def dinov2_weights(seed: int, registers: int) -> dict[str, torch.Tensor]:
    """Random weights in DINOv2's own key names (hub layout: bare, no block chunks)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float = 0.1) -> torch.Tensor:
        return scale * torch.randn(*shape, generator=g, dtype=torch.float64)

    w: dict[str, torch.Tensor] = {
        "cls_token": rand(1, 1, WIDTH),
        "pos_embed": rand(1, 1 + GRID * GRID, WIDTH),
        "mask_token": rand(1, WIDTH),
        "patch_embed.proj.weight": rand(WIDTH, 3, PATCH, PATCH),
        "patch_embed.proj.bias": rand(WIDTH),
        "norm.weight": 1 + rand(WIDTH),
        "norm.bias": rand(WIDTH),
    }
    if registers:
        w["register_tokens"] = rand(1, registers, WIDTH)
    for i in range(DEPTH):
        b = f"blocks.{i}."
        w |= {
            b + "norm1.weight": 1 + rand(WIDTH),
            b + "norm1.bias": rand(WIDTH),
            b + "attn.qkv.weight": rand(3 * WIDTH, WIDTH),
            b + "attn.qkv.bias": rand(3 * WIDTH),
            b + "attn.proj.weight": rand(WIDTH, WIDTH),
            b + "attn.proj.bias": rand(WIDTH),
            b + "ls1.gamma": 1 + rand(WIDTH),
            b + "norm2.weight": 1 + rand(WIDTH),
            b + "norm2.bias": rand(WIDTH),
            b + "mlp.fc1.weight": rand(HIDDEN, WIDTH),
            b + "mlp.fc1.bias": rand(HIDDEN),
            b + "mlp.fc2.weight": rand(WIDTH, HIDDEN),
            b + "mlp.fc2.bias": rand(WIDTH),
            b + "ls2.gamma": 1 + rand(WIDTH),
        }
    return w


def dinov2_forward(w: dict[str, torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    """DINOv2's class token: patches, + position (class token included), then registers
    inserted after the class token, pre-norm blocks with LayerScale, final norm."""
    x = F.conv2d(images, w["patch_embed.proj.weight"], w["patch_embed.proj.bias"], stride=PATCH)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([w["cls_token"].expand(len(x), -1, -1), x], dim=1) + w["pos_embed"]
    if "register_tokens" in w:
        regs = w["register_tokens"].expand(len(x), -1, -1)
        x = torch.cat([x[:, :1], regs, x[:, 1:]], dim=1)
    dh = WIDTH // HEADS
    for i in range(DEPTH):
        b = f"blocks.{i}."
        h = F.layer_norm(x, (WIDTH,), w[b + "norm1.weight"], w[b + "norm1.bias"], eps=1e-6)
        qkv = F.linear(h, w[b + "attn.qkv.weight"], w[b + "attn.qkv.bias"])
        q, k, v = qkv.reshape(len(x), -1, 3, HEADS, dh).permute(2, 0, 3, 1, 4)
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh), dim=-1)
        h = (attn @ v).transpose(1, 2).reshape(len(x), -1, WIDTH)
        x = x + w[b + "ls1.gamma"] * F.linear(h, w[b + "attn.proj.weight"], w[b + "attn.proj.bias"])
        h = F.layer_norm(x, (WIDTH,), w[b + "norm2.weight"], w[b + "norm2.bias"], eps=1e-6)
        h = F.linear(
            F.gelu(F.linear(h, w[b + "mlp.fc1.weight"], w[b + "mlp.fc1.bias"])),
            w[b + "mlp.fc2.weight"],
            w[b + "mlp.fc2.bias"],
        )
        x = x + w[b + "ls2.gamma"] * h
    return F.layer_norm(x, (WIDTH,), w["norm.weight"], w["norm.bias"], eps=1e-6)[:, 0]


def dino_weights(seed: int) -> dict[str, torch.Tensor]:
    """DINO / iBOT ViT key names: DINOv2's without LayerScale, registers or mask token."""
    return {
        k: v
        for k, v in dinov2_weights(seed, registers=0).items()
        if ".ls1." not in k and ".ls2." not in k and k != "mask_token"
    }


def dino_forward(w: dict[str, torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    ones = {k: v for k, v in w.items()}
    for i in range(DEPTH):
        ones[f"blocks.{i}.ls1.gamma"] = torch.ones(WIDTH, dtype=torch.float64)
        ones[f"blocks.{i}.ls2.gamma"] = torch.ones(WIDTH, dtype=torch.float64)
    return dinov2_forward(ones, images)


def chunked(w: dict[str, torch.Tensor], per_chunk: int) -> dict[str, torch.Tensor]:
    """DINOv2's FSDP block chunks: block I of chunk C is ``blocks.C.I``."""
    out = {}
    for k, v in w.items():
        if k.startswith("blocks."):
            i = int(k.split(".")[1])
            k = k.replace(f"blocks.{i}.", f"blocks.{i // per_chunk}.{i}.", 1)
        out[k] = v
    return out


IMAGES = torch.randn(2, 3, GRID * PATCH, GRID * PATCH, generator=torch.Generator().manual_seed(9))


def features(file: Path, branch: str = "teacher") -> torch.Tensor:
    released = load_released_backbone(file, branch=branch)
    return released.backbone.double()(IMAGES.double()).detach()


def assert_close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    assert (a - b).abs().max().item() < 1e-10


def prefixed(w: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in w.items()}


@pytest.mark.parametrize("wrapper", ["module.", ""])
def test_dino_and_ibot_training_checkpoints(tmp_path: Path, wrapper: str) -> None:
    teacher, student = dino_weights(1), dino_weights(2)
    extra = {"masked_embed": torch.zeros(1, WIDTH, dtype=torch.float64)}  # iBOT's
    state = {
        "student": prefixed(student | extra, wrapper + "backbone.")
        | {wrapper + "head.last_layer.weight_g": torch.ones(8, 1)},
        "teacher": prefixed(teacher | extra, "backbone.") | {"head.mlp.0.weight": torch.ones(4, 4)},
        "optimizer": {"state": {}, "param_groups": []},
        "epoch": 3,
        "args": argparse.Namespace(arch="vit_small", patch_size=PATCH),
    }
    file = tmp_path / "checkpoint.pth"
    torch.save(state, file)
    released = load_released_backbone(file)
    assert (released.layout, released.prefix) == ("dino", "teacher.backbone.")
    assert released.image_size == GRID * PATCH and released.ignored == ("masked_embed",)
    assert_close(features(file), dino_forward(teacher, IMAGES.double()))
    assert_close(features(file, "student"), dino_forward(student, IMAGES.double()))


def test_backbone_only_file(tmp_path: Path) -> None:
    w = dino_weights(3)
    torch.save(w, tmp_path / "dino_deitsmall_pretrain.pth")
    released = load_released_backbone(tmp_path / "dino_deitsmall_pretrain.pth")
    assert released.prefix == "" and released.backbone.embed_dim == WIDTH
    assert len(released.backbone.net.blocks) == DEPTH
    assert released.backbone.net.blocks[0].attn.num_heads == HEADS
    assert_close(
        features(tmp_path / "dino_deitsmall_pretrain.pth"), dino_forward(w, IMAGES.double())
    )


@pytest.mark.parametrize("registers", [0, 4])
def test_dinov2_hub_and_training_checkpoints(tmp_path: Path, registers: int) -> None:
    w = dinov2_weights(4, registers)
    reference = dinov2_forward(w, IMAGES.double())
    torch.save(w, tmp_path / "hub.pth")
    released = load_released_backbone(tmp_path / "hub.pth")
    assert released.layout == "dinov2" and released.ignored == ("mask_token",)
    assert_close(features(tmp_path / "hub.pth"), reference)
    student = dinov2_weights(5, registers)
    training = {
        "model": prefixed(chunked(w, 2), "teacher.backbone.")
        | prefixed(chunked(student, 2), "student.backbone.")
        | {"teacher.dino_head.last_layer.weight": torch.ones(8, 4)},
        "iteration": 10,
    }
    torch.save(training, tmp_path / "model_0000010.rank_0.pth")
    assert_close(features(tmp_path / "model_0000010.rank_0.pth"), reference)
    assert_close(
        features(tmp_path / "model_0000010.rank_0.pth", "student"),
        dinov2_forward(student, IMAGES.double()),
    )


def test_float32_file_and_other_image_sizes(tmp_path: Path) -> None:
    # Published files are float32: the ViT is float32, within float32 rounding of the
    # reference, and other sizes go through timm's interpolated position embedding.
    w = {k: v.float() for k, v in dinov2_weights(6, registers=4).items()}
    torch.save(w, tmp_path / "hub.pth")
    net = load_released_backbone(tmp_path / "hub.pth").backbone
    reference = dinov2_forward({k: v.double() for k, v in w.items()}, IMAGES.double())
    assert (net(IMAGES).double() - reference).abs().max().item() < 1e-4
    assert net(torch.randn(1, 3, 28, 28)).shape == (1, WIDTH)


def test_extra_tensors_are_reported_and_ignored(tmp_path: Path) -> None:
    w = dino_weights(7) | {"fc_extra.weight": torch.ones(2, 2, dtype=torch.float64)}
    torch.save(w, tmp_path / "extra.pth")
    released = load_released_backbone(tmp_path / "extra.pth")
    assert released.ignored == ("fc_extra.weight",)
    assert_close(features(tmp_path / "extra.pth"), dino_forward(dino_weights(7), IMAGES.double()))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda w: w.pop("norm.weight"), "lacks tensors a timm ViT needs: norm.weight"),
        (lambda w: w.pop("pos_embed"), "not a DINO/iBOT/DINOv2 ViT layout"),
        (lambda w: w.pop("patch_embed.proj.weight"), "no released ViT backbone"),
        (lambda w: w.update({"pos_embed": torch.zeros(1, 1 + 15, WIDTH)}), "not a square grid"),
        (lambda w: w.update({"norm.bias": torch.zeros(WIDTH + 1)}), "does not fit a timm ViT"),
    ],
)
def test_unknown_layouts_are_one_clear_error(tmp_path: Path, change, message: str) -> None:
    w = dino_weights(8)
    change(w)
    torch.save(w, tmp_path / "bad.pth")
    with pytest.raises(UserError, match=message) as info:
        load_released_backbone(tmp_path / "bad.pth")
    assert "\n" not in str(info.value)


def test_two_branches_need_a_choice_and_unknown_branch(tmp_path: Path) -> None:
    torch.save(
        {"ema": prefixed(dino_weights(1), "backbone."), "online": dino_weights(2)},
        tmp_path / "two.pth",
    )
    with pytest.raises(UserError, match="no single teacher backbone"):
        load_released_backbone(tmp_path / "two.pth")
    with pytest.raises(UserError, match="unknown branch"):
        load_released_backbone(tmp_path / "two.pth", branch="ema")


def test_eval_runs_the_feature_protocols_on_a_released_backbone(tmp_path: Path) -> None:
    from protossl.evaluation.run_eval import evaluate_run

    weights = {k: v.float() for k, v in dino_weights(10).items()}
    torch.save({"teacher": prefixed(weights, "backbone."), "epoch": 1}, tmp_path / "dino.pth")
    result = evaluate_run(tmp_path / "dino.pth", "digits", None, "knn", cache=False)
    # Digits are 8 px; the file's native size is GRID * PATCH = 16 px.
    top1 = result["results"]["knn_top1@20"]
    assert 0.1 < top1 <= 1.0  # ten classes; any real feature beats chance
    small = evaluate_run(tmp_path / "dino.pth", "digits", None, "knn", cache=False, image_size=8)
    assert small["results"]["knn_top1@20"] != top1  # another input size, other features
    with pytest.raises(UserError, match="released backbone without protossl's head: cluster"):
        evaluate_run(tmp_path / "dino.pth", "digits", None, "knn,cluster", cache=False)


def test_eval_cli_on_an_unknown_file_is_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    torch.save({"a": torch.zeros(1)}, tmp_path / "foreign.pt")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "protossl",
            "eval",
            str(tmp_path / "foreign.pt"),
            "--data",
            "digits",
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "not a protossl checkpoint, and no released ViT backbone" in out.stderr


def test_eval_cli_on_a_released_backbone(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    weights = {k: v.float() for k, v in dino_weights(11).items()}
    torch.save(weights, tmp_path / "dino_deitsmall_pretrain.pth")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "protossl",
            "eval",
            str(tmp_path / "dino_deitsmall_pretrain.pth"),
            "--data",
            "digits",
            "--image-size",
            "8",
            "--no-cache",
            "--json",
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert 0.1 < result["results"]["knn_top1@20"] <= 1.0
