"""Typed configuration: dataclasses, YAML presets, ``key=value`` overrides, validation.

A run is fully described by one :class:`Config`. It is built from a preset
(``protossl/presets/NAME.yaml``), then an optional YAML file, then ``--set``
overrides, and validated before anything is trained. Invalid values raise
:class:`protossl.core.errors.UserError` with one line naming the key and the fix.
This module holds the run-level settings; each method's own section (``ibot:``,
``msn:``, ``swav:``) is defined and registered in :mod:`protossl.method_config`.

Example:
    >>> cfg = load_config(preset="dino-kp", overrides=["model.num_prototypes=256"])
    >>> cfg.model.num_prototypes, cfg.objective.prototype_regularizer
    (256, 'koleo')
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from protossl.core.coerce import coerce
from protossl.core.errors import UserError
from protossl.core.safe_yaml import load_yaml, load_yaml_file
from protossl.method_config import SECTIONS, MethodSection, add_section_fields, require

_S = typing.TypeVar("_S", bound=MethodSection)

# The optimizers of protossl.engine.optimizers (named here: config never imports the engine).
OPTIMIZER_NAMES = ("adamw", "sgd")


@dataclass
class DataConfig:
    """Data source and DINO multi-crop augmentation."""

    spec: str = "digits"
    image_size: int = 16  # global crop size; local crops scale like DINO's 96/224
    local_size: int | None = None
    num_local_crops: int = 4
    global_scale: list[float] = field(default_factory=lambda: [0.4, 1.0])
    local_scale: list[float] = field(default_factory=lambda: [0.05, 0.4])
    batch_size: int = 128
    num_workers: int = 0
    # "standard": PIL per image in the data loader; "batched": whole batches as tensors on
    # the training device (protossl.data.batched_augment), same distribution of crops.
    augmentation: str = "standard"


@dataclass
class ModelConfig:
    """Backbone, projection head and prototype layer (DINO's ``DINOHead``)."""

    backbone: str = "resnet_tiny"
    num_prototypes: int = 1024  # K
    head_hidden_dim: int = 512
    bottleneck_dim: int = 128  # p
    head_layers: int = 3
    use_bn_in_head: bool = False
    # "normalized": w_k / ||w_k|| (DINO, iBOT); "vmf": unnormalized w_k with the vMF
    # log-normalizer added to the logits (DINO-vMF, iBOT-vMF).
    prototype_layer: str = "normalized"
    patch_num_prototypes: int | None = None  # iBOT patch head K (null: same as num_prototypes)
    shared_head: bool = True  # iBOT: one head for class and patch tokens
    # How prototypes are obtained: "joint" (learned by the loss with the encoder, as in
    # DINO) or a strategy registered in protossl.engine.hooks.PROTOTYPE_STRATEGIES.
    prototype_strategy: str = "joint"
    # Start the student's and teacher's backbones from a file: a released DINO / iBOT /
    # DINOv2 ViT, or a protossl run or checkpoint (its teacher backbone). Fresh runs only.
    init_from: str | None = None


@dataclass
class ObjectiveConfig:
    """Cross-entropy temperatures, teacher-target builder and prototype regularizer."""

    target: str = "centering"
    center_momentum: float = 0.9
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: int = 0
    target_options: dict[str, Any] = field(default_factory=dict)  # e.g. {iterations: 3}
    prototype_regularizer: str = "none"
    regularizer_weight: float = 0.1  # lambda for KoLeo-proto
    # Extra keyword arguments of the prototype regularizer, e.g. KoLeo-proto's
    # {refresh_every: 10, num_candidates: 16} (see docs/koleo_large_k.md).
    prototype_regularizer_options: dict[str, Any] = field(default_factory=dict)
    # Regularizer of the student's marginal latent class distribution (MLCD):
    # "me-max" (MSN) or "prior-kl" (PMSN), added as mlcd_weight * term.
    mlcd_regularizer: str = "none"
    mlcd_weight: float = 1.0
    mlcd_options: dict[str, Any] = field(default_factory=dict)  # e.g. {tau: 0.25}
    # KoLeo on the student's normalized embeddings of the global crops (DINOv2).
    embedding_regularizer: str = "none"
    embedding_regularizer_weight: float = 0.1


@dataclass
class OptimConfig:
    """AdamW with DINO's cosine schedules for lr, weight decay and teacher momentum."""

    epochs: int = 20
    max_steps: int | None = None
    # "adamw" (DINO's default) or "sgd" (momentum 0.9, DINO's ResNet option); see
    # protossl.engine.optimizers and docs/recipe.md.
    optimizer: str = "adamw"
    lr: float = 5e-4  # for a batch of 256, scaled linearly (DINO)
    min_lr: float = 1e-6
    warmup_epochs: int = 2
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    momentum_teacher: float = 0.996
    clip_grad: float = 3.0  # 0 disables clipping
    freeze_last_layer_epochs: int = 1


@dataclass
class MonitorConfig:
    """What is measured during and after training."""

    eps: float = 0.025  # linking distance for unique prototypes M
    monitor_samples: int = 512  # test images whose teacher argmax gives prototype usage
    knn_k: int = 20
    knn_temperature: float = 0.07
    eval_knn: bool = True
    checkpoint_every_epochs: int = 0  # 0: only checkpoints/last.pt
    every_steps: int = 0  # >0: also measure collapse every N steps (TensorBoard monitor/*)


@dataclass
class RuntimeConfig:
    """Where and how fast a run executes; none of these changes the maths."""

    device: str = "auto"  # "auto" (CUDA when available, per LOCAL_RANK), "cpu", "cuda"
    # "fp32", or autocast "bf16" / "fp16" (fp16 with a gradient scaler; CUDA only).
    # KoLeo, Sinkhorn-Knopp, the vMF normalizer and the targets stay in float32 or float64.
    precision: str = "fp32"
    compile: bool = False  # torch.compile the backbones (in place: checkpoint keys unchanged)
    channels_last: bool = False  # memory format for convolutional backbones (ResNets)
    pin_memory: bool = True  # pinned host memory for batches going to a CUDA device


@dataclass
@add_section_fields
class Config:
    """The whole run: run-level settings, then one field per method section.

    The sections (``ibot``, ``msn``, ``swav``) are defined and registered next to their
    methods' settings in :mod:`protossl.method_config`; read one typed with
    :meth:`section`, or as an attribute (``cfg.ibot.mask_ratio``).
    """

    method: str = "dino"
    seed: int = 0
    num_threads: int = 0  # 0: leave torch's default
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    if typing.TYPE_CHECKING:
        # The section fields, added at import time: typed ``Any`` here; section() is typed.
        def __getattr__(self, name: str) -> Any: ...

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON friendly)."""
        return dataclasses.asdict(self)

    def section(self, kind: type[_S]) -> _S:
        """The method section of type ``kind`` (registered in ``SECTIONS``).

        >>> from protossl.method_config import IBOTConfig
        >>> Config().section(IBOTConfig).mask_ratio
        [0.1, 0.5]
        """
        for name, registered in SECTIONS.items():
            if registered is kind:
                value = getattr(self, name)
                assert isinstance(value, kind)
                return value
        raise KeyError(f"{kind.__qualname__} is not a registered config section")


# ---------------------------------------------------------------------------
# Presets and files


def available_presets() -> list[str]:
    """Names of the bundled presets (``protossl/presets/*.yaml``)."""
    folder = resources.files("protossl.presets")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def preset_description(name: str) -> str:
    """The first comment line of a preset file."""
    text = _read_preset_text(name)
    for line in text.splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def _read_preset_text(name: str) -> str:
    names = available_presets()
    if name not in names:
        raise UserError(
            f"unknown preset '{name}'{_did_you_mean(name, names)}; "
            f"known presets: {', '.join(names)}"
        )
    return (resources.files("protossl.presets") / f"{name}.yaml").read_text()


def _read_yaml_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    data = load_yaml_file(path, "config file")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(
            f"config file {path} must hold a mapping of keys, got {type(data).__name__}"
        )
    return data


# ---------------------------------------------------------------------------
# Merging


def _did_you_mean(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _merge_into(obj: Any, data: dict[str, Any], prefix: str = "") -> None:
    """Merge a nested mapping into a dataclass instance, checking every key."""
    types = _field_types(type(obj))
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in types:
            candidates = [f"{prefix}{k}" for k in types]
            raise UserError(
                f"unknown config key '{full}'{_did_you_mean(full, candidates)}; "
                f"run 'protossl presets --show dino' to see every key"
            )
        current = getattr(obj, key)
        if isinstance(current, dict) and isinstance(value, dict):
            # Option mappings merge key by key, so "--set objective.target_options.x=1"
            # keeps the preset's other options.
            merged = dict(current)
            merged.update(value)
            setattr(obj, key, coerce(merged, types[key], full))
        elif dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise UserError(f"{full} must be a mapping of keys (got {value!r})")
            _merge_into(current, value, prefix=f"{full}.")
        else:
            setattr(obj, key, coerce(value, types[key], full))


def _override_to_nested(override: str) -> dict[str, Any]:
    if "=" not in override:
        raise UserError(
            f"--set expects key=value (got '{override}'), e.g. model.num_prototypes=1024"
        )
    key, raw = override.split("=", 1)
    key = key.strip()
    if not key:
        raise UserError(f"--set expects key=value (got '{override}')")
    try:
        value = load_yaml(raw, f"--set {key}") if raw.strip() else raw
    except UserError as exc:
        if "not valid YAML" not in str(exc):
            raise  # too large, too many aliases, nested too deeply
        value = raw
    nested: dict[str, Any] = {}
    cursor = nested
    parts = key.split(".")
    for part in parts[:-1]:
        cursor = cursor.setdefault(part, {})
    cursor[parts[-1]] = value
    return nested


def load_config(
    preset: str | None = "dino",
    config_file: str | Path | None = None,
    overrides: list[str] | None = None,
) -> Config:
    """Build and validate a :class:`Config`: preset, then file, then ``key=value`` overrides."""
    cfg = Config()
    if preset is not None:
        data = load_yaml(_read_preset_text(preset), f"preset {preset}") or {}
        _merge_into(cfg, data)
    if config_file is not None:
        _merge_into(cfg, _read_yaml_file(config_file))
    for override in overrides or []:
        _merge_into(cfg, _override_to_nested(override))
    validate(cfg)
    return cfg


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply ``key=value`` overrides to an existing config and validate it again."""
    for override in overrides:
        _merge_into(cfg, _override_to_nested(override))
    validate(cfg)
    return cfg


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a validated :class:`Config` from :meth:`Config.to_dict` output."""
    cfg = Config()
    _merge_into(cfg, data)
    validate(cfg)
    return cfg


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the fully resolved configuration as YAML."""
    from protossl.core.files import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


# ---------------------------------------------------------------------------
# Validation


_require = require


def validate(cfg: Config) -> None:
    """Reject values that cannot train, with one line naming the key and the fix."""
    d, m, o, op, mo = cfg.data, cfg.model, cfg.objective, cfg.optim, cfg.monitor
    _require(m.num_prototypes >= 2, f"model.num_prototypes must be >= 2 (got {m.num_prototypes})")
    _require(o.teacher_temp > 0, f"objective.teacher_temp must be > 0 (got {o.teacher_temp})")
    _require(
        o.warmup_teacher_temp > 0,
        f"objective.warmup_teacher_temp must be > 0 (got {o.warmup_teacher_temp})",
    )
    _require(o.student_temp > 0, f"objective.student_temp must be > 0 (got {o.student_temp})")
    _require(
        0 <= o.center_momentum < 1,
        f"objective.center_momentum must be in [0, 1) (got {o.center_momentum})",
    )
    _require(
        o.regularizer_weight >= 0,
        f"objective.regularizer_weight (lambda) must be >= 0 (got {o.regularizer_weight})",
    )
    _require(
        o.warmup_teacher_temp_epochs >= 0,
        "objective.warmup_teacher_temp_epochs must be >= 0",
    )
    _require(d.image_size >= 4, f"data.image_size must be >= 4 (got {d.image_size})")
    _require(
        d.local_size is None or 4 <= d.local_size <= d.image_size,
        f"data.local_size must be null or between 4 and data.image_size (got {d.local_size})",
    )
    _require(d.num_local_crops >= 0, f"data.num_local_crops must be >= 0 (got {d.num_local_crops})")
    _require(d.batch_size >= 2, f"data.batch_size must be >= 2 (got {d.batch_size})")
    _require(d.num_workers >= 0, f"data.num_workers must be >= 0 (got {d.num_workers})")
    _require(
        d.augmentation in ("standard", "batched"),
        f"data.augmentation must be 'standard' or 'batched' (got {d.augmentation!r})",
    )
    for name in ("global_scale", "local_scale"):
        scale = getattr(d, name)
        _require(
            len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1,
            f"data.{name} must be [low, high] with 0 < low <= high <= 1 (got {scale})",
        )
    _require(m.head_layers >= 1, f"model.head_layers must be >= 1 (got {m.head_layers})")
    _require(m.bottleneck_dim >= 2, f"model.bottleneck_dim must be >= 2 (got {m.bottleneck_dim})")
    _require(m.head_hidden_dim >= 1, "model.head_hidden_dim must be >= 1")
    _require(op.epochs >= 1, f"optim.epochs must be >= 1 (got {op.epochs})")
    _require(
        op.max_steps is None or op.max_steps >= 1,
        f"optim.max_steps must be >= 1 or null (got {op.max_steps})",
    )
    _require(op.lr > 0, f"optim.lr must be > 0 (got {op.lr})")
    _require(
        op.optimizer in OPTIMIZER_NAMES,
        f"optim.optimizer must be one of {', '.join(OPTIMIZER_NAMES)} (got {op.optimizer!r})",
    )
    _require(op.min_lr >= 0, f"optim.min_lr must be >= 0 (got {op.min_lr})")
    _require(op.warmup_epochs >= 0, f"optim.warmup_epochs must be >= 0 (got {op.warmup_epochs})")
    _require(op.weight_decay >= 0 and op.weight_decay_end >= 0, "optim.weight_decay must be >= 0")
    _require(
        0 <= op.momentum_teacher <= 1,
        f"optim.momentum_teacher must be in [0, 1] (got {op.momentum_teacher})",
    )
    _require(op.clip_grad >= 0, f"optim.clip_grad must be >= 0 (got {op.clip_grad})")
    _require(op.freeze_last_layer_epochs >= 0, "optim.freeze_last_layer_epochs must be >= 0")
    _require(mo.eps > 0, f"monitor.eps must be > 0 (got {mo.eps})")
    _require(mo.monitor_samples >= 1, "monitor.monitor_samples must be >= 1")
    _require(mo.knn_k >= 1, f"monitor.knn_k must be >= 1 (got {mo.knn_k})")
    _require(mo.knn_temperature > 0, "monitor.knn_temperature must be > 0")
    _require(mo.checkpoint_every_epochs >= 0, "monitor.checkpoint_every_epochs must be >= 0")
    _require(mo.every_steps >= 0, f"monitor.every_steps must be >= 0 (got {mo.every_steps})")
    _require(
        m.prototype_layer in ("normalized", "vmf"),
        f"model.prototype_layer must be 'normalized' or 'vmf' (got {m.prototype_layer!r})",
    )
    _require(
        m.patch_num_prototypes is None or m.patch_num_prototypes >= 2,
        f"model.patch_num_prototypes must be >= 2 or null (got {m.patch_num_prototypes})",
    )
    _require(o.mlcd_weight >= 0, f"objective.mlcd_weight must be >= 0 (got {o.mlcd_weight})")
    _require(
        o.embedding_regularizer_weight >= 0,
        "objective.embedding_regularizer_weight must be >= 0",
    )
    rt = cfg.runtime
    _require(
        rt.device in ("auto", "cpu", "cuda"),
        f"runtime.device must be auto, cpu or cuda (got {rt.device!r})",
    )
    _require(
        rt.precision in ("fp32", "bf16", "fp16"),
        f"runtime.precision must be fp32, bf16 or fp16 (got {rt.precision!r})",
    )
    for name in SECTIONS:  # each method section checks its own keys
        getattr(cfg, name).validate()
    _require(cfg.num_threads >= 0, f"num_threads must be >= 0 (got {cfg.num_threads})")
