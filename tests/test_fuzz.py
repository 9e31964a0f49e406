"""Fuzzing the two readers that take files from anywhere: YAML configurations and checkpoints.

The promise checked here: whatever the bytes, protossl's readers return a result or raise
:class:`~protossl.core.errors.UserError` (one line for the CLI). Any other exception would be a
traceback in front of the user. Hypothesis runs derandomized (the same examples every
time, so CI is repeatable) with modest example counts; the hand-written hostile cases
below cover what random text is unlikely to hit (alias bombs, deep nesting, huge scalars,
Python tags, files over the size limit, bytes that are not UTF-8).
"""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protossl.config import Config, load_config
from protossl.core.errors import UserError
from protossl.core.files import load_checkpoint
from protossl.core.safe_yaml import MAX_YAML_CHARS, load_yaml
from protossl.diagnostics.checkpoints import read_prototype_heads


def fuzz(examples: int) -> settings:
    """Derandomized (the same examples on every run), no deadline (CI machines vary)."""
    return settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )


def _real_keys() -> list[str]:
    """Every ``section.field`` of the configuration, from the dataclasses themselves."""
    data = Config().to_dict()
    return [
        f"{section}.{name}"
        for section, fields in data.items()
        if isinstance(fields, dict)
        for name in fields
    ]


KEYS = _real_keys()


def _result_or_user_error(call: Any, *args: Any) -> None:
    """The promise: a value, or a UserError whose message is one non-empty line."""
    try:
        call(*args)
    except UserError as err:
        message = str(err)
        assert message and "\n" not in message.strip(), repr(message)


# -------------------------------------------------------------------------------- YAML

yaml_scalars = st.one_of(
    st.integers(-(10**30), 10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=20),
)
yaml_values = st.recursive(
    yaml_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@fuzz(300)
@given(st.text(max_size=400))
def test_random_text_as_yaml_gives_data_or_one_line(text: str) -> None:
    _result_or_user_error(load_yaml, text, "fuzzed text")


@fuzz(80)
@given(
    st.dictionaries(st.sampled_from(KEYS), yaml_values, max_size=6),
)
def test_structured_config_files_over_real_keys(tmp_path_factory: Any, entries: dict) -> None:
    # Nested as a real config file would be, with values of every YAML type.
    import yaml

    nested: dict[str, dict[str, Any]] = {}
    for key, value in entries.items():
        section, name = key.split(".", 1)
        nested.setdefault(section, {})[name] = value
    path = tmp_path_factory.mktemp("cfg") / "config.yaml"
    path.write_text(yaml.safe_dump(nested))
    _result_or_user_error(load_config, "dino", path)


@fuzz(80)
@given(
    st.lists(
        st.tuples(st.sampled_from(KEYS + ["model", "nope.key", ""]), st.text(max_size=30)),
        max_size=4,
    )
)
def test_random_set_overrides(pairs: list[tuple[str, str]]) -> None:
    _result_or_user_error(load_config, "dino", None, [f"{k}={v}" for k, v in pairs])


@fuzz(80)
@given(st.text(max_size=60))
def test_override_strings_without_structure(override: str) -> None:
    _result_or_user_error(load_config, "dino", None, [override])


HOSTILE_YAML = {
    "billion laughs": "a: &a [x,x,x,x,x,x,x,x,x]\n"
    + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n"
        for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    ),
    "recursive alias": "a: &a [*a]\n",
    "deep nesting": "[" * 10_000 + "]" * 10_000,
    "deep mapping": "a: " * 3_000 + "1",
    "huge integer": "model: {num_prototypes: " + "9" * 5_000 + "}",
    "python object tag": "model: !!python/object/apply:os.system ['echo owned']",
    "python name tag": "x: !!python/name:os.system",
    "too long": "# " + "x" * MAX_YAML_CHARS,
    "tabs and garbage": "\t:\n\t- : [\x00",
    "duplicate anchors": "a: &x 1\nb: &x 2\nc: *x\n",
    "binary tag": "data: !!binary '!!!notbase64'",
    "timestamp": "optim: {lr: 2026-12-07}",
}


@pytest.mark.parametrize("name", sorted(HOSTILE_YAML))
def test_hostile_yaml_is_one_line_or_harmless(name: str, tmp_path: Path) -> None:
    text = HOSTILE_YAML[name]
    _result_or_user_error(load_yaml, text, name)
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(UserError):  # none of these is a valid protossl configuration
        load_config("dino", path)


def test_a_config_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(b"model:\n  backbone: \xff\xfe\x00cnn\n")
    with pytest.raises(UserError) as err:
        load_config("dino", path)
    assert str(err.value).count("\n") == 0


