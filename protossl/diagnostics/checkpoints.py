"""Read prototype layers out of checkpoints, without importing any method code.

Understands protossl's own training checkpoints and the checkpoints of the
official DINO-family repositories, with the key layouts their training scripts
write (the official source of each is cited next to ``_PATTERNS`` below):

=========  ==============================================================  ========================
format     prototype layers (after ``module.`` and wrapper keys)           head names
=========  ==============================================================  ========================
protossl   ``method[<branch>.head.prototypes.weight]``                      student, teacher
dino       ``<branch>.head.last_layer.{weight_g,weight_v | weight}``        <branch>/head
ibot       ``<branch>.head.last_layer``, ``<branch>.head.last_layer2``      <branch>/head,
                                                                            <branch>/patch_head
dinov2     ``<branch>.dino_head.last_layer``, ``<branch>.ibot_head...``     <branch>/dino_head,
                                                                            <branch>/ibot_head
msn        top-level ``prototypes`` tensor                                  prototypes
swav       ``prototypes.weight`` or ``prototypes.prototypes<i>.weight``     prototypes,
                                                                            prototypes<i>
esvit      ``<branch>.head.last_layer``, ``<branch>.head_dense...``         <branch>/head,
                                                                            <branch>/head_dense
=========  ==============================================================  ========================

``<branch>`` is ``student`` / ``teacher`` (or nothing, for a bare state dict).
A ``module.`` prefix (DistributedDataParallel), ``_orig_mod.`` (torch.compile)
and FSDP wrapper segments are ignored, and so are the usual wrapping
dictionaries (``state_dict``, ``model``). A weight-normalized layer is stored as
``weight_g`` / ``weight_v`` (``torch.nn.utils.weight_norm``) or as
``parametrizations.weight.original0`` / ``original1``
(``torch.nn.utils.parametrizations.weight_norm``); its effective prototype
matrix ``w = g * v / ||v||`` (per row) is reconstructed exactly, so the row norms
of unnormalized (vMF-like) heads are reported as they act in the logits.

Every file is opened with ``torch.load(weights_only=True)``: a checkpoint never
executes code. The only class admitted beyond tensors and plain containers is
``argparse.Namespace``, which the official DINO, iBOT and EsViT scripts store
under ``'args'``; it is rebuilt as a plain attribute bag (no constructor runs).

Example:
    >>> fmt, heads = read_prototype_heads("dino_vitbase16_full_checkpoint.pth")  # doctest: +SKIP
    >>> fmt, sorted(heads)  # doctest: +SKIP
    ('dino', ['student/head', 'teacher/head'])
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from protossl.core.errors import UserError
from protossl.core.files import load_checkpoint

__all__ = [
    "FORMATS",
    "FORMAT_CHOICES",
    "PROTOSSL_PROTOTYPE_SUFFIX",
    "read_prototype_heads",
    "resolve_checkpoint_path",
]

# Suffix of the prototype matrix in a protossl method's state dict.
PROTOSSL_PROTOTYPE_SUFFIX = "head.prototypes.weight"

FORMATS: tuple[str, ...] = ("protossl", "dino", "ibot", "dinov2", "msn", "swav", "esvit")
"""Checkpoint layouts :func:`read_prototype_heads` understands."""

FORMAT_CHOICES: tuple[str, ...] = ("auto", *FORMATS)
"""Values of ``protossl analyze --format``."""

# Path segments that wrap a model without naming a part of it: DistributedDataParallel
# ('module'), torch.compile ('_orig_mod'), FSDP and activation checkpointing, and the
# dictionaries checkpoints put a state dict in ('state_dict'; 'model' for DINOv2's
# fvcore checkpointer).
_WRAPPER_SEGMENTS = frozenset(
    {
        "module",
        "_orig_mod",
        "_fsdp_wrapped_module",
        "_checkpoint_wrapped_module",
        "state_dict",
        "model",
        "model_state_dict",
    }
)
# Top-level entries that never hold a model's prototypes (optimizer moments have the
# prototypes' shape and would pollute the candidate list of an unknown layout).
_SKIPPED_ENTRIES = frozenset(
    {
        "optimizer",
        "opt",
        "optim",
        "optimizer_state_dict",
        "fp16_scaler",
        "scaler",
        "amp",
        "lr_scheduler",
        "scheduler",
    }
)
_MAX_DEPTH = 6
_MAX_CANDIDATES = 10
_CANDIDATE_HINT = re.compile(r"last_layer|prototype|head", re.IGNORECASE)

# Tensor-name suffixes of one linear layer's weight, in order of preference.
_WEIGHT_NORM_SUFFIXES = (
    (".weight_g", ".weight_v"),  # torch.nn.utils.weight_norm
    (".parametrizations.weight.original0", ".parametrizations.weight.original1"),
)


# --------------------------------------------------------------------------- layouts


@dataclass(frozen=True)
class _HeadPattern:
    """A prototype layer ``<branch>.<module>`` of one layout and the label of its head."""

    module: str  # regex for the layer path after the branch, e.g. r"head\.last_layer"
    label: str  # head label; "{0}" is replaced by the first regex group


# Layer paths per format (matched against the layer name with wrapper segments removed).
# Sources (official repositories):
#   dino   facebookresearch/dino vision_transformer.py, DINOHead: self.last_layer =
#          nn.utils.weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False));
#          utils.MultiCropWrapper(backbone, head); main_dino.py save_dict = {'student':
#          student.state_dict() (DDP: 'module.'), 'teacher': ..., 'args': args, ...}.
#   ibot   bytedance/ibot models/head.py, iBOTHead: self.last_layer2 = weight_norm(...)
#          when not shared_head, else self.last_layer2 = self.last_layer (both saved);
#          main_ibot.py save_dict = {'student', 'teacher', 'args', 'ibot_loss', ...}.
#   dinov2 facebookresearch/dinov2 dinov2/train/ssl_meta_arch.py: self.student /
#          self.teacher = nn.ModuleDict({'backbone', 'dino_head', 'ibot_head' (separate
#          head only)}); dinov2/layers/dino_head.py: last_layer = weight_norm(...);
#          train.py do_test: torch.save({"teacher": model.teacher.state_dict()});
#          full checkpoints (fvcore Checkpointer): {'model': model.state_dict(), ...}.
#   msn    facebookresearch/msn src/msn_train.py save_checkpoint: {'encoder',
#          'target_encoder', 'prototypes': prototypes.data, 'opt', 'epoch', ...}.
#   swav   facebookresearch/swav src/resnet50.py: self.prototypes = nn.Linear(output_dim,
#          nmb_prototypes, bias=False) or MultiPrototypes ('prototypes' + str(i));
#          main_swav.py save_dict = {'epoch', 'state_dict': model.state_dict() (DDP),
#          'optimizer'}.
#   esvit  microsoft/esvit main_esvit.py: student.head = DINOHead(...), student.head_dense
#          = DINOHead(...) when use_dense_prediction (utils.MultiCropWrapper(backbone,
#          head, head_dense=...) for torchvision backbones); save_dict as in DINO.
_PATTERNS: dict[str, tuple[_HeadPattern, ...]] = {
    "dino": (_HeadPattern(r"head\.last_layer", "head"),),
    "ibot": (
        _HeadPattern(r"head\.last_layer", "head"),
        _HeadPattern(r"head\.last_layer2", "patch_head"),
    ),
    "dinov2": (
        _HeadPattern(r"dino_head\.last_layer", "dino_head"),
        _HeadPattern(r"ibot_head\.last_layer", "ibot_head"),
    ),
    "swav": (
        _HeadPattern(r"prototypes\.prototypes(\d+)", "prototypes{0}"),
        _HeadPattern(r"prototypes", "prototypes"),
    ),
    "esvit": (
        _HeadPattern(r"head\.last_layer", "head"),
        _HeadPattern(r"head_dense\.last_layer", "head_dense"),
    ),
}
# Labels whose presence identifies a format under --format auto (checked in this order:
# the more specific layouts first, since an iBOT or EsViT file also holds DINO's keys).
_AUTO_SIGNATURES: tuple[tuple[str, frozenset[str]], ...] = (
    ("dinov2", frozenset({"dino_head", "ibot_head"})),
    ("esvit", frozenset({"head_dense"})),
    ("ibot", frozenset({"patch_head"})),
    ("dino", frozenset({"head"})),
    ("swav", frozenset({"prototypes"})),  # and prototypes<i>, see _signature_labels
)
# What a forced --format needs to find.
_FORCED_SIGNATURES: dict[str, frozenset[str]] = {
    "dino": frozenset({"head"}),
    "ibot": frozenset({"patch_head"}),
    "dinov2": frozenset({"dino_head", "ibot_head"}),
    "swav": frozenset({"prototypes"}),
    "esvit": frozenset({"head", "head_dense"}),
}
_EXPECTED_KEYS: dict[str, str] = {
    "protossl": "format='protossl' and method['<branch>.head.prototypes.weight']",
    "dino": "'[module.]head.last_layer.weight_g/_v' under 'student'/'teacher'",
    "ibot": "'[module.]head.last_layer2.weight_g/_v' under 'student'/'teacher'",
    "dinov2": "'student.dino_head.last_layer.weight_g/_v' or 'dino_head...' under 'teacher'",
    "msn": "a top-level 'prototypes' tensor",
    "swav": "'[module.]prototypes.weight' or '[module.]prototypes.prototypes0.weight'",
    "esvit": "'[module.]head.last_layer' / 'head_dense.last_layer' under 'student'/'teacher'",
}


# --------------------------------------------------------------------------- tensors


@dataclass(frozen=True)
class _Layer:
    """One linear layer in the file: its plain weight, or the two weight-norm halves."""

    name: str  # raw path in the file, e.g. "student.module.head.last_layer"
    weight: str | None = None  # tensor name of a plain weight
    g: str | None = None  # tensor names of a weight-normalized layer
    v: str | None = None


def _flatten(obj: dict[Any, Any], prefix: str, out: dict[str, torch.Tensor], depth: int) -> None:
    """Every tensor in nested dicts, by its dotted path (optimizer states skipped)."""
    for key, value in obj.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, torch.Tensor):
            out[name] = value
        elif (
            isinstance(value, dict)
            and depth < _MAX_DEPTH
            and not (depth == 0 and str(key) in _SKIPPED_ENTRIES)
            and not _is_optimizer_state(value)
        ):
            _flatten(value, name, out, depth + 1)


def _is_optimizer_state(value: dict[Any, Any]) -> bool:
    return "param_groups" in value and "state" in value


def _canonical(name: str) -> str:
    """The path without wrapper segments: 'student.module.head' -> 'student.head'."""
    return ".".join(part for part in name.split(".") if part not in _WRAPPER_SEGMENTS)


def _find_layers(flat: dict[str, torch.Tensor]) -> list[_Layer]:
    """Linear layers (2-D weights), weight-normalized halves paired up."""
    layers: dict[str, _Layer] = {}
    for name in flat:
        for g_suffix, v_suffix in _WEIGHT_NORM_SUFFIXES:
            if name.endswith(v_suffix):
                base = name[: -len(v_suffix)]
                if base + g_suffix in flat and base not in layers:
                    layers[base] = _Layer(base, g=base + g_suffix, v=name)
    for name, tensor in flat.items():
        if name.endswith(".weight") and tensor.dim() == 2:
            base = name[: -len(".weight")]
            layers.setdefault(base, _Layer(base, weight=name))
    return list(layers.values())


def _weight_norm_matrix(g: torch.Tensor, v: torch.Tensor, where: str) -> torch.Tensor:
    """Effective weight ``g * v / ||v||`` of ``weight_norm(dim=0)`` (or ``dim=None``).

    Computed in float64 and returned in ``v``'s floating dtype (at least float32).
    A zero row of ``v`` gives a zero prototype, not NaN.
    """
    if v.dim() != 2:
        raise UserError(f"{where}: weight_v must be 2-D [K, p] (got shape {tuple(v.shape)})")
    out_dtype = torch.promote_types(v.dtype, torch.float32) if v.is_floating_point() else None
    v64 = v.detach().to("cpu", torch.float64)
    g64 = g.detach().to("cpu", torch.float64)
    if g64.numel() == v64.shape[0]:
        scale = g64.reshape(-1, 1) / torch.linalg.vector_norm(v64, dim=1, keepdim=True)
    elif g64.numel() == 1:  # weight_norm(dim=None): one norm over the whole matrix
        scale = g64.reshape(1, 1) / torch.linalg.vector_norm(v64)
    else:
        raise UserError(
            f"{where}: weight_g has shape {tuple(g.shape)}, which does not fit weight_v "
            f"{tuple(v.shape)} (expected [{v.shape[0]}, 1]); the file is damaged or not a "
            "weight-normalized layer"
        )
    w = v64 * torch.nan_to_num(scale, nan=0.0, posinf=0.0, neginf=0.0)
    return w.to(out_dtype or torch.float32)


def _as_matrix(tensor: torch.Tensor) -> torch.Tensor:
    """A prototype matrix as analyzed: floating, at least float32, on the CPU."""
    dtype = torch.promote_types(tensor.dtype, torch.float32)
    if not dtype.is_floating_point:
        dtype = torch.float32
    return tensor.detach().to("cpu", dtype)


def _layer_matrix(layer: _Layer, flat: dict[str, torch.Tensor], file: Path) -> torch.Tensor:
    if layer.weight is not None:
        return _as_matrix(flat[layer.weight])
    assert layer.g is not None and layer.v is not None
    return _weight_norm_matrix(flat[layer.g], flat[layer.v], f"{file}: {layer.name}")


# --------------------------------------------------------------------------- matching


@dataclass(frozen=True)
class _Match:
    branch: str  # canonical branch path ('' for none), e.g. "student"
    label: str  # e.g. "dino_head"
    layer: _Layer


def _match_layers(fmt: str, layers: list[_Layer]) -> list[_Match]:
    """The layers of ``layers`` that are prototype layers of layout ``fmt``."""
    matches: list[_Match] = []
    for layer in layers:
        canonical = _canonical(layer.name)
        for pattern in _PATTERNS[fmt]:
            found = re.fullmatch(rf"(?:(?P<branch>.+)\.)?(?:{pattern.module})", canonical)
            if found is not None:
                label = pattern.label.format(*found.groups()[1:])
                matches.append(_Match(found.group("branch") or "", label, layer))
                break
    return matches


def _signature_labels(matches: list[_Match]) -> set[str]:
    return {"prototypes" if m.label.startswith("prototypes") else m.label for m in matches}


def _msn_prototypes(flat: dict[str, torch.Tensor]) -> str | None:
    """Name of MSN's top-level ``prototypes`` tensor (wrappers allowed), if there is one."""
    for name, tensor in flat.items():
        if _canonical(name) == "prototypes" and tensor.dim() == 2:
            return name
    return None


