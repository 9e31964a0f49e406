"""Backbones, the DINO projection head and prototype layers."""

from protossl.models.backbones import BACKBONES, Backbone, ViTBackbone, build_backbone
from protossl.models.head import DINOHead, PrototypeLayer

__all__ = ["BACKBONES", "Backbone", "ViTBackbone", "DINOHead", "PrototypeLayer", "build_backbone"]
