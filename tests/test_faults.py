"""Fault injection: interrupted, killed and starved runs lose nothing and resume bit-exactly.

Every case ends with the same check: the run, continued with the command a user would
type next (``--resume`` when a checkpoint exists, else the same command again), ends in
exactly the state of an uninterrupted run (every tensor of the model and the optimizer,
and the metrics). The fault classes, what protossl promises for each and the case
counts are listed in docs/faults.md.
"""

from __future__ import annotations

import errno
import json
import os
import random
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import tiny_overrides

from protossl.cli import main
from protossl.config import load_config
from protossl.core import files as checkpoint_module
from protossl.core.files import load_checkpoint
from protossl.engine.trainer import TIMING_KEYS, Trainer

ROOT = Path(__file__).resolve().parents[1]
# 354 training images (digits@lt=100), 5 steps of 64 per epoch, 4 epochs: 20 steps.
TINY = tiny_overrides(
    data__batch_size=64,
    model__num_prototypes=32,
    model__head_hidden_dim=32,
    model__bottleneck_dim=16,
    optim__epochs=4,
    optim__warmup_epochs=1,
    monitor__monitor_samples=64,
)
EPOCHS = 4


def _argv(out: Path, resume: bool) -> list[str]:
    if resume:
        return ["train", "--out", str(out), "--resume"]
    argv = ["train", "--preset", "dino", "--out", str(out)]
    for item in TINY:
        argv += ["--set", item]
    return argv


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _last(run: Path) -> Path:
    return run / "checkpoints" / "last.pt"


def _continue_argv(run: Path) -> list[str]:
    """What a user types after an interruption."""
    return _argv(run, resume=_last(run).is_file())


def _final_state(run: Path) -> dict[str, Any]:
    state = load_checkpoint(_last(run))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    metrics = [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]
    return {"state": state, "metrics": metrics}


def _assert_same_run(got: dict[str, Any], want: dict[str, Any]) -> None:
    a, b = got["state"], want["state"]
    assert (a["epoch"], a["step"]) == (b["epoch"], b["step"]) == (EPOCHS, 5 * EPOCHS)
    assert a["method"].keys() == b["method"].keys()
    for key, value in a["method"].items():
        assert torch.equal(value, b["method"][key]), key
    for (ka, va), (kb, vb) in zip(
        a["optimizer"]["state"].items(), b["optimizer"]["state"].items(), strict=True
    ):
        assert ka == kb and va.keys() == vb.keys()
        for name in va:
            assert torch.equal(va[name], vb[name]), (ka, name)
    assert got["metrics"] == want["metrics"]
    assert [row["epoch"] for row in got["metrics"]] == list(range(EPOCHS))


