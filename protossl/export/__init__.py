"""``protossl export``: a trained backbone out of protossl, for timm (and torch) alone.

Writes into one folder:

- ``backbone.safetensors``: the chosen branch's backbone weights (teacher by default:
  the network DINO and iBOT evaluate, Caron et al. 2021, section 3.1);
- ``backbone.json``: the architecture, so that ``timm.create_model(**spec)`` then
  ``load_state_dict`` rebuilds it with no protossl import (for the ResNets also the
  small-image stem, which no timm keyword builds; ``cnn_tiny`` is not a timm model and
  is described as a plain CNN), the preprocessing (image size, mean, std) and the source;
- ``head.safetensors``: the projection head and its prototypes (``prototypes.*`` keys);
- ``build_backbone.py``: ``load_backbone(folder)``, torch + timm only, for every case.

Example:
    >>> from protossl.models.backbones import build_backbone
    >>> spec = backbone_spec(build_backbone("resnet_tiny", 16))
    >>> spec["timm"]["model"], spec["timm"]["cifar_stem"]
    ('resnet18', 64)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save
from torch import nn

from protossl.core.errors import UserError
from protossl.core.files import atomic_write_bytes, atomic_write_text
from protossl.data.multicrop import IMAGENET_MEAN, IMAGENET_STD
from protossl.diagnostics.checkpoints import resolve_checkpoint_path
from protossl.models.backbones import Backbone, PlainConvNet
from protossl.runs.checkpoint import load_method
from protossl.runs.outputs import check_output_folder

__all__ = ["BRANCHES", "ExportResult", "backbone_spec", "export_run"]

BRANCHES = ("teacher", "student")
FORMAT = "protossl-backbone"
VERSION = 1
STANDALONE = Path(__file__).with_name("build_backbone.py")


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_run` wrote."""

    folder: Path
    backbone: str
    architecture: str  # the timm model name, or "plain_cnn"
    num_backbone_tensors: int
    num_head_tensors: int


def backbone_spec(backbone: Backbone) -> dict[str, Any]:
    """The architecture part of ``backbone.json`` for a protossl backbone.

    Raises:
        UserError: a backbone with no recipe for rebuilding it outside protossl.
    """
    spec = backbone.timm_spec
    if spec is not None:
        timm_part = {
            "model": spec.model,
            "kwargs": dict(spec.kwargs),
            "cifar_stem": spec.cifar_stem,
        }
        return {"timm": timm_part, "plain_cnn": None}
    if isinstance(backbone.net, PlainConvNet):
        return {"timm": None, "plain_cnn": {"widths": list(backbone.net.widths)}}
    raise UserError(f"backbone {type(backbone.net).__name__} cannot be exported (no timm spec)")


def _tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    # safetensors refuses shared or non-contiguous storage: one copy per tensor.
    return {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}


def export_run(
    source: str | Path, out: str | Path, branch: str = "teacher", force: bool = False
) -> ExportResult:
    """Export the backbone and head of a protossl run (folder or checkpoint file).

    Raises:
        UserError: unknown branch, unreadable checkpoint, an output folder that is a run's
            or not empty (without ``force``), or a backbone that cannot be exported.
    """
    if branch not in BRANCHES:
        raise UserError(f"unknown --branch {branch!r}; use one of {', '.join(BRANCHES)}")
    file = resolve_checkpoint_path(source)
    folder = check_output_folder(out, force=force, inputs=[source, file])
    loaded = load_method(file, "export needs one")
    network = loaded.method.teacher if branch == "teacher" else loaded.method.student
    backbone = network.get_submodule("backbone")
    head = network.get_submodule("head")
    assert isinstance(backbone, Backbone)
    arch = backbone_spec(backbone)
    cfg = loaded.cfg
    description = {
        "format": FORMAT,
        "version": VERSION,
        "backbone": cfg.model.backbone,
        "branch": branch,
        "method": cfg.method,
        "embed_dim": backbone.embed_dim,
        **arch,
        # What the features were trained and evaluated on (protossl's EvalTransform).
        "preprocessing": {
            "image_size": cfg.data.image_size,
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
        },
        "head": {"num_prototypes": cfg.model.num_prototypes, "prototype_key": "prototypes"},
        "source": {"checkpoint": str(file)},
    }
    backbone_tensors = _tensors(backbone.net)
    head_tensors = _tensors(head)
    folder.mkdir(parents=True, exist_ok=True)
    metadata = {"format": FORMAT, "branch": branch, "backbone": cfg.model.backbone}
    atomic_write_bytes(folder / "backbone.safetensors", save(backbone_tensors, metadata))
    atomic_write_bytes(folder / "head.safetensors", save(head_tensors, metadata))
    atomic_write_text(folder / "backbone.json", json.dumps(description, indent=2) + "\n")
    atomic_write_text(folder / "build_backbone.py", STANDALONE.read_text(encoding="utf-8"))
    return ExportResult(
        folder=folder,
        backbone=cfg.model.backbone,
        architecture=arch["timm"]["model"] if arch["timm"] else "plain_cnn",
        num_backbone_tensors=len(backbone_tensors),
        num_head_tensors=len(head_tensors),
    )