_BRANCH_ORDER = {"teacher": 0, "student": 1, "target_encoder": 2, "encoder": 3}


def _head_name(branch: str, label: str) -> str:
    return f"{branch.replace('.', '/')}/{label}" if branch else label


def _read_matches(
    matches: list[_Match], flat: dict[str, torch.Tensor], file: Path
) -> dict[str, torch.Tensor]:
    matches = sorted(matches, key=lambda m: (_BRANCH_ORDER.get(m.branch, 9), m.branch, m.label))
    heads: dict[str, torch.Tensor] = {}
    for m in matches:
        weights = _layer_matrix(m.layer, flat, file)
        if m.label == "patch_head":
            # iBOT with shared_head: last_layer2 *is* last_layer (saved twice); one head.
            twin = heads.get(_head_name(m.branch, "head"))
            if twin is not None and twin.shape == weights.shape and torch.equal(twin, weights):
                continue
        name = _head_name(m.branch, m.label)
        if name in heads:  # two layers that differ only by wrappers: keep both, unambiguously
            name = m.layer.name
        heads[name] = weights
    return heads


def _read_protossl(state: dict[str, Any], file: Path) -> dict[str, torch.Tensor]:
    heads: dict[str, torch.Tensor] = {}
    for key, value in state["method"].items():
        if not isinstance(value, torch.Tensor):
            continue
        branch, _, rest = key.partition(".")
        # student.head.prototypes.weight -> "student"; iBOT's separate patch head
        # (student.patch_head.prototypes.weight) -> "student/patch_head".
        if rest == PROTOSSL_PROTOTYPE_SUFFIX:
            heads[branch] = value.float()
        elif rest.endswith("_" + PROTOSSL_PROTOTYPE_SUFFIX):
            head_name = rest.removesuffix(".prototypes.weight")
            heads[f"{branch}/{head_name}"] = value.float()
    if not heads:
        raise UserError(f"{file} holds no prototype layer ('*.{PROTOSSL_PROTOTYPE_SUFFIX}')")
    return heads


