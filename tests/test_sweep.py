"""protossl sweep: grid expansion, failures recorded, finished runs skipped, results table."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from protossl.errors import UserError
from protossl.sweep import load_sweep, run_sweep

SHARED = """
set:
  data.batch_size: 256
  data.num_local_crops: 1
  model.backbone: vit_tiny
  model.num_prototypes: 16
  model.head_hidden_dim: 16
  model.bottleneck_dim: 8
  optim.max_steps: 1
  monitor.monitor_samples: 16
  monitor.eval_knn: false
  num_threads: 1
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return path


def test_grid_expands_every_combination_with_readable_names(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "preset: dino\n" + SHARED + "grid:\n  preset: [dino, dino-kp]\n  seed: [0, 1, 2]\n",
    )
    runs = load_sweep(path)
    assert [r.name for r in runs] == [
        "dino_seed-0",
        "dino_seed-1",
        "dino_seed-2",
        "dino-kp_seed-0",
        "dino-kp_seed-1",
        "dino-kp_seed-2",
    ]
    assert "seed=2" in runs[2].overrides and "model.num_prototypes=16" in runs[2].overrides


@pytest.mark.parametrize(
    "text,match",
    [
        ("grid:\n  model.num_prototypes: 5\n", "non-empty list"),
        ("grid:\n  model.nope: [1]\n", "unknown config key"),
        ("grid:\n  preset: [nope]\n", "unknown preset"),
        ("bogus: 1\n", "unknown keys"),
        ("grid:\n  model.num_prototypes: [1]\n", "num_prototypes"),
    ],
)
def test_bad_sweep_files_fail_before_anything_runs(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(UserError, match=match):
        load_sweep(write(tmp_path, text))


def test_sweep_runs_records_failures_and_skips_finished(tmp_path: Path) -> None:
    # The second grid point is valid as a config but fails at run time (no such folder).
    missing = tmp_path / "no_such_folder"
    path = write(tmp_path, SHARED + f"grid:\n  data.spec: [digits, 'folder:{missing}']\n")
    out = tmp_path / "out"
    lines: list[str] = []
    rows = run_sweep(path, out, echo=lines.append)
    by_status = {r["status"] for r in rows}
    assert by_status == {"done", "failed"}
    failed = next(r for r in rows if r["status"] == "failed")
    assert "no_such_folder" in failed["error"] or "not found" in failed["error"]
    done = next(r for r in rows if r["status"] == "done")
    assert done["K"] == 16 and 1 <= done["M"] <= 16
    with (out / "results.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert [row["run"] for row in table] == [r["run"] for r in rows]
    assert json.loads((out / "results.json").read_text()) == rows
    assert any("ETA" in line for line in lines)
    # Again: the finished run is skipped, only the broken one is retried.
    again: list[str] = []
    run_sweep(path, out, echo=again.append)
    assert "1 already finished, 1 to run" in again[0]


def test_interrupted_run_is_resumed(tmp_path: Path) -> None:
    from protossl.config import load_config
    from protossl.engine.trainer import Trainer

    text = SHARED.replace("optim.max_steps: 1", "optim.epochs: 2") + "grid:\n  seed: [0]\n"
    path = write(tmp_path, text)
    (run,) = load_sweep(path)
    out = tmp_path / "out"
    cfg = load_config(run.preset, overrides=list(run.overrides))
    Trainer(cfg, out / run.name, progress=False).fit(stop_after_epochs=1)
    lines: list[str] = []
    rows = run_sweep(path, out, echo=lines.append)
    assert any("resumed" in line for line in lines)
    assert rows[0]["status"] == "done" and rows[0]["steps"] == 10
