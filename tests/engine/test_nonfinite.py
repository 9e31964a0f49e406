"""Numbers you can trust: eval and report refuse NaN / inf checkpoints with one line, exit 2."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_overrides
from PIL import Image

from protossl.cli import main
from protossl.config import load_config
from protossl.core.errors import UserError
from protossl.core.files import load_checkpoint, save_checkpoint_atomic
from protossl.engine.trainer import Trainer
from protossl.evaluation.finite import nonfinite_rows, require_finite_features

TINY = tiny_overrides(
    data__spec="digits",
    model__num_prototypes=24,
    model__head_hidden_dim=32,
    model__bottleneck_dim=16,
    data__batch_size=8,
    optim__epochs=1,
    optim__max_steps=2,
    monitor__monitor_samples=8,
)
BAD_ROWS = (3, 7)


def _folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for split, count in (("train", 12), ("test", 4)):
        for c in range(2):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("nonfinite")
    data = _folder(base / "images")
    run = base / "run"
    threads = torch.get_num_threads()
    try:
        cfg = load_config("dino", overrides=[*TINY, f"data.spec=folder:{data}"])
        Trainer(cfg, run, progress=False).fit()
    finally:
        torch.set_num_threads(threads)
    return run


def _diverged_copy(trained: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    checkpoint = run / "checkpoints" / "last.pt"
    state = load_checkpoint(checkpoint)
    poisoned = 0
    for key, tensor in state["method"].items():
        if key.endswith("head.prototypes.weight"):
            for row in BAD_ROWS:
                tensor[row, 0] = float("nan")
            poisoned += 1
    assert poisoned >= 2  # student and teacher prototypes
    save_checkpoint_atomic(state, checkpoint)
    return run


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_nonfinite_rows_against_a_loop() -> None:
    rng = np.random.default_rng(1)
    values = rng.normal(size=(9, 4))
    values[2, 1], values[5, 3], values[8, 0] = np.nan, np.inf, -np.inf
    expected = [i for i in range(9) if not all(np.isfinite(v) for v in values[i])]
    assert nonfinite_rows(torch.from_numpy(values)) == expected == [2, 5, 8]
    assert nonfinite_rows(torch.tensor(float("nan"))) == [0]
    assert nonfinite_rows(torch.ones(3, 2, 2)) == []


def test_nonfinite_features_name_the_images() -> None:
    features = torch.zeros(4, 3)
    features[2, 0] = float("nan")
    with pytest.raises(UserError, match=r"1 of 4 images \(c\.png\)"):
        require_finite_features(features, "backbone features", ["a.png", "b.png", "c.png", "d.png"])
    require_finite_features(torch.zeros(4, 3), "backbone features")  # finite: nothing raised


def test_eval_refuses_a_diverged_checkpoint(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _diverged_copy(trained, tmp_path)
    data = f"folder:{trained.parent / 'images'}"
    before = (run / "summary.json").read_bytes()
    code, out, err = _cli(["eval", str(run), "--data", data, "--protocols", "knn,cluster"], capsys)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    assert "NaN or inf in 2 row(s) of 24 (3, 7)" in lines[0] and "earlier" in lines[0]
    assert (run / "summary.json").read_bytes() == before  # no numbers recorded
    assert not (run / "cache").exists()  # refused before any feature was computed
    # The same run, not poisoned, evaluates.
    code, _, err = _cli(["eval", str(trained), "--data", data, "--no-cache"], capsys)
    assert code == 0, err


def test_report_writes_the_page_and_exits_2_when_a_run_cannot_be_read(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _diverged_copy(trained, tmp_path)
    code, out, err = _cli(["report", str(run), "--out", str(tmp_path / "r"), "--no-cache"], capsys)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "could not be read" in lines[0] and "NaN or inf" in lines[0]
    assert (tmp_path / "r" / "index.html").is_file()  # the rest of the page is still there
    # Test images that no longer load (a moved folder) count as unread too.
    moved = tmp_path / "moved"
    shutil.copytree(trained, moved)
    shutil.move(str(trained.parent / "images"), str(tmp_path / "images_elsewhere"))
    try:
        code, _, err = _cli(
            ["report", str(moved), "--out", str(tmp_path / "m"), "--no-cache"], capsys
        )
    finally:
        shutil.move(str(tmp_path / "images_elsewhere"), str(trained.parent / "images"))
    assert code == 2 and "test images unavailable" in err and len(err.strip().splitlines()) == 1
    code, _, err = _cli(
        ["report", str(trained), "--out", str(tmp_path / "ok"), "--no-cache"], capsys
    )
    assert code == 0, err
