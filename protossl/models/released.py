"""Released ViT backbones (official DINO, iBOT, DINOv2 files) as timm ViTs.

A local checkpoint is read code-free (``torch.load(weights_only=True)``) and its backbone
is found wherever the official code put it: DINO's and iBOT's training checkpoints
(``teacher`` / ``student`` dictionaries with ``module.`` and ``backbone.`` prefixes, Caron
et al. 2021; Zhou et al. 2022), their released backbone-only files (bare keys), DINOv2's
training checkpoints (``teacher`` / ``student`` with ``backbone.`` keys, chunked blocks
``blocks.C.I``) and its hub weights (bare keys, ``register_tokens``, LayerScale
``ls1.gamma``; Oquab et al. 2024; registers: Darcet et al. 2024). The architecture is
read from the tensors: patch size and width from ``patch_embed.proj.weight``, depth from
the block indices, MLP ratio from ``fc1``, register tokens and LayerScale from their keys,
the native grid from ``pos_embed``; the number of heads is width / 64, the head width of
every published DINO, iBOT and DINOv2 ViT (no tensor records it).

DINOv2 adds its position embedding before inserting the registers, and to the class
token too; timm's ``no_embed_class`` ViT adds it to the patches only, so the class
token's position embedding is folded into the class token (exact). At the native grid the
features equal the official forward; at other sizes timm's bicubic interpolation of the
position embedding differs slightly from the official one.

Example:
    >>> import tempfile, pathlib
    >>> net = VisionTransformer(**_vit_kwargs(4, 64, 1, 256, 4, 0, False, True))
    >>> file = pathlib.Path(tempfile.mkdtemp()) / "dino_vit.pth"
    >>> torch.save({"teacher": {f"backbone.{k}": v for k, v in net.state_dict().items()}}, file)
    >>> released = load_released_backbone(file)
    >>> released.layout, released.prefix, released.backbone.embed_dim
    ('dino', 'teacher.backbone.', 64)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from timm.models.vision_transformer import VisionTransformer

from protossl.core.errors import UserError
from protossl.diagnostics.checkpoints.common import Checkpoint, canonical, open_checkpoint
from protossl.models.backbones import TimmSpec, ViTBackbone

__all__ = [
    "RELEASED_BRANCHES",
    "ReleasedBackbone",
    "load_released_backbone",
    "released_from_checkpoint",
]

RELEASED_BRANCHES = ("teacher", "student")
HEAD_WIDTH = 64  # per attention head, in every published DINO / iBOT / DINOv2 ViT
_ANCHOR = "patch_embed.proj.weight"
_CHUNKED = re.compile(r"^blocks\.\d+\.(\d+)\.")
# Backbone tensors the timm ViT has no place for: DINOv2's mask token and iBOT's masked
# embedding (training only); reported and ignored, as is any other extra tensor.
_DROPPED = ("mask_token", "masked_embed")


@dataclass(frozen=True)
class ReleasedBackbone:
    """A released backbone, rebuilt: the network and where it came from."""

    backbone: ViTBackbone
    layout: str  # "dino" (DINO / iBOT: no registers, no LayerScale) or "dinov2"
    prefix: str  # where the backbone sat in the file, e.g. "teacher.backbone."
    image_size: int  # the native size (pos_embed grid x patch size)
    ignored: tuple[str, ...]  # tensors under the prefix that were not loaded


def _vit_kwargs(
    patch: int,
    width: int,
    depth: int,
    mlp_hidden: int,
    grid: int,
    registers: int,
    layer_scale: bool,
    qkv_bias: bool,
) -> dict[str, Any]:
    return {
        "img_size": grid * patch,
        "patch_size": patch,
        "embed_dim": width,
        "depth": depth,
        "num_heads": max(1, width // HEAD_WIDTH),
        "mlp_ratio": mlp_hidden / width,
        "qkv_bias": qkv_bias,
        "init_values": 1e-5 if layer_scale else None,  # any value: the file sets gamma
        "reg_tokens": registers,
        "no_embed_class": registers > 0,
        "num_classes": 0,
        "dynamic_img_size": True,
        "dynamic_img_pad": True,
    }


def _branch_prefix(flat: dict[str, torch.Tensor], branch: str, file: Path) -> str:
    """The prefix of the requested branch's backbone (bare files have one backbone)."""
    prefixes = sorted(name[: -len(_ANCHOR)] for name in flat if name.endswith(_ANCHOR))
    if not prefixes:
        raise UserError(
            f"{file}: not a protossl checkpoint, and no released ViT backbone in it (no "
            f"'{_ANCHOR}' tensor; protossl reads official DINO, iBOT and DINOv2 ViTs)"
        )
    if len(prefixes) == 1 and not prefixes[0].startswith(tuple(b + "." for b in RELEASED_BRANCHES)):
        return prefixes[0]  # a backbone-only file
    ours = [p for p in prefixes if p.startswith(branch + ".")]
    if len(ours) != 1:
        raise UserError(
            f"{file}: no single {branch} backbone (ViT backbones found under "
            f"{', '.join(repr(p) for p in prefixes)})"
        )
    return ours[0]