def _is_protossl(state: dict[str, Any]) -> bool:
    return state.get("format") == "protossl" and isinstance(state.get("method"), dict)


def _read_format(
    fmt: str, state: dict[str, Any], flat: dict[str, torch.Tensor], file: Path
) -> dict[str, torch.Tensor] | None:
    """Heads of layout ``fmt``, or None if the file does not have that layout."""
    if fmt == "protossl":
        return _read_protossl(state, file) if _is_protossl(state) else None
    if fmt == "msn":
        name = _msn_prototypes(flat)
        return None if name is None else {"prototypes": _as_matrix(flat[name])}
    matches = _match_layers(fmt, _find_layers(flat))
    if not _signature_labels(matches) & _FORCED_SIGNATURES[fmt]:
        return None
    return _read_matches(matches, flat, file)


def _detect(state: dict[str, Any], flat: dict[str, torch.Tensor]) -> str | None:
    if _is_protossl(state):
        return "protossl"
    layers = _find_layers(flat)
    for fmt, signature in _AUTO_SIGNATURES:
        if _signature_labels(_match_layers(fmt, layers)) & signature:
            return fmt
    return "msn" if _msn_prototypes(flat) is not None else None


# --------------------------------------------------------------------------- candidates


def _prototype_candidates(flat: dict[str, torch.Tensor], limit: int = _MAX_CANDIDATES) -> list[str]:
    """Names that ``--key`` accepts and that look like prototype layers.

    Layers (weight-normalized ones by their layer name, others by tensor name) whose
    name mentions last_layer / prototype / head come first, then the largest other
    2-D tensors.
    """
    entries: dict[str, int] = {}  # name -> numel
    paired: set[str] = set()
    for layer in _find_layers(flat):
        if layer.v is not None:
            entries[layer.name] = flat[layer.v].numel()
            paired.update({layer.g or "", layer.v})
    for name, tensor in flat.items():
        if tensor.dim() == 2 and name not in paired:
            entries[name] = tensor.numel()
    hinted = sorted(name for name in entries if _CANDIDATE_HINT.search(name))
    others = sorted((n for n in entries if n not in set(hinted)), key=lambda n: (-entries[n], n))
    return (hinted + others)[:limit]