def _no_temporaries(run: Path) -> bool:
    return not [p for p in run.rglob(".*.tmp")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    run = tmp_path_factory.mktemp("faults") / "uninterrupted"
    threads = torch.get_num_threads()
    try:
        Trainer(load_config("dino", overrides=TINY), run, progress=False).fit()
    finally:
        torch.set_num_threads(threads)
    return _final_state(run)


def _finish_in_process(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    threads = torch.get_num_threads()
    try:
        code = main(_continue_argv(run))
    finally:
        torch.set_num_threads(threads)
    assert code == 0, capsys.readouterr().err


# --------------------------------------------------------------- signals at random points


class _Child:
    """A ``protossl train`` subprocess whose stderr is collected while it runs."""

    def __init__(self, argv: list[str]) -> None:
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "protossl", *argv],
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_until_training(self, run: Path, timeout: float = 120.0) -> bool:
        """True once this child holds the run's lock (training has begun)."""
        deadline = time.monotonic() + timeout
        lock = run / ".lock"
        while time.monotonic() < deadline and self.process.poll() is None:
            text = lock.read_text().strip() if lock.is_file() else ""
            if text == str(self.process.pid):
                return True
            time.sleep(0.05)
        return False

    def finish(self) -> tuple[int, list[str]]:
        code = self.process.wait(timeout=300)
        self._reader.join(timeout=30)
        return code, self.lines


# (phase, signal): start-up is process start, imports and set-up; training is anywhere
# after the run folder is claimed (steps, monitoring, metrics, checkpoint writes).
PLAN = [
    ("start-up", signal.SIGINT),
    ("training", signal.SIGKILL),
    ("training", signal.SIGINT),
    ("start-up", signal.SIGKILL),
    ("training", signal.SIGINT),
    ("training", signal.SIGKILL),
]


@pytest.mark.slow
def test_random_sigint_and_sigkill_then_resume_is_bit_identical(
    tmp_path: Path, reference: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    rng = random.Random(15)
    run = tmp_path / "run"
    hit = 0
    for phase, sig in PLAN:
        child = _Child(_continue_argv(run))
        if phase == "start-up":
            # From 0.3 s: the first tens of milliseconds belong to the interpreter's own
            # start, before any protossl code can install a handler (see docs/faults.md).
            time.sleep(rng.uniform(0.3, 1.5))
        elif child.wait_until_training(run):
            time.sleep(rng.uniform(0.0, 3.0))  # an epoch takes ~1-2 s here
        child.process.send_signal(sig)
        code, lines = child.finish()
        if code == 0:  # it finished before the signal: nothing to check for this one
            continue
        if code == -signal.SIGINT and lines and lines[-1].rstrip().endswith(str(run)):
            # The signal came after the run had finished and printed its summary, while the
            # interpreter exited: nothing left to lose, and no traceback either.
            assert not any("Traceback" in line for line in lines), lines
            continue
        hit += 1
        if sig == signal.SIGINT:
            assert code == 130, lines
            assert not any("Traceback" in line for line in lines), lines
            assert lines and lines[-1].startswith("protossl: interrupted"), lines
        else:
            assert code == -signal.SIGKILL
        if _last(run).is_file():
            load_checkpoint(_last(run))  # the last checkpoint is always whole
    assert hit >= 4  # most signals must land before the end of the run
    _finish_in_process(run, capsys)
    assert _no_temporaries(run)
    _assert_same_run(_final_state(run), reference)


# --------------------------------------------------------------- inside a checkpoint write


class _CutSave:
    """``torch.save`` that writes the n-th checkpoint half-way, then fails with ``error``."""

    def __init__(self, nth: int, error: BaseException) -> None:
        self.calls, self.nth, self.error = 0, nth, error
        self.real = torch.save

    def __call__(self, state: Any, handle: Any, *args: Any, **kwargs: Any) -> None:
        self.calls += 1
        if self.calls != self.nth:
            return self.real(state, handle, *args, **kwargs)
        import io

        buffer = io.BytesIO()
        self.real(state, buffer)
        handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise self.error


@pytest.mark.parametrize(
    ("error", "code", "says"),
    [
        (KeyboardInterrupt(), 130, "protossl: interrupted"),
        (OSError(errno.ENOSPC, "No space left on device"), 2, "protossl: error: no space left"),
    ],
    ids=["ctrl-c", "disk-full"],
)
def test_fault_inside_a_checkpoint_write_keeps_the_last_one(
    tmp_path: Path,
    reference: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    error: BaseException,
    code: int,
    says: str,
) -> None:
    run = tmp_path / "run"
    cut = _CutSave(nth=3, error=error)  # checkpoints 1 and 2 are whole, the third is cut
    monkeypatch.setattr(checkpoint_module.torch, "save", cut)
    threads = torch.get_num_threads()
    try:
        got = main(_argv(run, resume=False))
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err.strip().splitlines()
    assert got == code and err[-1].startswith(says), err
    if code == 2:
        assert str(_last(run)) in err[-1]  # names the file it could not write
    assert not any("Traceback" in line for line in err)
    assert load_checkpoint(_last(run))["epoch"] == 2  # the last whole checkpoint
    assert _no_temporaries(run)  # the cut file was removed with the failure
    monkeypatch.undo()
    _finish_in_process(run, capsys)
    _assert_same_run(_final_state(run), reference)


def test_disk_full_while_appending_metrics(
    tmp_path: Path,
    reference: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run = tmp_path / "run"
    real_open = Path.open

    def full_after_two_epochs(self: Path, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        appending = self.name == "metrics.jsonl" and mode == "a"
        if appending and _last(run).is_file() and load_checkpoint(_last(run))["epoch"] >= 2:
            handle = real_open(self, mode, *args, **kwargs)
            handle.write('{"epoch": 2, "cut')  # a partial line, as a full disk leaves
            handle.close()
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real_open(self, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", full_after_two_epochs)
    threads = torch.get_num_threads()
    try:
        got = main(_argv(run, resume=False))
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err.strip().splitlines()
    assert got == 2 and err[-1].startswith("protossl: error: no space left"), err
    monkeypatch.undo()
    assert load_checkpoint(_last(run))["epoch"] == 2
    _finish_in_process(run, capsys)
    _assert_same_run(_final_state(run), reference)


_KILL_IN_WRITE = """
import io, os, signal, sys, torch
from protossl.core import files as checkpoint
real, calls = torch.save, [0]
def save(state, handle, *args, **kwargs):
    calls[0] += 1
    if calls[0] < 3:
        return real(state, handle, *args, **kwargs)
    buffer = io.BytesIO(); real(state, buffer)
    handle.write(buffer.getvalue()[:1000]); handle.flush()
    os.kill(os.getpid(), signal.SIGKILL)
checkpoint.torch.save = save
from protossl.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_kill_9_inside_a_checkpoint_write(
    tmp_path: Path, reference: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-c", _KILL_IN_WRITE, *_argv(run, resume=False)],
        env=_env(),
        capture_output=True,
        timeout=300,
    )
    assert done.returncode == -signal.SIGKILL
    assert load_checkpoint(_last(run))["epoch"] == 2
    assert not _no_temporaries(run)  # kill -9 leaves the cut temporary file ...
    _finish_in_process(run, capsys)
    assert _no_temporaries(run)  # ... which the next writer removes
    _assert_same_run(_final_state(run), reference)


def _limit_file_size() -> None:
    # A real failure from the OS: writes past 64 KiB fail with EFBIG (SIGXFSZ ignored).
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))


def test_a_file_size_limit_from_the_os_is_one_line(tmp_path: Path) -> None:
    run = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "protossl", *_argv(run, resume=False)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=_limit_file_size,
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert lines[-1].startswith("protossl: error: no space left to write"), lines
    assert not any("Traceback" in line for line in lines)
    assert not _last(run).exists() and _no_temporaries(run)


# --------------------------------------------------------------- a configuration too large


def test_an_impossible_configuration_is_refused_before_allocation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from protossl.engine import trainer as trainer_module

    def never(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the model was built")

    monkeypatch.setattr(trainer_module, "build_method", never)
    argv = _argv(tmp_path / "run", resume=False) + ["--set", "model.num_prototypes=2000000000"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "GiB" in err[0] and "model.num_prototypes" in err[0], err
    assert not (tmp_path / "run").exists()  # no run folder for a refused configuration


# --------------------------------------------------------------- a sweep and its child

SWEEP = (
    "preset: dino\nset:\n"
    + "".join(f"  {item.split('=', 1)[0]}: {item.split('=', 1)[1]!r}\n" for item in TINY)
    + "grid:\n  seed: [0]\n"
)


@pytest.mark.slow
def test_ctrl_c_to_a_sweep_and_its_child_then_rerun_is_bit_identical(
    tmp_path: Path, reference: dict[str, Any]
) -> None:
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(SWEEP)
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "protossl", "sweep", str(sweep_file), "--out", str(out)]
    # A terminal's Ctrl-C reaches the whole foreground process group: sweep and child.
    sweep = subprocess.Popen(
        argv,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    run = out / "dino_seed-0"
    try:
        deadline = time.monotonic() + 120
        while not _last(run).is_file() and time.monotonic() < deadline:
            time.sleep(0.05)  # interrupt once the child has written its first checkpoint
        os.killpg(sweep.pid, signal.SIGINT)
        _, err = sweep.communicate(timeout=120)
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
            sweep.wait()
    assert sweep.returncode != 0 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("protossl: interrupted"), err  # progress lines, then the verdict
    done = subprocess.run(argv, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    _assert_same_run(_final_state(run), reference)
