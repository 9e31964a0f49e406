"""protossl sweep: grid expansion, failures recorded, finished runs skipped, results table."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from protossl.core.errors import UserError
from protossl.sweep import collect, load_sweep, run_sweep

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


@pytest.mark.slow
def test_sweep_runs_records_failures_and_skips_finished(tmp_path: Path) -> None:
    # The second grid point is valid as a config but fails at run time (no such folder).
    missing = tmp_path / "no_such_folder"
    path = write(tmp_path, SHARED + f"grid:\n  data.spec: [digits, 'folder:{missing}']\n")
    out = tmp_path / "out"
    lines: list[str] = []
    rows = run_sweep(path, out, jobs=2, echo=lines.append)
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


@pytest.mark.slow
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


# ---------------------------------------------------------------- the eval section

# One run, trained on long-tailed data (a linked axis names it; the balanced/long-tailed
# axis of a real sweep has a second value: one run keeps this test fast).
GRID = """
grid:
  dataset:
    - {name: lt10, data.spec: "digits@lt=10"}
"""
# Evaluation always uses the balanced labels ({data_balanced}), and for the long-tail
# protocol their @lt=10 version, whatever the run trained on.
LONGTAIL = "{data: 'LABELS@lt=10', test_data: '{data_balanced}', protocols: longtail}"
BALANCED = "{data: '{data_balanced}', protocols: [knn, cluster]}"


def _summary(out: Path, run: str) -> dict[str, Any]:
    return json.loads((out / run / "summary.json").read_text())


@pytest.mark.slow
def test_evaluations_run_after_training_are_resumable_and_land_in_results(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "no_such_folder"
    broken = LONGTAIL.replace("LABELS", f"folder:{missing}")
    path = write(tmp_path, SHARED + GRID + f"eval:\n  - {broken}\n  - {BALANCED}\n")
    out = tmp_path / "out"
    lines: list[str] = []
    rows = run_sweep(path, out, jobs=2, echo=lines.append)
    assert [r["run"] for r in rows] == ["dino_lt10"]
    assert [r["data"] for r in rows] == ["digits@lt=10"]
    for row in rows:
        # The first evaluation fails and is recorded; the run's next one still runs.
        assert row["status"] == "failed", row
        assert row["error"].startswith("eval 1 (longtail): ") and "no_such_folder" in row["error"]
        assert row["K"] == 16 and "eval.longtail_linear_top1" not in row
        record = _summary(out, row["run"])["eval"]["runs"]["backbone|digits|digits"]
        # The row's eval.<metric> columns are the evaluation's own numbers.
        assert row["eval.knn_top1@20"] == record["knn_top1@20"]
        assert 0.0 <= row["eval.knn_top1@20"] <= 1.0
        assert row["eval.cluster_num_prototypes"] == 16
        assert not any(k.startswith("eval.runs") for k in row)
    assert sum(": eval 1 (longtail) FAILED: " in line for line in lines) == 1

    # The sweep file is fixed: no training, the kNN/cluster evaluation is kept, only the
    # long-tail one runs.
    path.write_text(SHARED + GRID + f"eval:\n  - {LONGTAIL.replace('LABELS', 'digits')}\n"
                    f"  - {BALANCED}\n")  # fmt: skip
    # Trained but with an evaluation still to come: not "done" (the results table skips it).
    assert collect(load_sweep(path), out, {})[0]["status"] == "partial"
    again: list[str] = []
    rows = run_sweep(path, out, jobs=2, echo=again.append)
    assert "0 already finished, 1 to run (1 only to evaluate)" in again[0]
    assert not any("started" in line for line in again)
    for row in rows:
        assert row["status"] == "done", row
        log = (out / row["run"] / "eval.log").read_text()
        assert log.count("--protocols knn,cluster") == 1 and log.count("--protocols longtail") == 2
        record = _summary(out, row["run"])["eval"]["runs"]["backbone|digits@lt=10|digits"]
        assert row["eval.longtail_linear_few_top1"] == record["longtail_linear_few_top1"]
        # digits@lt=10 keeps floor(n_max * 10^(-c/9)) images of class c: the largest class
        # keeps all of them, the rarest about a tenth.
        assert row["eval.longtail_imbalance"] == pytest.approx(10, rel=0.15)
    with (out / "results.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert float(table[0]["eval.knn_top1@20"]) == pytest.approx(rows[0]["eval.knn_top1@20"])
    assert table[0]["eval.longtail_linear_top1"] != ""

    # Once more: neither training nor evaluation runs, nothing is rewritten.
    stamps = {r["run"]: (out / r["run"] / "summary.json").stat().st_mtime_ns for r in rows}
    third: list[str] = []
    assert run_sweep(path, out, jobs=2, echo=third.append) == rows
    assert "1 already finished, 0 to run" in third[0]
    assert not any(line.startswith("[") or ": eval " in line for line in third[1:])
    assert stamps == {r: (out / r / "summary.json").stat().st_mtime_ns for r in stamps}


@pytest.mark.parametrize(
    "section,match",
    [
        ("eval: {data: digits}\n", "must be a list"),
        ("eval:\n  - {data: digits, protocols: [knn], bogus: 1}\n", "unknown keys"),
        ("eval:\n  - {data: digits, protocols: [knn, nope]}\n", "unknown protocol"),
        ("eval:\n  - {protocols: [knn]}\n", "'data' is required"),
        ("eval:\n  - {data: digits}\n", "'protocols' is required"),
        ("eval:\n  - {data: '{nope}', protocols: [knn]}\n", "unknown placeholder"),
        ("eval:\n  - {data: 'digits@lt=0', protocols: [knn]}\n", "long-tail ratio"),
        ("eval:\n  - {data: digits, protocols: [knn], features: nope}\n", "unknown features"),
        (
            "eval:\n  - {data: digits, protocols: [knn]}\n  - {data: digits, protocols: knn}\n",
            "already in entry 1",
        ),
    ],
)
def test_bad_eval_section_fails_before_anything_runs(
    tmp_path: Path, section: str, match: str
) -> None:
    path = write(tmp_path, "grid:\n  seed: [0]\n" + section)
    with pytest.raises(UserError, match=match):
        run_sweep(path, tmp_path / "out", echo=lambda line: None)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_linked_axis_sets_keys_together_and_placeholders_follow_the_run(tmp_path: Path) -> None:
    text = (
        "grid:\n  dataset:\n"
        "    - {name: balanced, data.spec: digits, optim.max_steps: 4}\n"
        "    - {name: lt100, data.spec: 'digits@lt=100', optim.max_steps: 16}\n"
        "  seed: [0]\n"
        "eval:\n  - {data: '{data}', test_data: '{data_balanced}', protocols: [knn]}\n"
    )
    runs = load_sweep(write(tmp_path, text))
    assert [r.name for r in runs] == ["dino_balanced_seed-0", "dino_lt100_seed-0"]
    assert "optim.max_steps=16" in runs[1].overrides
    assert "data.spec=digits@lt=100" in runs[1].overrides
    assert runs[1].grid_values == {
        "dataset": "lt100",
        "data.spec": "digits@lt=100",
        "optim.max_steps": 16,
        "seed": 0,
    }
    (task,) = runs[1].evals
    assert (task.data, task.test_data, task.protocols) == ("digits@lt=100", "digits", ("knn",))
    assert task.label == "backbone|digits@lt=100|digits"
    assert runs[0].evals[0].data == "digits"


@pytest.mark.parametrize(
    "grid,match",
    [
        ("  dataset:\n    - {data.spec: digits}\n    - digits\n", "mixes mappings"),
        ("  dataset:\n    - {name: a}\n", "sets no key"),
        ("  a:\n    - {seed: 1}\n  b:\n    - {seed: 2}\n", "set by two axes"),
        ("  data:\n    - {data.spec: digits}\n", "a column of results.csv"),
    ],
)
def test_bad_linked_axes(tmp_path: Path, grid: str, match: str) -> None:
    with pytest.raises(UserError, match=match):
        load_sweep(write(tmp_path, "grid:\n" + grid))


def test_cifar10_sweep_file_is_valid_and_complete() -> None:
    # The committed protocol: dino and dino-kp at K 1,024 on balanced and long-tailed
    # CIFAR-10, the balanced runs first, every run evaluated with every protocol.
    path = Path(__file__).resolve().parents[2] / "sweeps" / "cifar10.yaml"
    runs = load_sweep(path)
    assert len(runs) == 2 * 2
    assert {r.preset for r in runs} == {"dino", "dino-kp"}
    specs = [r.grid_values["data.spec"] for r in runs]
    assert [s.endswith("@lt=100") for s in specs] == [False, False, True, True]
    for run in runs:
        assert "model.num_prototypes=1024" in run.overrides
        assert "optim.max_steps=8000" in run.overrides
        protocols = {p for task in run.evals for p in task.protocols}
        assert protocols == {"knn", "linear", "fewshot", "cluster", "longtail"}
        assert all("@lt" not in (t.test_data or t.data) for t in run.evals)