def _all_keys(flat: dict[str, torch.Tensor]) -> Iterator[str]:
    yield from flat
    for layer in _find_layers(flat):
        if layer.v is not None:
            yield layer.name


def _read_key(key: str, flat: dict[str, torch.Tensor], file: Path) -> dict[str, torch.Tensor]:
    """Exactly the 2-D tensor ``key``, or the weight-normalized layer named ``key``."""
    layers = {layer.name: layer for layer in _find_layers(flat) if layer.v is not None}
    if key not in flat and key not in layers:
        # A name given without (or with other) wrapper segments, if it is unambiguous.
        same = {n for n in _all_keys(flat) if _canonical(n) == _canonical(key)}
        if len(same) == 1:
            key = same.pop()
    if key in flat:
        tensor = flat[key]
        if tensor.dim() != 2:
            raise UserError(
                f"{file}: '{key}' has shape {tuple(tensor.shape)}; --key needs a 2-D "
                "prototype matrix [K, p]"
            )
        return {key: _as_matrix(tensor)}
    if key in layers:
        return {key: _layer_matrix(layers[key], flat, file)}
    close = difflib.get_close_matches(key, sorted(set(_all_keys(flat))), n=5, cutoff=0.5)
    hint = f"close matches: {', '.join(close)}" if close else _candidate_text(flat)
    raise UserError(f"{file} has no tensor '{key}' for --key; {hint}")


