"""Tests for atomic checkpoint saving and weights-only loading."""

from __future__ import annotations

import os
import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from protossl.core.errors import UserError
from protossl.core.files import (
    load_checkpoint,
    save_checkpoint_atomic,
    to_weights_only_safe,
)


class _Payload:
    """Unpickling this creates ``marker`` (a stand-in for arbitrary code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class _SystemPayload:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _state() -> dict:
    torch.manual_seed(0)
    return {
        "model": torch.nn.Linear(3, 2).state_dict(),
        "step": 7,
        "lr": 1e-3,
        "name": "dino",
        "history": [1.0, 2.0],
        "config": {"k": 256, "eps": [0.025, 0.05]},
        "none": None,
    }


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "last.pt"
    state = _state()
    save_checkpoint_atomic(state, path)
    loaded = load_checkpoint(path)
    assert loaded.keys() == state.keys()
    for key, value in state["model"].items():
        torch.testing.assert_close(loaded["model"][key], value)
    assert {k: v for k, v in loaded.items() if k != "model"} == {
        k: v for k, v in state.items() if k != "model"
    }
    assert os.listdir(path.parent) == ["last.pt"]  # no temporary file left behind
    torch.nn.Linear(3, 2).load_state_dict(loaded["model"])


def test_overwrite_replaces_content(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint_atomic({"step": 1}, str(path))
    save_checkpoint_atomic({"step": 2}, str(path))
    assert load_checkpoint(str(path)) == {"step": 2}


def test_failed_save_leaves_original_untouched(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint_atomic({"step": 1}, path)
    before = path.read_bytes()

    def exploding_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")  # write something, then die midway
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", exploding_save)
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint_atomic({"step": 2}, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["last.pt"]


def test_interrupted_first_save_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    def interrupted(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint_atomic({"step": 1}, tmp_path / "last.pt")
    assert os.listdir(tmp_path) == []


def test_save_rejects_non_dict(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="dict"):
        save_checkpoint_atomic([1, 2], tmp_path / "x.pt")  # type: ignore[arg-type]


def test_saved_file_respects_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        save_checkpoint_atomic({"a": 1}, tmp_path / "a.pt")
    finally:
        os.umask(old)
    assert (tmp_path / "a.pt").stat().st_mode & 0o777 == 0o644


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="is a directory"):
        load_checkpoint(tmp_path)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize(
    "corrupt",
    [
        lambda good: good[: len(good) // 2],  # truncated zip
        lambda good: b"",  # empty
        lambda good: b"hello, this is not a checkpoint",  # garbage
        lambda good: pickle.dumps({"a": 1}),  # plain pickle, not torch format
    ],
    ids=["truncated", "empty", "garbage", "plain-pickle"],
)
def test_corrupt_files(tmp_path: Path, corrupt) -> None:
    good_path = tmp_path / "good.pt"
    save_checkpoint_atomic(_state(), good_path)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(corrupt(good_path.read_bytes()))
    with pytest.raises(UserError) as info:
        load_checkpoint(bad)
    message = str(info.value)
    assert str(bad) in message
    assert "\n" not in message
    assert "corrupt" in message


@pytest.mark.parametrize("payload_cls", [_Payload, _SystemPayload])
def test_malicious_pickle_is_refused(tmp_path: Path, payload_cls) -> None:
    # Sanity check that the payload really runs code when loaded unsafely.
    probe_marker = tmp_path / "probe_marker"
    probe = tmp_path / "probe.pt"
    torch.save({"x": payload_cls(probe_marker)}, probe)
    torch.load(probe, weights_only=False)
    assert probe_marker.exists()

    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pt"
    torch.save({"model": {}, "x": payload_cls(marker)}, evil)
    with pytest.raises(UserError, match="refused to load") as info:
        load_checkpoint(evil)
    assert "only tensors and plain containers are allowed" in str(info.value)
    assert "\n" not in str(info.value)
    assert not marker.exists()


def test_numpy_is_refused_with_hint(tmp_path: Path) -> None:
    path = tmp_path / "np.pt"
    torch.save({"hist": np.arange(3)}, path)
    with pytest.raises(UserError, match="to_weights_only_safe"):
        load_checkpoint(path)


def test_non_dict_top_level(tmp_path: Path) -> None:
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(UserError, match="not a dict"):
        load_checkpoint(path)


def test_to_weights_only_safe_converts_numpy(tmp_path: Path) -> None:
    state = {
        "hist": np.arange(4, dtype=np.int64),
        "matrix": np.ones((2, 3), dtype=np.float32)[:, ::-1],  # non-contiguous view
        "lr": np.float64(0.5),
        "step": np.int32(3),
        "flag": np.bool_(True),
        "shape": (2, np.int64(3)),
        "names": np.array(["a", "b"]),
        "nested": [{"m": np.zeros(2)}],
        np.int64(5): "numpy key",
        "path": Path("runs/x"),
        "tensor": torch.arange(3),
    }
    safe = to_weights_only_safe(state)
    torch.testing.assert_close(safe["hist"], torch.arange(4))
    assert safe["matrix"].shape == (2, 3) and safe["matrix"].dtype == torch.float32
    assert safe["lr"] == 0.5 and type(safe["lr"]) is float
    assert safe["step"] == 3 and type(safe["step"]) is int
    assert safe["flag"] is True
    assert safe["shape"] == [2, 3] and type(safe["shape"][1]) is int
    assert safe["names"] == ["a", "b"]
    assert isinstance(safe["nested"][0]["m"], torch.Tensor)
    assert safe[5] == "numpy key" and type(next(k for k in safe if k == 5)) is int
    assert safe["path"] == "runs/x"
    assert safe["tensor"] is state["tensor"]

    # The converted state loads with weights_only=True; the raw one does not.
    save_checkpoint_atomic(safe, tmp_path / "safe.pt")
    loaded = load_checkpoint(tmp_path / "safe.pt")
    torch.testing.assert_close(loaded["hist"], torch.arange(4))
    save_checkpoint_atomic(state, tmp_path / "raw.pt")
    with pytest.raises(UserError, match="refused"):
        load_checkpoint(tmp_path / "raw.pt")


def test_to_weights_only_safe_keeps_state_dict_metadata() -> None:
    sd = torch.nn.Linear(2, 2).state_dict()
    safe = to_weights_only_safe(sd)
    assert isinstance(safe, OrderedDict)
    assert safe._metadata == sd._metadata
    assert to_weights_only_safe(sd) is not sd
    torch.nn.Linear(2, 2).load_state_dict(safe)
