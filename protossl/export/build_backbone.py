"""Rebuild a backbone exported by ``protossl export`` with torch and timm only.

This file is copied next to the exported weights and imports nothing of protossl, so
the backbone can be used where protossl is not installed. ``backbone.json`` names the
architecture: a timm model and its keyword arguments (``timm.create_model``), with the
small-image ResNet stem protossl uses where timm has no keyword for it; or, for
``cnn_tiny``, which is not a timm model, the plain three-layer CNN defined below.

Example (in the export folder)::

    from build_backbone import load_backbone
    net = load_backbone(".")  # nn.Module: images [B, 3, H, W] -> features [B, D]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

__all__ = ["PlainConvNet", "build_from_spec", "load_backbone"]


class PlainConvNet(nn.Module):
    """conv(3 -> c1) -> conv(c1 -> c2, stride 2) -> conv(c2 -> c2), each 3x3 with
    BatchNorm and ReLU, then global average pooling (protossl's ``cnn_tiny``)."""

    def __init__(self, widths: tuple[int, int] = (64, 128)) -> None:
        super().__init__()
        c1, c2 = widths
        layers: list[nn.Module] = []
        for c_in, c_out, stride in ((3, c1, 1), (c1, c2, 2), (c2, c2, 1)):
            layers += [
                nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
        self.features = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images).mean(dim=(-2, -1))


def build_from_spec(spec: dict[str, Any]) -> nn.Module:
    """The untrained network that ``backbone.json``'s ``spec`` describes."""
    if spec.get("timm") is not None:
        import timm

        net: nn.Module = timm.create_model(
            spec["timm"]["model"], pretrained=False, **spec["timm"]["kwargs"]
        )
        stem = int(spec["timm"].get("cifar_stem", 0))
        if stem:  # 3x3 stride-1 stem, no max-pool: small images keep their resolution
            net.conv1 = nn.Conv2d(3, stem, kernel_size=3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        return net
    if spec.get("plain_cnn") is not None:
        widths = spec["plain_cnn"]["widths"]
        return PlainConvNet((int(widths[0]), int(widths[1])))
    raise ValueError("backbone.json names neither a timm model nor a plain CNN")


def load_backbone(folder: str | Path = ".") -> nn.Module:
    """Build the exported backbone and load its weights, in evaluation mode."""
    folder = Path(folder)
    spec = json.loads((folder / "backbone.json").read_text(encoding="utf-8"))
    net = build_from_spec(spec)
    net.load_state_dict(load_file(str(folder / "backbone.safetensors")))
    return net.eval()