def _candidate_text(flat: dict[str, torch.Tensor]) -> str:
    names = _prototype_candidates(flat)
    if not names:
        return "it holds no 2-D tensor that could be a prototype matrix"
    shapes = ", ".join(f"{n} {_shape_text(n, flat)}" for n in names)
    return f"tensors that look like prototype layers: {shapes}"


def _shape_text(name: str, flat: dict[str, torch.Tensor]) -> str:
    for g_suffix, v_suffix in _WEIGHT_NORM_SUFFIXES:
        if name + v_suffix in flat and name + g_suffix in flat:
            return "[" + "x".join(map(str, flat[name + v_suffix].shape)) + ", weight-normalized]"
    return "[" + "x".join(map(str, flat[name].shape)) + "]"


# --------------------------------------------------------------------------- public


def resolve_checkpoint_path(path: str | Path) -> Path:
    """A run directory means its ``checkpoints/last.pt``."""
    path = Path(path)
    if path.is_dir():
        candidate = path / "checkpoints" / "last.pt"
        if not candidate.is_file():
            raise UserError(f"{path} is a directory without checkpoints/last.pt; give a .pt file")
        return candidate
    return path


def _safe_globals() -> contextlib.AbstractContextManager[Any]:
    """Admit ``argparse.Namespace`` (the official scripts' saved ``args``) to weights_only."""
    admit = getattr(torch.serialization, "safe_globals", None)
    return admit([argparse.Namespace]) if admit is not None else contextlib.nullcontext()