def _unchunk(keys: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """DINOv2's ``blocks.C.I.*`` (block chunks for FSDP) -> ``blocks.I.*``."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in keys.items():
        match = _CHUNKED.match(name)
        out[_CHUNKED.sub(r"blocks.\1.", name) if match else name] = tensor
    return out


def load_released_backbone(path: str | Path, branch: str = "teacher") -> ReleasedBackbone:
    """Read a released DINO / iBOT / DINOv2 ViT from a local file as a timm ViT.

    Raises:
        UserError: unreadable or unsafe file, no ViT backbone in it, an unknown tensor
            layout (e.g. DINOv2-g's SwiGLU MLP), or shapes that do not fit together.
    """
    return released_from_checkpoint(open_checkpoint(path), branch)


def released_from_checkpoint(checkpoint: Checkpoint, branch: str = "teacher") -> ReleasedBackbone:
    """:func:`load_released_backbone` for a checkpoint already opened (``open_checkpoint``)."""
    if branch not in RELEASED_BRANCHES:
        raise UserError(f"unknown branch {branch!r}; use one of {', '.join(RELEASED_BRANCHES)}")
    file = checkpoint.file
    flat = {canonical(name): tensor for name, tensor in checkpoint.flat.items()}
    prefix = _branch_prefix(flat, branch, file)
    keys = _unchunk({n[len(prefix) :]: t for n, t in flat.items() if n.startswith(prefix)})
    ignored = tuple(sorted(k for k in keys if k in _DROPPED))
    for name in ignored:
        del keys[name]
    try:
        proj = keys[_ANCHOR]
        width, patch = int(proj.shape[0]), int(proj.shape[-1])
        depth = 1 + max(int(k.split(".")[1]) for k in keys if k.startswith("blocks."))
        mlp_hidden = int(keys["blocks.0.mlp.fc1.weight"].shape[0])
        positions = int(keys["pos_embed"].shape[1]) - 1  # the class token's position first
    except (KeyError, ValueError, IndexError):
        raise UserError(
            f"{file}: the backbone under '{prefix}' is not a DINO/iBOT/DINOv2 ViT layout "
            "(missing pos_embed, blocks.0.mlp.fc1 or blocks); keys: "
            f"{', '.join(sorted(keys)[:8])}, ..."
        ) from None
    grid = int(round(positions**0.5))
    if grid * grid != positions:
        raise UserError(f"{file}: pos_embed has {positions} patch positions, not a square grid")
    registers = int(keys["register_tokens"].shape[1]) if "register_tokens" in keys else 0
    layer_scale = "blocks.0.ls1.gamma" in keys
    qkv_bias = "blocks.0.attn.qkv.bias" in keys
    layout = "dinov2" if (registers or layer_scale) else "dino"
    if registers:
        # Fold the class token's position embedding into it (see the module docstring).
        keys["cls_token"] = keys["cls_token"] + keys["pos_embed"][:, :1]
        keys["pos_embed"] = keys["pos_embed"][:, 1:]
        keys["reg_token"] = keys.pop("register_tokens")
    kwargs = _vit_kwargs(patch, width, depth, mlp_hidden, grid, registers, layer_scale, qkv_bias)
    net = VisionTransformer(**kwargs)
    if proj.dtype == torch.float64:  # keep a float64 file exact; half precision -> float32
        net = net.double()
    try:
        missing, unexpected = net.load_state_dict(keys, strict=False)
    except RuntimeError as exc:  # a tensor of the wrong shape
        reason = str(exc).strip().splitlines()[-1].strip()
        raise UserError(
            f"{file}: the backbone under '{prefix}' does not fit a timm ViT ({reason})"
        ) from None
    if missing:
        raise UserError(
            f"{file}: the backbone under '{prefix}' lacks tensors a timm ViT needs: "
            f"{', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''}"
        )
    ignored = tuple(sorted({*ignored, *unexpected}))
    net.eval()
    spec = TimmSpec("vit_small_patch16_224", kwargs)
    return ReleasedBackbone(ViTBackbone(net, width, spec), layout, prefix, grid * patch, ignored)
