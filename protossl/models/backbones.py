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
from dataclasses import dataclass, field
from typing import Any

import torch
from timm.models.resnet import BasicBlock, ResNet
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from protossl.core.registry import Registry

# A builder takes the training image size (ViTs pick their patch size from it).
BACKBONES: Registry[Callable[[int], Backbone]] = Registry("backbone")


@dataclass(frozen=True)
class TimmSpec:
    """How timm alone rebuilds a backbone's ``net`` (what ``protossl export`` writes).

    ``timm.create_model(model, **kwargs)``, then, when ``cifar_stem`` is set, the
    ResNet's first convolution replaced by a 3x3 stride-1 one with that many outputs and
    its max-pool removed (no timm keyword builds that stem); ``load_state_dict`` of the
    exported weights then gives the same features.
    """

    model: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    cifar_stem: int = 0  # output channels of the 3x3/1 stem; 0: timm's own stem


class Backbone(nn.Module):
    """A feature extractor with a known output width (and, from timm, its timm spec)."""

    def __init__(self, net: nn.Module, embed_dim: int, timm_spec: TimmSpec | None = None) -> None:
        super().__init__()
        self.net = net
        self.embed_dim = embed_dim
        self.timm_spec = timm_spec

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


class ViTBackbone(Backbone):
    """A timm ViT that also exposes its tokens, with masking for iBOT and MSN.

    ``forward`` returns the class token (as ``Backbone``); :meth:`forward_tokens`
    returns the class token and the patch tokens, optionally with some patches
    replaced by a learned mask token before the position embedding (iBOT's
    masked image modeling) or dropped after it (MSN's patch dropping).

    Example:
        >>> vit = vit_tiny(16)
        >>> mask = torch.zeros(2, 4, 4, dtype=torch.bool); mask[:, 0, :2] = True
        >>> cls, patches = vit.forward_tokens(torch.zeros(2, 3, 16, 16), mask=mask)
        >>> cls.shape, patches.shape
        (torch.Size([2, 96]), torch.Size([2, 16, 96]))
    """

    net: VisionTransformer

    def __init__(
        self, net: VisionTransformer, embed_dim: int, timm_spec: TimmSpec | None = None
    ) -> None:
        super().__init__(net, embed_dim, timm_spec)
        # iBOT's learned embedding of a masked patch (zeros at init, as in iBOT).
        self.mask_token = nn.Parameter(torch.zeros(embed_dim))

    def patch_grid(self, height: int, width: int) -> tuple[int, int]:
        """Token grid (rows, columns) for an image of this size (padding included)."""
        ph, pw = self.net.patch_embed.patch_size
        return -(-height // ph), -(-width // pw)

    def forward_tokens(
        self,
        images: torch.Tensor,
        mask: torch.Tensor | None = None,
        keep: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Class token [B, D] and patch tokens [B, N, D] after the final norm.

        Args:
            images: [B, 3, H, W].
            mask: optional bool [B, rows, cols] (see :meth:`patch_grid`); True
                patches are replaced by the mask token before the position embedding.
            keep: optional long [B, N_keep] indices of the patches to keep (the
                others are dropped after the position embedding); the returned patch
                tokens are then [B, N_keep, D], in the order of ``keep``.
        """
        net = self.net
        x = net.patch_embed(images)  # [B, rows, cols, D] (dynamic_img_size)
        if mask is not None:
            if mask.shape != x.shape[:3]:
                raise ValueError(
                    f"mask must have shape {tuple(x.shape[:3])} (got {tuple(mask.shape)})"
                )
            x = torch.where(mask.unsqueeze(-1), self.mask_token.to(x.dtype), x)
        x = net._pos_embed(x)  # [B, 1 + N, D]
        if keep is not None:
            prefix = net.num_prefix_tokens
            index = keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]) + prefix
            x = torch.cat([x[:, :prefix], torch.gather(x, 1, index)], dim=1)
        x = net.norm(net.blocks(net.norm_pre(net.patch_drop(x))))
        return x[:, 0], x[:, net.num_prefix_tokens :]


def _patch_size(image_size: int) -> int:
    # Aim for a 4x4 token grid on global crops of small images (16 px -> patch 4) and
    # never less than 2 px per patch, so 96/224-sized local crops still give tokens.
    return max(2, image_size // 4) if image_size <= 32 else 16


def _vit(image_size: int, embed_dim: int, depth: int, heads: int) -> ViTBackbone:
    kwargs: dict[str, Any] = {
        "img_size": image_size,
        "patch_size": _patch_size(image_size),
        "embed_dim": embed_dim,
        "depth": depth,
        "num_heads": heads,
        "num_classes": 0,  # return the pooled class token
        "dynamic_img_size": True,  # interpolate position embeddings for local crops
        "dynamic_img_pad": True,
    }
    # timm's registered ViT-S/16 with every size keyword overridden is this same network.
    return ViTBackbone(
        VisionTransformer(**kwargs), embed_dim, TimmSpec("vit_small_patch16_224", kwargs)
    )


@BACKBONES.register("vit_tiny")
def vit_tiny(image_size: int) -> ViTBackbone:
    """A 4-block ViT (width 96, 3 heads): small enough for two CPU cores."""
    return _vit(image_size, embed_dim=96, depth=4, heads=3)


@BACKBONES.register("vit_small")
def vit_small(image_size: int) -> ViTBackbone:
    """ViT-S/16 proportions (width 384, 12 blocks, 6 heads) for real GPUs."""
    return _vit(image_size, embed_dim=384, depth=12, heads=6)


def _small_image_resnet(
    image_size: int, channels: tuple[int, ...], layers: tuple[int, ...]
) -> Backbone:
    kwargs: dict[str, Any] = {
        "layers": list(layers),
        "channels": list(channels),
        "stem_width": channels[0],
        "num_classes": 0,
    }
    net = ResNet(
        BasicBlock,  # type: ignore[arg-type]  # timm annotates the class as an instance
        **kwargs,
    )
    cifar_stem = 0
    if image_size <= 64:
        # CIFAR-style stem: a 7x7/2 convolution and a max-pool would leave a 16 px
        # image with 4x4 maps before the first block.
        stem_out = int(net.conv1.weight.shape[0])  # type: ignore[union-attr,index]
        net.conv1 = nn.Conv2d(3, stem_out, kernel_size=3, stride=1, padding=1, bias=False)  # type: ignore[assignment]
        net.maxpool = nn.Identity()  # type: ignore[assignment]
        cifar_stem = stem_out
    # timm's resnet18 is BasicBlock ResNet; layers/channels/stem_width override its sizes.
    return Backbone(net, channels[-1], TimmSpec("resnet18", kwargs, cifar_stem))


@BACKBONES.register("resnet_tiny")
def resnet_tiny(image_size: int) -> Backbone:
    """A ResNet-10 with widths 32-256: quick on CPU for 16-32 px images."""
    return _small_image_resnet(image_size, channels=(32, 64, 128, 256), layers=(1, 1, 1, 1))


@BACKBONES.register("resnet18")
def resnet18(image_size: int) -> Backbone:
    """ResNet-18 (timm), with a CIFAR-style stem for images up to 64 px."""
    return _small_image_resnet(image_size, channels=(64, 128, 256, 512), layers=(2, 2, 2, 2))


class PlainConvNet(nn.Module):
    """Three 3x3 convolutions with BatchNorm and ReLU, then global average pooling.

    ``conv(3 -> c1) -> conv(c1 -> c2, stride 2) -> conv(c2 -> c2)``; no residual
    connections and no zero-initialized BatchNorm, so every layer changes the
    features from the first step (see docs/recipe.md for why that matters for
    DINO on tiny images).
    """

    def __init__(self, widths: tuple[int, int] = (64, 128)) -> None:
        super().__init__()
        self.widths = widths
        c1, c2 = widths
        self.features = nn.Sequential(
            *_conv_bn_relu(3, c1, stride=1),
            *_conv_bn_relu(c1, c2, stride=2),
            *_conv_bn_relu(c2, c2, stride=1),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images).mean(dim=(-2, -1))


def _conv_bn_relu(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]


@BACKBONES.register("cnn_tiny")
def cnn_tiny(image_size: int) -> Backbone:
    """A plain 3-layer CNN (64 -> 128/2 -> 128, BatchNorm + ReLU, average pool).

    The backbone an independent lightly-built DINO learns with on ``digits`` on two
    CPU cores (docs/recipe.md); any image size >= 2 px.

    Example:
        >>> cnn_tiny(8)(torch.zeros(2, 3, 8, 8)).shape
        torch.Size([2, 128])
    """
    del image_size  # fully convolutional
    return Backbone(PlainConvNet((64, 128)), 128)


def build_backbone(name: str, image_size: int) -> Backbone:
    """Build a registered backbone by name, or raise a UserError listing the names."""
    return BACKBONES.lookup(name)(image_size)
