"""torchrun on CPU (gloo): 2 processes with global batch B equal 1 process with batch B.

Tolerance: parameters after the run agree to 1e-4 absolute (seen: ~5e-6 after 4
steps; float32 gradients are summed in another order), logged losses to 1e-5.
Each case launches real processes through the command line, as users do.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

TINY = [
    "data.batch_size=64",
    "data.num_local_crops=2",
    "model.backbone=vit_tiny",
    "model.num_prototypes=32",
    "model.head_hidden_dim=32",
    "model.bottleneck_dim=16",
    "optim.warmup_epochs=0",
    "optim.freeze_last_layer_epochs=0",
    "monitor.eval_knn=false",
    "monitor.monitor_samples=32",
    "num_threads=1",
]
ENV = dict(os.environ, OMP_NUM_THREADS="1", PROTOSSL_DIST_TIMEOUT="60")


def _sets(extra: list[str]) -> list[str]:
    args: list[str] = []
    for item in [*TINY, *extra]:
        args += ["--set", item]
    return args


def train(out: Path, preset: str, extra: list[str], nproc: int = 1, resume: bool = False) -> None:
    if nproc == 1:
        cmd = [sys.executable, "-m", "protossl", "train"]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        cmd += ["--nproc_per_node", str(nproc), "-m", "protossl", "train"]
    cmd += ["--out", str(out)]
    cmd += ["--resume"] if resume else ["--preset", preset, *_sets(extra)]
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def params(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)["method"]


def losses(run: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_run(a: Path, b: Path) -> None:
    pa, pb = params(a), params(b)
    assert pa.keys() == pb.keys()
    for key in pa:
        torch.testing.assert_close(pa[key], pb[key], atol=1e-4, rtol=0, msg=key)
    assert losses(a) == pytest.approx(losses(b), abs=1e-5)


CASES = [
    ("dino", []),
    ("dino-kp", []),
    pytest.param("dino", ["data.augmentation=batched"], id="dino-batched-augmentation"),
    pytest.param("dino", ["objective.target=sinkhorn"], id="dino-sinkhorn"),
]


@pytest.mark.slow
@pytest.mark.parametrize("preset,extra", CASES)
def test_two_processes_equal_one(tmp_path: Path, preset: str, extra: list[str]) -> None:
    extra = [*extra, "optim.max_steps=4"]
    train(tmp_path / "one", preset, extra)
    train(tmp_path / "two", preset, extra, nproc=2)
    assert_same_run(tmp_path / "one", tmp_path / "two")
    # Only rank 0 wrote: one metrics line per epoch, one summary.
    assert len(losses(tmp_path / "two")) == 1
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["finished"]


@pytest.mark.slow
def test_resume_with_another_process_count(tmp_path: Path) -> None:
    # 2 epochs of 5 steps (digits@lt=100: 354 images, global batch 64): straight on
    # one process, or the first epoch on two processes and the second resumed on one.
    extra = ["data.spec=digits@lt=100", "data.batch_size=64", "optim.epochs=2"]
    train(tmp_path / "one", "dino-kp", extra)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "protossl", "train", "--preset", "dino-kp", "--out", str(tmp_path / "mixed")]
    cmd += ["--stop-after-epochs", "1", *_sets(extra)]
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    train(tmp_path / "mixed", "dino-kp", [], resume=True)
    assert_same_run(tmp_path / "one", tmp_path / "mixed")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_a_dead_rank_stops_the_other_with_one_line_and_the_run_resumes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    port = _free_port()
    cmd = [sys.executable, "-m", "protossl", "train", "--preset", "dino", "--out", str(run)]
    cmd += _sets(["data.batch_size=128", "optim.epochs=50"])
    procs = []
    for rank in (0, 1):
        env = dict(ENV, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
        env |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(
            subprocess.Popen(
                cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    try:
        deadline = time.monotonic() + 120
        while not (run / "checkpoints" / "last.pt").exists():
            assert time.monotonic() < deadline, "no checkpoint after 120 s"
            assert procs[0].poll() is None, procs[0].communicate()[1][-2000:]
            time.sleep(0.2)
        procs[1].send_signal(signal.SIGKILL)
        started = time.monotonic()
        _, err = procs[0].communicate(timeout=120)
        waited = time.monotonic() - started
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert procs[0].returncode == 2
    last = err.strip().splitlines()[-1]
    assert "a training process stopped" in last and "--resume" in last
    assert "Traceback" not in err
    assert waited < 90
    # The checkpoint is intact and the run continues on one process.
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] >= 1
    resumed = subprocess.run(
        [
            sys.executable,
            "-m",
            "protossl",
            "train",
            "--out",
            str(run),
            "--resume",
            "--set",
            "optim.epochs=2",
        ],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