def test_the_billion_laughs_is_refused_quickly() -> None:
    with pytest.raises(UserError, match="alias|nodes|large"):
        load_yaml(HOSTILE_YAML["billion laughs"], "bomb")


# -------------------------------------------------------------------------- checkpoints


def _protossl_like_checkpoint() -> bytes:
    torch.manual_seed(0)
    state = {
        "format": "protossl",
        "version": 1,
        "epoch": 3,
        "config": {"model": {"num_prototypes": 16}},
        "student": {
            "head.prototypes.weight": torch.randn(16, 8),
            "head.mlp.0.weight": torch.randn(8, 8),
        },
        "teacher": {"head.prototypes.weight": torch.randn(16, 8)},
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def _official_dino_checkpoint() -> bytes:
    torch.manual_seed(1)
    head = {
        "module.head.last_layer.weight_g": torch.ones(16, 1),
        "module.head.last_layer.weight_v": torch.randn(16, 8),
        "module.head.mlp.0.weight": torch.randn(8, 8),
    }
    buffer = io.BytesIO()
    torch.save(
        {"student": head, "teacher": {k[7:]: v for k, v in head.items()}, "epoch": 10}, buffer
    )
    return buffer.getvalue()


SEEDS = {"protossl": _protossl_like_checkpoint(), "dino": _official_dino_checkpoint()}


def _read_both(path: Path) -> None:
    _result_or_user_error(load_checkpoint, path)
    _result_or_user_error(read_prototype_heads, path)


@fuzz(60)
@given(
    seed_name=st.sampled_from(sorted(SEEDS)),
    cut=st.floats(0.0, 1.0),
    flips=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(1, 255)), max_size=8),
)
def test_truncated_and_bit_flipped_checkpoints(
    tmp_path_factory: Any, seed_name: str, cut: float, flips: list[tuple[float, int]]
) -> None:
    data = bytearray(SEEDS[seed_name])
    for where, mask in flips:
        data[int(where * (len(data) - 1))] ^= mask
    data = data[: max(0, int(cut * len(data)))] if cut < 0.98 else data
    path = tmp_path_factory.mktemp("ckpt") / "fuzzed.pt"
    path.write_bytes(bytes(data))
    _read_both(path)


@fuzz(30)
@given(st.binary(max_size=600))
def test_random_bytes_as_a_checkpoint(tmp_path_factory: Any, data: bytes) -> None:
    path = tmp_path_factory.mktemp("ckpt") / "random.pt"
    path.write_bytes(data)
    _read_both(path)


tensors = st.builds(
    lambda rows, cols, dtype, kind: (
        torch.zeros(rows, cols, dtype=dtype)
        if kind == "zeros"
        else torch.full((rows, cols), float("nan")).to(dtype)
        if kind == "nan"
        else torch.randn(rows, cols).to(dtype)
    ),
    st.integers(0, 6),
    st.integers(0, 6),
    st.sampled_from(
        [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.bool]
    ),
    st.sampled_from(["zeros", "nan", "random"]),
)
names = st.sampled_from(
    [
        "head.prototypes.weight",
        "head.last_layer.weight_v",
        "head.last_layer.weight_g",
        "module.head.last_layer.weight",
        "prototypes",
        "prototypes.weight",
        "student",
        "teacher",
        "target_encoder",
        "format",
        "module.prototypes.weight",
        "dino_head.last_layer.weight_v",
        "ibot_head.last_layer.weight_g",
        "x",
    ]
)
structures = st.recursive(
    st.one_of(tensors, st.integers(), st.text(max_size=5), st.none()),
    lambda children: st.dictionaries(names, children, max_size=5),
    max_leaves=10,
)


@fuzz(60)
@given(st.dictionaries(names, structures, min_size=1, max_size=5))
def test_random_structures_of_tensors(tmp_path_factory: Any, state: dict[str, Any]) -> None:
    path = tmp_path_factory.mktemp("ckpt") / "structure.pt"
    torch.save(state, path)
    _read_both(path)


def test_a_seeded_mutation_sweep_of_every_byte_region(tmp_path: Path) -> None:
    """Zero every 64-byte block of a real checkpoint in turn: each read is a result or one line."""
    data = SEEDS["dino"]
    rng = random.Random(0)
    for start in range(0, len(data), 64):
        mutated = bytearray(data)
        mutated[start : start + 64] = bytes(rng.randrange(256) for _ in range(64))[
            : len(data) - start
        ]
        path = tmp_path / f"block_{start}.pt"
        path.write_bytes(bytes(mutated))
        _read_both(path)
