"""Backbones, the DINO projection head and prototype layers."""

from protossl.models.backbones import BACKBONES, build_backbone
from protossl.models.head import DINOHead, PrototypeLayer

__all__ = ["BACKBONES", "DINOHead", "PrototypeLayer", "build_backbone"]