def _load(file: Path) -> dict[str, Any]:
    with _safe_globals():
        return load_checkpoint(file)


def read_prototype_heads(
    path: str | Path, format: str = "auto", key: str | None = None
) -> tuple[str, dict[str, torch.Tensor]]:
    """Detected format and the prototype matrices [K, p] of every head in a checkpoint.

    Args:
        path: A checkpoint file, or a protossl run directory (its ``checkpoints/last.pt``).
        format: ``"auto"`` (detect the layout) or one of :data:`FORMATS`; a forced
            format that does not match the file is a :class:`UserError`.
        key: Read exactly this 2-D tensor (its dotted path in the file, e.g.
            ``"student.module.head.last_layer.weight_v"``), or the weight-normalized
            layer of that name (``"teacher.head.last_layer"``), instead of detecting a
            layout. The format reported is then ``"key"``.

    Returns:
        ``(format, heads)``; heads by name, e.g. ``'teacher/dino_head'``,
        ``'student/head'``, ``'prototypes0'`` (``'student'`` / ``'teacher'`` for
        protossl checkpoints), each a float tensor [K, p] whose rows are the
        effective prototypes (``g * v / ||v||`` for weight-normalized layers).

    Raises:
        UserError: One line naming the file and the fix: unreadable or unsafe file,
            unknown layout (listing the tensors that look like prototype layers and
            how to pick one with ``--key``), a forced format that does not match, or a
            missing ``key`` (with close matches).

    Example:
        >>> fmt, heads = read_prototype_heads("runs/dino")  # doctest: +SKIP
        >>> fmt, sorted(heads)  # doctest: +SKIP
        ('protossl', ['student', 'teacher'])
    """
    if format not in FORMAT_CHOICES:
        raise UserError(
            f"unknown checkpoint format '{format}'; choose from {', '.join(FORMAT_CHOICES)}"
        )
    file = resolve_checkpoint_path(path)
    state = _load(file)
    flat: dict[str, torch.Tensor] = {}
    _flatten(state, "", flat, 0)
    if key is not None:
        if format != "auto":
            raise UserError("--key reads one tensor and skips layout detection; drop --format")
        return "key", _read_key(key, flat, file)
    if format == "auto":
        detected = _detect(state, flat)
        if detected is None:
            raise UserError(
                f"{file} has an unknown checkpoint layout (not a protossl checkpoint, nor "
                f"{', '.join(FORMATS[1:])}); {_candidate_text(flat)}; pick one with --key NAME"
            )
        heads = _read_format(detected, state, flat, file)
        assert heads is not None
        return detected, heads
    heads = _read_format(format, state, flat, file)
    if heads is None:
        detected = _detect(state, flat)
        found = f"it looks like '{detected}'" if detected else "its layout is unknown"
        raise UserError(
            f"{file} does not have the {format} layout (expected {_EXPECTED_KEYS[format]}); "
            f"{found}: use --format auto, or --key NAME"
        )
    return format, heads
