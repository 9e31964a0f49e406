"""``protossl embed``: the teacher's features and assignments of every image, on disk,
equal to an independent forward pass, and a run interrupted anywhere resumes to the same
files as an uninterrupted one."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_overrides

from protossl.config import load_config
from protossl.core.errors import UserError
from protossl.core.files import save_checkpoint_atomic
from protossl.core.run_layout import RunPaths
from protossl.data import EvalTransform, load_dataset
from protossl.evaluation.embed import embed
from protossl.methods import build_method
from protossl.runs.checkpoint import training_state
from protossl.runs.folder import write_marker

SPEC = "digits@lt=100"  # 354 training images


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder with a perturbed teacher (so the teacher, not the student, is tested)."""
    cfg = load_config("dino", overrides=tiny_overrides(model__num_prototypes=32))
    torch.manual_seed(0)
    method = build_method(cfg)
    with torch.no_grad():
        for param in method.teacher.parameters():
            param.add_(0.05 * torch.randn_like(param))
    root = tmp_path_factory.mktemp("embed") / "run"
    paths = RunPaths(root)
    paths.checkpoints.mkdir(parents=True)
    write_marker(root)
    save_checkpoint_atomic(
        training_state(cfg.to_dict(), 1, 1, 0.0, method.state_dict(), {}), paths.last_checkpoint
    )
    return root


def reference(run: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features, argmax prototype and its softmax probability, one image at a time."""
    from protossl.runs.checkpoint import load_method

    loaded = load_method(run / "checkpoints" / "last.pt")
    dataset = load_dataset(SPEC, "train", transform=EvalTransform(loaded.cfg.data.image_size))
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    with torch.no_grad():
        feats = loaded.method.teacher_features(images)
        logits = loaded.method.teacher_logits(images)
    probs = torch.softmax(logits / loaded.cfg.objective.teacher_temp, dim=-1)
    best, index = probs.max(dim=-1)
    return feats, index, best


def test_embed_equals_an_independent_forward(run: Path, tmp_path: Path) -> None:
    result = embed(run, SPEC, tmp_path / "out", batch_size=50, chunk_rows=120)
    feats, index, best = reference(run)
    out = tmp_path / "out"
    assert result.rows == len(feats) == 354 and result.dim == feats.shape[1]
    np.testing.assert_allclose(np.load(out / "features.npy"), feats.numpy(), atol=1e-5, rtol=0)
    assert np.array_equal(np.load(out / "prototype.npy"), index.numpy())
    np.testing.assert_allclose(np.load(out / "probability.npy"), best.numpy(), atol=1e-6)
    rows = list(csv.DictReader((out / "rows.csv").open()))
    assert [int(r["index"]) for r in rows] == list(range(354))
    assert [int(r["prototype"]) for r in rows] == index.tolist()
    counts = list(csv.DictReader((out / "prototype_counts.csv").open()))
    assert sum(int(c["images"]) for c in counts) == 354
    assert [int(c["images"]) for c in counts] == sorted(
        (int(c["images"]) for c in counts), reverse=True
    )
    assert json.loads((out / "embed.json").read_text())["complete"] is True


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("stop_at", [50, 150, 300])  # inside the 1st, 2nd and last chunk
def test_interrupted_embedding_resumes_to_the_same_files(
    run: Path, tmp_path: Path, stop_at: int
) -> None:
    embed(run, SPEC, tmp_path / "whole", batch_size=50, chunk_rows=120)

    def interrupt(rows: int) -> None:
        if rows >= stop_at:
            raise Interrupt

    with pytest.raises(Interrupt):
        embed(run, SPEC, tmp_path / "cut", batch_size=50, chunk_rows=120, after_batch=interrupt)
    state = json.loads((tmp_path / "cut" / "embed.json").read_text())
    assert state["complete"] is False and state["rows_done"] == 120 * (stop_at // 120)
    result = embed(run, SPEC, tmp_path / "cut", batch_size=50, chunk_rows=120)
    assert result.resumed_from == state["rows_done"]
    for name in [
        "features.npy",
        "prototype.npy",
        "probability.npy",
        "rows.csv",
        "clusters.csv",
        "prototype_counts.csv",
        "embed.json",
    ]:
        assert (tmp_path / "cut" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), (
            name
        )


def test_other_settings_need_force(run: Path, tmp_path: Path) -> None:
    embed(run, SPEC, tmp_path / "out", batch_size=100)
    with pytest.raises(UserError, match="not empty; pass --force"):
        embed(run, SPEC, tmp_path / "out", split="test")  # another split: not a resume
    result = embed(run, SPEC, tmp_path / "out", split="test", force=True)
    assert result.resumed_from == 0 and result.rows == len(load_dataset(SPEC, "test"))
    with pytest.raises(UserError, match="unknown --split"):
        embed(run, SPEC, tmp_path / "x", split="val")


def test_cli_killed_with_sigkill_resumes(run: Path, tmp_path: Path) -> None:
    """A real kill -9 between two chunk records, then the same command."""
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "protossl",
        "embed",
        str(run),
        "--data",
        SPEC,
        "--out",
        str(out),
        "--batch-size",
        "20",
        "--chunk-rows",
        "40",
        "--json",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        import time

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            state_file = out / "embed.json"
            if state_file.is_file():
                try:
                    if json.loads(state_file.read_text())["rows_done"] >= 80:
                        break
                except (json.JSONDecodeError, KeyError):
                    pass
            time.sleep(0.01)
        process.kill()
    finally:
        process.wait()
    finished = subprocess.run(command, capture_output=True, text=True, check=True)
    summary = json.loads(finished.stdout)
    assert summary["rows"] == 354
    embed(run, SPEC, tmp_path / "whole", batch_size=20, chunk_rows=40)
    for name in ["features.npy", "prototype.npy", "rows.csv"]:
        assert (out / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
