"""End-to-end ``protossl eval`` on a tiny trained run, and the feature cache."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from protossl.cli import main
from protossl.config import load_config
from protossl.data import EvalTransform, load_dataset
from protossl.engine.trainer import Trainer
from protossl.evaluation.cache import FeatureCache, dataset_fingerprint, feature_key
from protossl.evaluation.features import extract_features, feature_encoder
from protossl.evaluation.knn import knn_accuracy
from protossl.evaluation.released import load_for_evaluation
from protossl.evaluation.run_eval import PROTOCOLS, evaluate_run

TINY = [
    "model.backbone=vit_tiny",
    "model.num_prototypes=16",
    "model.head_hidden_dim=32",
    "model.bottleneck_dim=16",
    "data.num_local_crops=1",
    "data.batch_size=8",
    "optim.epochs=1",
    "optim.max_steps=2",
    "monitor.eval_knn=false",
    "monitor.monitor_samples=8",
]
ALL = ",".join(PROTOCOLS)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("eval") / "run"
    threads = torch.get_num_threads()
    try:
        Trainer(load_config("dino", overrides=TINY), run, progress=False).fit()
    finally:
        torch.set_num_threads(threads)
    return run


@pytest.fixture
def run(trained: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ----------------------------------------------------------------------------- CLI


def test_cli_eval_all_protocols_json_and_summary(
    run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _cli(
        ["eval", str(run), "--data", "digits", "--protocols", ALL, "--json"], capsys
    )
    assert code == 0, err
    assert len(out.strip().splitlines()) == 1
    result = json.loads(out)
    res = result["results"]
    assert result["protocols"] == list(PROTOCOLS)
    for k in (10, 20, 100, 200):
        assert 0.0 <= res[f"knn_top1@{k}"] <= res[f"knn_top5@{k}"] <= 1.0
    for n in (1, 2, 5, 13):
        assert 0.0 <= res[f"fewshot_{n}shot_top1_mean"] <= 1.0
    assert 0.0 <= res["linear_top1"] <= 1.0 and res["linear_lr"] in (0.01, 0.1, 1.0)
    assert 0.0 <= res["cluster_nmi"] <= 1.0 and 1 <= res["cluster_clusters_used"] <= 16
    assert res["cluster_num_images"] == 359 and res["cluster_num_prototypes"] == 16
    # Balanced digits: every class has ~115 training images, so all ten are many-shot.
    assert res["longtail_knn_many_classes"] == 10 and res["longtail_knn_few_top1"] is None
    assert res["longtail_knn_top1"] == res["knn_top1@20"]
    assert res["longtail_linear_top1"] == res["linear_top1"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["eval"]["knn_top1@20"] == res["knn_top1@20"]
    assert summary["eval"]["runs"]["backbone|digits|digits"]["cluster_nmi"] == res["cluster_nmi"]
    assert summary["K"] == 16  # the rest of the summary is kept
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


def test_cli_knn_matches_direct_computation_and_human_table(
    run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _cli(["eval", str(run), "--data", "digits", "--no-cache"], capsys)
    assert code == 0 and out == ""
    assert "knn_top1@20" in err and "knn_top1@200" in err
    loaded = load_for_evaluation(run)
    transform = EvalTransform(loaded.cfg.data.image_size)
    encode = feature_encoder(loaded.method, "backbone")
    xtr, ytr = extract_features(encode, load_dataset("digits", "train", transform=transform))
    xte, yte = extract_features(encode, load_dataset("digits", "test", transform=transform))
    expected = knn_accuracy(xtr, ytr, xte, yte, 10, ks=(10, 20, 100, 200))
    summary = json.loads((run / "summary.json").read_text())
    for key, value in expected.items():
        assert summary["eval"][key] == pytest.approx(value)
        assert f"{key} " in err
    assert not (run / "cache").exists()  # --no-cache writes nothing


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--protocols", "knn,segmentation"], "unknown protocol(s) segmentation"),
        (["--protocols", ","], "(none given)"),
        (["--data", "imagenet:/x"], "unknown data spec"),
        (["--test-data", "folder:/nonexistent/protossl-eval"], "does not exist"),
    ],
)
def test_cli_bad_arguments_are_one_line_and_change_nothing(
    run: Path, capsys: pytest.CaptureFixture[str], argv: list[str], match: str
) -> None:
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    args = ["eval", str(run), "--data", "digits", *argv, "--json"]
    code, out, err = _cli(args, capsys)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and match in err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_cli_missing_run_and_bad_summary(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _cli(["eval", str(tmp_path / "nope"), "--data", "digits"], capsys)
    assert code == 2 and "does not exist" in err and len(err.strip().splitlines()) == 1
    (run / "summary.json").write_text("{not json")
    code, _, err = _cli(["eval", str(run), "--data", "digits"], capsys)
    assert code == 2 and "summary.json" in err
    assert not (run / "cache").exists()  # refused before any work


def test_eval_of_a_checkpoint_file_leaves_summary_alone(run: Path) -> None:
    before = (run / "summary.json").read_bytes()
    out = evaluate_run(run / "checkpoints" / "last.pt", "digits", None, ["cluster"])
    assert 0.0 <= out["results"]["cluster_purity"] <= 1.0
    assert (run / "summary.json").read_bytes() == before
    assert out["cache"]["dir"] == str(run / "cache")  # still the run's cache


def test_bottleneck_features_are_the_unit_norm_head_embedding(run: Path) -> None:
    evaluate_run(run, "digits", None, ["knn"], features="bottleneck")
    files = sorted((run / "cache").glob("features-*.pt"))
    assert len(files) == 2
    for file in files:
        state = torch.load(file, weights_only=True)
        assert state["features"].shape[1] == 16  # model.bottleneck_dim
        norms = state["features"].norm(dim=1)
        torch.testing.assert_close(norms, torch.ones_like(norms))
        assert state["meta"]["kind"] == "bottleneck"


# ----------------------------------------------------------------------------- cache


def test_cache_hit_miss_and_checkpoint_invalidation(run: Path) -> None:
    first = evaluate_run(run, "digits", None, ["knn"])
    assert first["cache"] == {"dir": str(run / "cache"), "hits": 0, "misses": 2}
    second = evaluate_run(run, "digits", None, ["knn"])
    assert (second["cache"]["hits"], second["cache"]["misses"]) == (2, 0)
    assert second["results"] == first["results"]
    # New data: the train split changes, so does the spec of the test split.
    third = evaluate_run(run, "digits@lt=10", None, ["knn"])
    assert third["cache"]["misses"] == 2
    # New weights with the same path, size and mtime: content hashing still sees them.
    ckpt = run / "checkpoints" / "last.pt"
    stat = ckpt.stat()
    state = torch.load(ckpt, weights_only=True)
    g = torch.Generator().manual_seed(0)
    for key, value in state["method"].items():
        if key.startswith("teacher.backbone") and value.is_floating_point():
            state["method"][key] = value + 0.5 * torch.randn(value.shape, generator=g)
    torch.save(state, ckpt)
    os.utime(ckpt, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    fourth = evaluate_run(run, "digits", None, ["knn"])
    assert (fourth["cache"]["hits"], fourth["cache"]["misses"]) == (0, 2)
    assert fourth["results"] != first["results"]


def test_corrupt_cache_entry_is_a_miss_and_is_rewritten(run: Path) -> None:
    evaluate_run(run, "digits", None, ["knn"])
    files = sorted((run / "cache").glob("features-*.pt"))
    files[0].write_bytes(b"garbage")
    again = evaluate_run(run, "digits", None, ["knn"])
    assert (again["cache"]["hits"], again["cache"]["misses"]) == (1, 1)
    assert torch.load(files[0], weights_only=True)["features"].ndim == 2


def test_feature_cache_unit(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path / "c")
    calls = []

    def compute() -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(1)
        return torch.ones(3, 2), torch.tensor([0, 1, 0])

    a = cache.get_or_compute("k1", compute)
    b = cache.get_or_compute("k1", compute)
    assert len(calls) == 1 and torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert (cache.hits, cache.misses) == (1, 1)
    assert not [p for p in (tmp_path / "c").iterdir() if p.name.startswith(".")]
    disabled = FeatureCache(None)
    disabled.get_or_compute("k1", compute)
    assert len(calls) == 2


def test_feature_key_changes_with_every_field() -> None:
    base = {
        "checkpoint_digest": "abc",
        "spec": "digits",
        "split": "train",
        "transform": "EvalTransform(image_size=16)",
        "dataset": "fp",
        "kind": "backbone",
    }
    key = feature_key(**base)
    for field, value in [
        ("checkpoint_digest", "abd"),
        ("spec", "digits@lt=10"),
        ("split", "test"),
        ("transform", "EvalTransform(image_size=32)"),
        ("dataset", "fp2"),
        ("kind", "bottleneck"),
    ]:
        assert feature_key(**{**base, field: value}) != key
    assert feature_key(**base) == key


def test_dataset_fingerprint_sees_added_and_edited_images(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(
                tmp_path / c / f"{i}.png"
            )
    spec = f"folder:{tmp_path}"
    fp = dataset_fingerprint(load_dataset(spec, "train"))
    assert dataset_fingerprint(load_dataset(spec, "train")) == fp
    victim = next(iter(load_dataset(spec, "train").files or []))
    Image.fromarray(np.zeros((9, 9, 3), dtype=np.uint8)).save(victim)  # edited: new size
    edited = dataset_fingerprint(load_dataset(spec, "train"))
    assert edited != fp
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "a" / "new.png")
    assert dataset_fingerprint(load_dataset(spec, "train")) not in (fp, edited)
