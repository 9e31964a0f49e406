"""Run folders are owned and have one writer; a killed sweep leaves no training behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_overrides

from protossl.cli import main
from protossl.config import load_config
from protossl.core.errors import UserError
from protossl.engine.trainer import Trainer
from protossl.runs.folder import MARKER_NAME, FolderLock, claim_run_folder, is_run_folder
from protossl.sweep import run_sweep

TINY = tiny_overrides(
    data__spec="digits",  # the full digits set, not the tiny run's long-tailed split
    model__num_prototypes=16,
    model__head_hidden_dim=16,
    model__bottleneck_dim=8,
    data__batch_size=16,
    optim__epochs=1,
    optim__max_steps=2,
    monitor__monitor_samples=8,
)
ROOT = Path(__file__).resolve().parents[2]


def _train_cli(out: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    argv = ["train", "--preset", "dino", "--out", str(out)]
    for item in TINY:
        argv += ["--set", item]
    code = main(argv)
    return code, capsys.readouterr().err


def _files(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _env() -> dict[str, str]:
    # Children import this checkout's protossl, whatever is installed.
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def test_train_refuses_a_foreign_folder_and_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "config.yaml").write_text("my: own settings\n")
    (foreign / "metrics.jsonl").write_text('{"mine": 1}\n')
    before = _files(foreign)
    code, err = _train_cli(foreign, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "not a protossl run folder" in err and "config.yaml" in err
    assert _files(foreign) == before  # nothing replaced, nothing added
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    code, err = _train_cli(a_file, capsys)
    assert code == 2 and "is a file" in err and a_file.read_text() == "x"


def test_a_new_or_empty_folder_becomes_a_marked_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    threads = torch.get_num_threads()
    try:
        code, err = _train_cli(empty, capsys)
    finally:
        torch.set_num_threads(threads)
    assert code == 0, err
    marker = json.loads((empty / MARKER_NAME).read_text())
    assert set(marker) == {"protossl", "created", "run_id"} and len(marker["run_id"]) == 32
    assert is_run_folder(empty)
    # A run written before the marker existed is still protossl's.
    (empty / MARKER_NAME).unlink()
    (empty / "checkpoints" / "last.pt").rename(empty / "checkpoints" / "old.pt")
    assert is_run_folder(empty)  # its config.yaml is a protossl configuration
    (empty / "config.yaml").write_text("method: dino\n")
    assert not is_run_folder(empty)


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = load_config("dino", overrides=TINY)
    threads = torch.get_num_threads()
    try:
        with FolderLock(run), pytest.raises(UserError, match=f"pid {os.getpid()}"):
            Trainer(cfg, run, progress=False)
        # Released: the run trains, and fit releases the lock again when it ends.
        trainer = Trainer(cfg, run, progress=False)
        trainer.fit()
    finally:
        torch.set_num_threads(threads)
    FolderLock(run).release()  # free again


def test_the_lock_dies_with_its_process(tmp_path: Path) -> None:
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from protossl.runs.folder import FolderLock; "
            f"lock = FolderLock({str(run)!r}); print('locked', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        env=_env(),
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"locked"
        with pytest.raises(UserError, match=f"pid {holder.pid}"):
            FolderLock(run)
    finally:
        holder.kill()  # SIGKILL: no chance to clean up
        holder.wait()
    FolderLock(run).release()  # the OS dropped the lock with the process


SWEEP = """
preset: dino
set:
  data.spec: digits
  model.backbone: cnn_tiny
  model.num_prototypes: 16
  model.head_hidden_dim: 16
  model.bottleneck_dim: 8
  data.image_size: 8
  data.num_local_crops: 1
  data.batch_size: 16
  optim.epochs: 200
  monitor.eval_knn: false
  monitor.monitor_samples: 8
  num_threads: 1
grid:
  seed: [0]
"""


def _wait_for_training(run: Path, sweep_pid: int, timeout: float = 60.0) -> int:
    """The pid of the training child, once it holds the run folder's lock."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lock = run / ".lock"
        text = lock.read_text().strip() if lock.is_file() else ""
        if text and int(text) != sweep_pid:
            return int(text)
        time.sleep(0.2)
    raise AssertionError(f"no training started in {run}")


def _lock_frees(run: Path, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            FolderLock(run).release()
            return True
        except UserError:
            time.sleep(0.2)
    return False


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_sweep_leaves_no_training_behind(tmp_path: Path, how: signal.Signals) -> None:
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(SWEEP)
    out = tmp_path / "out"
    sweep = subprocess.Popen(
        [sys.executable, "-m", "protossl", "sweep", str(sweep_file), "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=_env(),
    )
    try:
        run = out / "dino_seed-0"
        _wait_for_training(run, sweep.pid)
        # Meanwhile a second sweep on the same folder is refused, naming the first.
        with pytest.raises(UserError, match=rf"sweep folder .*\(pid {sweep.pid}\)"):
            run_sweep(sweep_file, out)
        sweep.send_signal(how)
        sweep.wait(timeout=60)
        assert _lock_frees(run), "the training child outlived its sweep"
        if how == signal.SIGTERM:
            assert sweep.returncode != 0
            assert sweep.stderr is not None and b"Traceback" not in sweep.stderr.read()
    finally:
        if sweep.poll() is None:
            sweep.kill()
            sweep.wait()


def test_temporaries_of_interrupted_writes_are_removed_at_the_next_start(tmp_path: Path) -> None:
    from protossl.core.files import _open_temp_next_to

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"checkpoint")
    # What a writer killed between write and rename leaves: the same names it creates.
    fd, left_over = _open_temp_next_to(run / "checkpoints" / "last.pt")
    os.write(fd, b"x" * 1000)
    os.close(fd)
    (run / f".summary.json.{os.getpid()}.tmp").write_text("{")
    keep = [run / "checkpoints" / "last.pt", run / "notes.tmp", run / ".hidden"]
    for path in keep[1:]:
        path.write_text("mine")
    with claim_run_folder(run):
        assert not left_over.exists() and not (run / f".summary.json.{os.getpid()}.tmp").exists()
        assert all(path.exists() for path in keep)
