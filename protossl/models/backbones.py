"""Backbones from timm, sized for small images and small machines.

Each builder returns a module mapping images ``[B, 3, H, W]`` to embeddings
``[B, D]`` and exposes ``embed_dim``. The ViTs interpolate their position
embeddings (timm's ``dynamic_img_size``), so DINO's smaller local crops go
through the same network as the global crops (Caron et al. 2021, multi-crop).

Example:
    >>> net = build_backbone("vit_tiny", image_size=16)
    >>> net(torch.zeros(2, 3, 16, 16)).shape, net(torch.zeros(2, 3, 8, 8)).shape
    (torch.Size([2, 96]), torch.Size([2, 96]))
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from timm.models.resnet import BasicBlock, ResNet
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from protossl.errors import UserError


class Backbone(nn.Module):
    """A feature extractor with a known output width."""

    def __init__(self, net: nn.Module, embed_dim: int) -> None:
        super().__init__()
        self.net = net
        self.embed_dim = embed_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


def _patch_size(image_size: int) -> int:
    # Aim for a 4x4 token grid on global crops of small images (16 px -> patch 4) and
    # never less than 2 px per patch, so 96/224-sized local crops still give tokens.
    return max(2, image_size // 4) if image_size <= 32 else 16


def _vit(image_size: int, embed_dim: int, depth: int, heads: int) -> Backbone:
    net = VisionTransformer(
        img_size=image_size,
        patch_size=_patch_size(image_size),
        embed_dim=embed_dim,
        depth=depth,
        num_heads=heads,
        num_classes=0,  # return the pooled class token
        dynamic_img_size=True,  # interpolate position embeddings for local crops
        dynamic_img_pad=True,
    )
    return Backbone(net, embed_dim)


def vit_tiny(image_size: int) -> Backbone:
    """A 4-block ViT (width 96, 3 heads): small enough for two CPU cores."""
    return _vit(image_size, embed_dim=96, depth=4, heads=3)


def vit_small(image_size: int) -> Backbone:
    """ViT-S/16 proportions (width 384, 12 blocks, 6 heads) for real GPUs."""
    return _vit(image_size, embed_dim=384, depth=12, heads=6)


def _small_image_resnet(
    image_size: int, channels: tuple[int, ...], layers: tuple[int, ...]
) -> Backbone:
    net = ResNet(
        BasicBlock,  # type: ignore[arg-type]  # timm annotates the class as an instance
        layers,
        num_classes=0,
        channels=channels,
        stem_width=channels[0],
    )
    if image_size <= 64:
        # CIFAR-style stem: a 7x7/2 convolution and a max-pool would leave a 16 px
        # image with 4x4 maps before the first block.
        stem_out = int(net.conv1.weight.shape[0])  # type: ignore[union-attr,index]
        net.conv1 = nn.Conv2d(3, stem_out, kernel_size=3, stride=1, padding=1, bias=False)  # type: ignore[assignment]
        net.maxpool = nn.Identity()  # type: ignore[assignment]
    return Backbone(net, channels[-1])


def resnet_tiny(image_size: int) -> Backbone:
    """A ResNet-10 with widths 32-256: quick on CPU for 16-32 px images."""
    return _small_image_resnet(image_size, channels=(32, 64, 128, 256), layers=(1, 1, 1, 1))


def resnet18(image_size: int) -> Backbone:
    """ResNet-18 (timm), with a CIFAR-style stem for images up to 64 px."""
    return _small_image_resnet(image_size, channels=(64, 128, 256, 512), layers=(2, 2, 2, 2))


BACKBONES: dict[str, Callable[[int], Backbone]] = {
    "vit_tiny": vit_tiny,
    "vit_small": vit_small,
    "resnet_tiny": resnet_tiny,
    "resnet18": resnet18,
}


def build_backbone(name: str, image_size: int) -> Backbone:
    """Build a registered backbone by name, or raise a UserError listing the names."""
    if name not in BACKBONES:
        raise UserError(
            f"unknown backbone '{name}'; known backbones: {', '.join(sorted(BACKBONES))}"
        )
    return BACKBONES[name](image_size)
