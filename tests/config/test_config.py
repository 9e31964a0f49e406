"""Configuration: presets, YAML files, ``--set`` overrides, type coercion and validation.

Every test asserts something that can fail: exact coerced values and types, the
order in which sources override each other, and that each rejection is a
``UserError`` whose one-line message names the offending key.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import yaml

from protossl.config import (
    Config,
    apply_overrides,
    available_presets,
    config_from_dict,
    load_config,
    save_config,
    validate,
)
from protossl.core.errors import UserError


def _raises_user_error(*, match: str, **kwargs) -> str:
    """load_config(**kwargs) must raise a one-line UserError containing ``match``."""
    with pytest.raises(UserError) as info:
        load_config(**kwargs)
    message = str(info.value)
    assert match in message, message
    assert "\n" not in message, message
    return message


# ------------------------------------------------------------------------ presets


def test_bundled_presets_are_listed() -> None:
    names = available_presets()
    assert "dino" in names and "dino-kp" in names
    assert names == sorted(names)


@pytest.mark.parametrize("preset", ["dino", "dino-kp"])
def test_every_preset_loads_and_validates(preset: str) -> None:
    cfg = load_config(preset)
    assert isinstance(cfg, Config)
    assert cfg.method == "dino"
    validate(cfg)  # idempotent: a loaded config is valid


def test_presets_differ_only_where_the_recipe_says() -> None:
    dino, kp = load_config("dino"), load_config("dino-kp")
    assert dino.objective.prototype_regularizer == "none"
    assert kp.objective.prototype_regularizer == "koleo"
    assert kp.objective.regularizer_weight == pytest.approx(0.1)
    # Everything outside the regularizer is identical.
    d, k = dino.to_dict(), kp.to_dict()
    d["objective"].pop("prototype_regularizer")
    k["objective"].pop("prototype_regularizer")
    assert d == k


def test_no_preset_gives_the_dataclass_defaults() -> None:
    assert load_config(preset=None) == Config()


def test_unknown_preset_suggests_the_near_miss() -> None:
    message = _raises_user_error(preset="dino_kp", match="unknown preset 'dino_kp'")
    assert "did you mean 'dino-kp'" in message
    assert "dino, dino-kp" in message


# ------------------------------------------------------------- overrides and coercion


def test_set_overrides_coerce_types() -> None:
    cfg = load_config(
        "dino",
        overrides=[
            "model.num_prototypes=256",
            "optim.lr=1e-3",  # PyYAML reads 1e-3 as a string; it must become a float
            "objective.teacher_temp=0.07",
            "optim.clip_grad=0",  # int literal into a float field
            "model.use_bn_in_head=true",
            "monitor.eval_knn=off",
            "data.global_scale=[0.3, 1]",
            "data.local_scale=[0.1,0.3]",
            "optim.max_steps=12",
            "data.local_size=8",
            "data.spec=folder:/some/where@lt=10",
            "seed=7",
        ],
    )
    assert cfg.model.num_prototypes == 256 and type(cfg.model.num_prototypes) is int
    assert cfg.optim.lr == 1e-3 and type(cfg.optim.lr) is float
    assert cfg.objective.teacher_temp == 0.07
    assert cfg.optim.clip_grad == 0.0 and type(cfg.optim.clip_grad) is float
    assert cfg.model.use_bn_in_head is True
    assert cfg.monitor.eval_knn is False
    assert cfg.data.global_scale == [0.3, 1.0]
    assert all(type(v) is float for v in cfg.data.global_scale)
    assert cfg.data.local_scale == [0.1, 0.3]
    assert cfg.optim.max_steps == 12 and type(cfg.optim.max_steps) is int
    assert cfg.data.local_size == 8
    assert cfg.data.spec == "folder:/some/where@lt=10"
    assert cfg.seed == 7


@pytest.mark.parametrize("text", ["null", "None", "none", "~"])
def test_null_clears_an_optional_field(text: str) -> None:
    cfg = load_config("dino", overrides=["optim.max_steps=5", f"optim.max_steps={text}"])
    assert cfg.optim.max_steps is None


def test_whole_number_float_becomes_int_but_fraction_is_rejected() -> None:
    assert load_config("dino", overrides=["optim.epochs=3.0"]).optim.epochs == 3
    _raises_user_error(preset="dino", overrides=["optim.epochs=2.5"], match="optim.epochs")


def test_value_may_contain_equals_sign() -> None:
    cfg = load_config("dino", overrides=["data.spec=folder:/a=b"])
    assert cfg.data.spec == "folder:/a=b"


def test_later_override_wins() -> None:
    cfg = load_config("dino", overrides=["model.num_prototypes=64", "model.num_prototypes=32"])
    assert cfg.model.num_prototypes == 32


def test_source_order_preset_then_file_then_overrides(tmp_path: Path) -> None:
    # The dino-kp preset sets regularizer_weight 0.1; the file changes it and the
    # head width; the override changes the head width again.
    file = tmp_path / "cfg.yaml"
    file.write_text(
        "objective:\n  regularizer_weight: 0.5\nmodel:\n  head_hidden_dim: 64\n"
        "  num_prototypes: 128\n"
    )
    cfg = load_config("dino-kp", file, ["model.head_hidden_dim=48"])
    assert cfg.objective.prototype_regularizer == "koleo"  # preset, untouched by the file
    assert cfg.objective.regularizer_weight == 0.5  # file beats preset
    assert cfg.model.num_prototypes == 128  # file beats the defaults
    assert cfg.model.head_hidden_dim == 48  # override beats file
    # And a file beats the preset even for a key the preset sets.
    file.write_text("objective:\n  prototype_regularizer: none\n")
    assert load_config("dino-kp", file).objective.prototype_regularizer == "none"


def test_empty_config_file_changes_nothing(tmp_path: Path) -> None:
    file = tmp_path / "empty.yaml"
    file.write_text("# nothing here\n")
    assert load_config("dino", file) == load_config("dino")


def test_apply_overrides_revalidates() -> None:
    cfg = load_config("dino")
    assert apply_overrides(cfg, ["model.num_prototypes=8"]).model.num_prototypes == 8
    with pytest.raises(UserError, match="model.num_prototypes"):
        apply_overrides(cfg, ["model.num_prototypes=1"])


# --------------------------------------------------------------------- round trips


@pytest.mark.parametrize("preset", ["dino", "dino-kp"])
def test_to_dict_round_trips(preset: str) -> None:
    cfg = load_config(preset, overrides=["optim.max_steps=9", "data.local_size=6"])
    again = config_from_dict(cfg.to_dict())
    assert again == cfg
    assert again is not cfg
    # Changing the copy does not change the original (no shared lists).
    again.data.global_scale[0] = 0.9
    assert cfg.data.global_scale[0] != 0.9


def test_saved_yaml_round_trips(tmp_path: Path) -> None:
    cfg = load_config("dino-kp", overrides=["optim.max_steps=null", "data.batch_size=64"])
    path = tmp_path / "config.yaml"
    save_config(cfg, path)
    loaded = yaml.safe_load(path.read_text())
    assert loaded == cfg.to_dict()
    assert config_from_dict(loaded) == cfg
    # The saved file is also a valid --config file on top of any preset.
    assert load_config("dino", path) == cfg


def test_to_dict_covers_every_field() -> None:
    data = Config().to_dict()
    for f in dataclasses.fields(Config):
        assert f.name in data
    assert set(data["model"]) == {f.name for f in dataclasses.fields(type(Config().model))}


# ---------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("model.num_prototypes=1", "model.num_prototypes"),
        ("model.num_prototypes=0", "model.num_prototypes"),
        ("objective.regularizer_weight=-0.1", "objective.regularizer_weight"),
        ("objective.teacher_temp=0", "objective.teacher_temp"),
        ("objective.teacher_temp=-0.04", "objective.teacher_temp"),
        ("objective.teacher_temp=nan", "objective.teacher_temp"),
        ("objective.warmup_teacher_temp=0", "objective.warmup_teacher_temp"),
        ("objective.student_temp=0", "objective.student_temp"),
        ("objective.center_momentum=1.0", "objective.center_momentum"),
        ("objective.center_momentum=-0.1", "objective.center_momentum"),
        ("objective.warmup_teacher_temp_epochs=-1", "objective.warmup_teacher_temp_epochs"),
        ("data.global_scale=[0.5, 0.4]", "data.global_scale"),
        ("data.global_scale=[0, 1]", "data.global_scale"),
        ("data.global_scale=[0.4, 1.5]", "data.global_scale"),
        ("data.global_scale=[0.4]", "data.global_scale"),
        ("data.local_scale=[0.05, 0.2, 0.4]", "data.local_scale"),
        ("data.batch_size=1", "data.batch_size"),
        ("data.image_size=3", "data.image_size"),
        ("data.num_local_crops=-1", "data.num_local_crops"),
        ("data.num_workers=-1", "data.num_workers"),
        ("model.head_layers=0", "model.head_layers"),
        ("model.bottleneck_dim=1", "model.bottleneck_dim"),
        ("model.head_hidden_dim=0", "model.head_hidden_dim"),
        ("optim.epochs=0", "optim.epochs"),
        ("optim.max_steps=0", "optim.max_steps"),
        ("optim.lr=0", "optim.lr"),
        ("optim.min_lr=-1e-6", "optim.min_lr"),
        ("optim.warmup_epochs=-1", "optim.warmup_epochs"),
        ("optim.weight_decay=-0.1", "optim.weight_decay"),
        ("optim.weight_decay_end=-0.1", "optim.weight_decay"),
        ("optim.momentum_teacher=1.5", "optim.momentum_teacher"),
        ("optim.clip_grad=-1", "optim.clip_grad"),
        ("optim.freeze_last_layer_epochs=-1", "optim.freeze_last_layer_epochs"),
        ("monitor.eps=0", "monitor.eps"),
        ("monitor.monitor_samples=0", "monitor.monitor_samples"),
        ("monitor.knn_k=0", "monitor.knn_k"),
        ("monitor.knn_temperature=0", "monitor.knn_temperature"),
        ("monitor.checkpoint_every_epochs=-1", "monitor.checkpoint_every_epochs"),
        ("num_threads=-1", "num_threads"),
    ],
)
def test_validation_rejects_and_names_the_key(override: str, key: str) -> None:
    _raises_user_error(preset="dino", overrides=[override], match=key)


@pytest.mark.parametrize(
    "override",
    [
        "model.num_prototypes=2",
        "objective.regularizer_weight=0",
        "objective.center_momentum=0",
        "data.batch_size=2",
        "data.num_local_crops=0",
        "data.global_scale=[1, 1]",
        "optim.momentum_teacher=1",
        "optim.warmup_epochs=0",
        "optim.clip_grad=0",
    ],
)
def test_validation_accepts_boundary_values(override: str) -> None:
    load_config("dino", overrides=[override])


def test_validation_also_guards_files(tmp_path: Path) -> None:
    file = tmp_path / "bad.yaml"
    file.write_text("model:\n  num_prototypes: 1\n")
    _raises_user_error(preset="dino", config_file=file, match="model.num_prototypes")


def test_config_from_dict_validates() -> None:
    data = Config().to_dict()
    data["objective"]["student_temp"] = 0.0
    with pytest.raises(UserError, match="objective.student_temp"):
        config_from_dict(data)


# ------------------------------------------------------------------- unknown keys


def test_unknown_key_suggests_the_near_miss() -> None:
    message = _raises_user_error(
        preset="dino", overrides=["model.num_prototype=5"], match="'model.num_prototype'"
    )
    assert "did you mean 'model.num_prototypes'" in message


def test_unknown_top_level_key_suggests_the_near_miss() -> None:
    message = _raises_user_error(preset="dino", overrides=["sead=3"], match="'sead'")
    assert "did you mean 'seed'" in message


def test_unknown_key_far_from_everything_has_no_suggestion() -> None:
    message = _raises_user_error(
        preset="dino", overrides=["model.zzzzqqqq=5"], match="'model.zzzzqqqq'"
    )
    assert "did you mean" not in message


def test_unknown_section() -> None:
    message = _raises_user_error(preset="dino", overrides=["modle.num_prototypes=5"], match="modle")
    assert "did you mean 'model'" in message
    _raises_user_error(preset="dino", overrides=["nosuchsection.key=1"], match="nosuchsection")


def test_unknown_key_in_a_file(tmp_path: Path) -> None:
    file = tmp_path / "cfg.yaml"
    file.write_text("optim:\n  learning_rate: 0.1\n")
    _raises_user_error(preset="dino", config_file=file, match="optim.learning_rate")


def test_section_given_a_scalar_is_rejected() -> None:
    _raises_user_error(preset="dino", overrides=["model=5"], match="model")


def test_scalar_given_a_mapping_is_rejected() -> None:
    _raises_user_error(
        preset="dino", overrides=["model.num_prototypes.x=5"], match="model.num_prototypes"
    )


@pytest.mark.parametrize("override", ["model.num_prototypes", "=5", " =5"])
def test_override_without_key_value_is_rejected(override: str) -> None:
    _raises_user_error(preset="dino", overrides=[override], match="key=value")


# ------------------------------------------------------------------- bad files


def test_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    _raises_user_error(preset="dino", config_file=missing, match=str(missing))
    _raises_user_error(preset="dino", config_file=missing, match="not found")


def test_directory_as_config_file(tmp_path: Path) -> None:
    _raises_user_error(preset="dino", config_file=tmp_path, match=str(tmp_path))


@pytest.mark.parametrize("text", ["- 1\n- 2\n", "just a string\n", "42\n"])
def test_non_mapping_yaml_file(tmp_path: Path, text: str) -> None:
    file = tmp_path / "cfg.yaml"
    file.write_text(text)
    _raises_user_error(preset="dino", config_file=file, match="mapping")


@pytest.mark.parametrize("text", ["model: [1, 2\n", "a: b: c\n", "model:\n  k: 1\n k2: 2\n"])
def test_invalid_yaml_file(tmp_path: Path, text: str) -> None:
    file = tmp_path / "cfg.yaml"
    file.write_text(text)
    _raises_user_error(preset="dino", config_file=file, match="not valid YAML")


# ---------------------------------------------------------------------- wrong types


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("optim.epochs=abc", "optim.epochs"),
        ("optim.epochs=true", "optim.epochs"),  # a bool is not an integer
        ("model.num_prototypes=[1, 2]", "model.num_prototypes"),
        ("model.use_bn_in_head=maybe", "model.use_bn_in_head"),
        ("model.use_bn_in_head=2", "model.use_bn_in_head"),
        ("optim.lr=fast", "optim.lr"),
        ("optim.lr=false", "optim.lr"),
        ("optim.max_steps=lots", "optim.max_steps"),
        ("data.global_scale=0.5", "data.global_scale"),
        ("data.global_scale=[a, 1]", "data.global_scale"),
        ("data.spec=[1, 2]", "data.spec"),
        ("method={a: 1}", "method"),
    ],
)
def test_wrong_types_are_user_errors(override: str, key: str) -> None:
    _raises_user_error(preset="dino", overrides=[override], match=key)


def test_wrong_type_in_file(tmp_path: Path) -> None:
    file = tmp_path / "cfg.yaml"
    file.write_text("optim:\n  epochs: ten\n")
    _raises_user_error(preset="dino", config_file=file, match="optim.epochs")


def test_unparsable_list_value_is_a_user_error() -> None:
    _raises_user_error(preset="dino", overrides=["data.global_scale=[0.4,"], match="global_scale")


@pytest.mark.parametrize(("text", "expected"), [("1", True), ("0", False)])
def test_bool_accepts_one_and_zero_from_the_command_line(text: str, expected: bool) -> None:
    assert load_config("dino", overrides=[f"monitor.eval_knn={text}"]).monitor.eval_knn is expected


@pytest.mark.parametrize("value", ["2", "64"])
def test_local_size_out_of_range_is_a_user_error(value):
    from protossl.config import load_config
    from protossl.core.errors import UserError

    with pytest.raises(UserError, match="data.local_size"):
        load_config("dino", overrides=[f"data.local_size={value}"])


def test_optimizer_is_validated_and_built_with_dino_groups() -> None:
    from protossl.engine.optimizers import SGD_MOMENTUM, build_optimizer

    with pytest.raises(UserError, match="optim.optimizer must be one of adamw, sgd"):
        load_config("dino", overrides=["optim.optimizer=lamb"])
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    sgd = build_optimizer("sgd", net)
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.param_groups[0]["momentum"] == SGD_MOMENTUM
    # Decayed group: the Linear weight only; biases and BatchNorm parameters never decay.
    assert [p.shape for p in sgd.param_groups[0]["params"]] == [torch.Size([3, 4])]
    assert len(sgd.param_groups[1]["params"]) == 3 and sgd.param_groups[1]["weight_decay"] == 0
    assert isinstance(build_optimizer("adamw", net), torch.optim.AdamW)


# --------------------------------------------------------------- method sections


def test_every_method_section_is_a_config_field_after_the_run_level_ones() -> None:
    from protossl.method_config import SECTIONS, IBOTConfig, MSNConfig, SwAVConfig

    assert dict(SECTIONS) == {"ibot": IBOTConfig, "msn": MSNConfig, "swav": SwAVConfig}
    names = [f.name for f in dataclasses.fields(Config)]
    assert names[-len(SECTIONS) :] == list(SECTIONS)  # saved config.yaml keeps its key order
    cfg = Config()
    assert cfg.section(MSNConfig) is cfg.msn and isinstance(cfg.swav, SwAVConfig)


def test_every_section_belongs_to_a_registered_method() -> None:
    from protossl.method_config import SECTIONS
    from protossl.methods import METHODS

    assert set(SECTIONS) <= set(METHODS)


def test_a_section_name_cannot_be_registered_twice() -> None:
    from protossl.method_config import MSNConfig, register_section

    with pytest.raises(ValueError, match="config section 'ibot' is already registered"):
        register_section("ibot")(MSNConfig)


def test_an_unregistered_class_is_not_a_section() -> None:
    from protossl.method_config import MethodSection

    with pytest.raises(KeyError, match="not a registered config section"):
        Config().section(MethodSection)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("ibot.mask_ratio=[0.6, 0.2]", "ibot.mask_ratio"),
        ("ibot.mask_ratio=[0.1, 1.0]", "ibot.mask_ratio"),
        ("ibot.mask_probability=1.5", "ibot.mask_probability"),
        ("ibot.patch_teacher_temp=0", "ibot.patch_teacher_temp"),
        ("ibot.patch_loss_weight=-1", "ibot.patch_loss_weight"),
        ("msn.mask_ratio=1", "msn.mask_ratio"),
        ("msn.sharpen_temp=0", "msn.sharpen_temp"),
        ("swav.epsilon=0", "swav.epsilon"),
        ("swav.sinkhorn_iterations=0", "swav.sinkhorn_iterations"),
        ("swav.freeze_prototypes_steps=-1", "swav.freeze_prototypes_steps"),
        ("swav.queue_length=-1", "swav.queue_length"),
        ("swav.queue_start_epoch=-1", "swav.queue_start_epoch"),
    ],
)
def test_method_sections_validate_their_own_keys(override: str, key: str) -> None:
    _raises_user_error(preset="dino", overrides=[override], match=key)


def test_a_saved_config_of_an_earlier_run_still_loads(tmp_path: Path) -> None:
    # The config.yaml format (top-level ibot:, msn:, swav:) is unchanged by the sections.
    path = tmp_path / "config.yaml"
    save_config(load_config("ibot"), path)
    text = path.read_text()
    assert [line for line in text.splitlines() if not line.startswith(" ")][-3:] == [
        "ibot:",
        "msn:",
        "swav:",
    ]
    assert load_config(None, path) == load_config("ibot")
