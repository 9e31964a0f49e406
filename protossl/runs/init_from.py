"""``model.init_from``: start a run's backbones from pretrained weights.

The file is a released DINO / iBOT / DINOv2 ViT (read code-free and mapped to timm's key
names, :mod:`protossl.models.released`) or a protossl run or training checkpoint (its
teacher backbone, the network DINO keeps, Caron et al. 2021). Its weights are copied into
the student's and the teacher's backbones, so both start equal, as DINO's teacher starts
from the student. Shapes must match the configured backbone exactly; the message says
what the file holds so the user can pick ``model.backbone`` and ``data.image_size``.

Example:
    >>> from protossl.models.backbones import build_backbone
    >>> describe_vit(build_backbone("vit_tiny", 16).net.state_dict())
    'a ViT with patch 4, width 96, depth 4 (native 16 px)'
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from protossl.core.errors import UserError
from protossl.diagnostics.checkpoints.common import open_checkpoint
from protossl.methods import Method
from protossl.models.released import released_from_checkpoint
from protossl.runs.checkpoint import is_training_state

__all__ = ["describe_vit", "initialize_backbones", "pretrained_backbone_state"]

_PROTOSSL_PREFIX = "teacher.backbone.net."


def describe_vit(state: dict[str, torch.Tensor]) -> str:
    """Patch, width, depth and native size of a timm-style ViT state dict, in words."""
    proj = state.get("patch_embed.proj.weight")
    if proj is None:
        return f"a network with {len(state)} tensors (not a ViT)"
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    patch = int(proj.shape[-1])
    positions = int(state["pos_embed"].shape[1]) if "pos_embed" in state else 0
    if "reg_token" not in state:  # with registers, no position for the class token
        positions -= 1
    grid = int(round(max(positions, 0) ** 0.5))
    width = int(proj.shape[0])
    return f"a ViT with patch {patch}, width {width}, depth {depth} (native {grid * patch} px)"


def pretrained_backbone_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The backbone weights in ``path``, with the key names of protossl's ``Backbone.net``.

    Raises:
        UserError: a missing, unsafe or unknown file.
    """
    checkpoint = open_checkpoint(path)
    if is_training_state(checkpoint.state):
        method_state = checkpoint.state["method"]
        state = {
            k[len(_PROTOSSL_PREFIX) :]: v
            for k, v in method_state.items()
            if k.startswith(_PROTOSSL_PREFIX)
        }
        if not state:
            raise UserError(f"{checkpoint.file}: no teacher backbone in this protossl checkpoint")
        return state
    return released_from_checkpoint(checkpoint).backbone.net.state_dict()


def _copy_into(net: nn.Module, state: dict[str, torch.Tensor], source: str, what: str) -> None:
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    shapes = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or shapes:
        first = (
            f"{shapes[0]} is {tuple(state[shapes[0]].shape)} in the file, "
            f"{tuple(own[shapes[0]].shape)} here"
            if shapes
            else f"missing {', '.join(missing[:3])}"
        )
        raise UserError(
            f"model.init_from {source} holds {describe_vit(state)}, which does not fit the "
            f"{what} ({first}); choose the matching model.backbone and data.image_size"
        )
    with torch.no_grad():
        for key, tensor in own.items():
            tensor.copy_(state[key])


def initialize_backbones(method: Method, path: str | Path, backbone_name: str) -> None:
    """Copy the pretrained backbone in ``path`` into ``method``'s student and teacher."""
    state = pretrained_backbone_state(path)
    for network in (method.student, method.teacher):
        _copy_into(
            network.get_submodule("backbone.net"), state, str(path), f"backbone {backbone_name}"
        )
