"""``protossl sweep``: a grid of training runs and their evaluations, resumable, in one table.

A sweep file names a base (preset and overrides), a grid of config keys and,
optionally, the evaluations to run on every finished run; every combination is
one run directory ``OUT/<name>``. Runs are separate ``protossl train`` processes
and evaluations separate ``protossl eval`` processes (one run after another, or
``--jobs N`` runs at a time, each pinned to one GPU with ``--gpus``), so a broken
run or evaluation cannot take the sweep down: it is recorded as failed with its
last error line, and the others go on. Finished runs are skipped; interrupted
ones continue with ``--resume``; an evaluation already in the run's
``summary.json`` is not run again. After each run, every summary is collected
into ``OUT/results.csv`` and ``OUT/results.json`` (evaluation results as
``eval.<metric>`` columns, e.g. ``eval.knn_top1@20``, ``eval.linear_top1``).

Sweep file (YAML)::

    preset: dino                 # default preset of every run
    set:                         # overrides shared by every run
      optim.epochs: 30
    grid:                        # every combination is a run
      preset: [dino, dino-kp]    # "preset" may vary too
      model.num_prototypes: [256, 1024, 4096]
      dataset:                   # a *linked* axis: each value sets several keys together
        - {name: balanced, data.spec: "folder:data/cifar10", optim.epochs: 30}
        - {name: lt100, data.spec: "folder:data/cifar10@lt=100", optim.epochs: 120}
      seed: [0, 1]
    eval:                        # after training, on every run (protossl eval)
      - {data: "{data_balanced}", protocols: [knn, linear, fewshot, cluster]}
      - {data: "{data_balanced}@lt=100", test_data: "{data_balanced}", protocols: [longtail]}

An ``eval`` entry takes ``data`` (required), ``test_data``, ``protocols``
(required; a list or ``"knn,linear"``), ``features`` (``backbone``) and ``device``
(``cpu``), as ``protossl eval`` does. In ``data`` and ``test_data``, ``{data}`` is
the run's own ``data.spec`` and ``{data_balanced}`` the same spec without its
``@lt=R`` suffix. Each protocol may appear in one entry only: results are stored
by metric name (``eval.<metric>``), so a second entry would overwrite the first.

A *linked* axis (every value a mapping) sets its keys together and names its part of
the run name with ``name`` (default ``<axis>-<index>``); the axis itself becomes a
column of the results, so it cannot be called ``data``, ``K``, ``M``, ``status``, ...

Example:
    $ protossl sweep sweeps/cifar10.yaml --out sweeps_out/cifar10 --jobs 2
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protossl.config import available_presets, load_config
from protossl.core.errors import UserError
from protossl.core.files import atomic_write_text
from protossl.core.run_layout import RunPaths
from protossl.core.safe_yaml import load_yaml_file
from protossl.engine.memory import check_training_memory
from protossl.runs.folder import FolderLock, die_with_parent, write_marker

EVAL_KEYS = ("data", "test_data", "protocols", "features", "device")
PLACEHOLDERS = ("{data}", "{data_balanced}")
# Summary entries copied into each row of the results (nested ones flattened with dots).
SUMMARY_KEYS = ("data", "K", "M", "M_over_K", "usage", "eval", "wall_time_seconds", "steps")
_ROW_KEYS = {"run", "preset", "status", "error", *SUMMARY_KEYS}


@dataclass(frozen=True)
class EvalTask:
    """One evaluation of one run: the arguments of ``protossl eval``, placeholders filled."""

    data: str
    test_data: str | None
    protocols: tuple[str, ...]
    features: str = "backbone"
    device: str = "cpu"

    @property
    def label(self) -> str:
        """The key of this evaluation in ``summary["eval"]["runs"]`` (as ``protossl eval``
        writes it: features, data, test data)."""
        return f"{self.features}|{self.data}|{self.test_data or self.data}"


@dataclass(frozen=True)
class SweepRun:
    """One point of the grid, and the evaluations to run on it once trained."""

    name: str
    preset: str
    overrides: tuple[str, ...]
    grid_values: dict[str, Any] = field(default_factory=dict)
    evals: tuple[EvalTask, ...] = ()
    num_threads: int = 0


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_format_value(v) for v in value) + "]"
    return str(value)


def _short(key: str) -> str:
    # model.num_prototypes -> num_prototypes: run names stay readable
    return key.split(".")[-1]


# ---------------------------------------------------------------- the eval section


def _parse_eval_section(section: Any, where: str) -> list[dict[str, Any]]:
    """Check the ``eval`` section's shape, keys and protocols; placeholders stay unfilled."""
    from protossl.evaluation.features import FEATURE_KINDS
    from protossl.evaluation.run_eval import parse_protocols

    if section is None:
        return []
    if not isinstance(section, list):
        raise UserError(
            f"{where}: 'eval' must be a list of entries like {{data: ..., protocols: [knn]}}"
        )
    entries: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(section, start=1):
        at = f"{where}: eval entry {i}"
        if not isinstance(entry, dict):
            raise UserError(f"{at} must be a mapping with data and protocols")
        unknown = sorted(set(entry) - set(EVAL_KEYS))
        if unknown:
            raise UserError(f"{at}: unknown keys {unknown}; use {', '.join(EVAL_KEYS)}")
        for key in ("data", "protocols"):
            if entry.get(key) in (None, "", []):
                raise UserError(f"{at}: '{key}' is required")
        for key in ("data", "test_data", "features", "device"):
            if entry.get(key) is not None and not isinstance(entry[key], str):
                raise UserError(f"{at}: '{key}' must be a string")
        protocols = entry["protocols"]
        if not isinstance(protocols, (str, list)):
            raise UserError(f"{at}: 'protocols' must be a list or a comma-separated string")
        try:
            chosen = parse_protocols(
                [str(p) for p in protocols] if isinstance(protocols, list) else protocols
            )
        except UserError as exc:
            raise UserError(f"{at}: {exc}") from None
        for protocol in chosen:
            if protocol in seen:
                raise UserError(
                    f"{at}: protocol '{protocol}' is already in entry {seen[protocol]}; "
                    "each protocol may appear once (results are stored by metric name)"
                )
            seen[protocol] = i
        features = entry.get("features") or "backbone"
        if features not in FEATURE_KINDS:
            raise UserError(f"{at}: unknown features '{features}'; use {', '.join(FEATURE_KINDS)}")
        entries.append(
            {
                "data": entry["data"],
                "test_data": entry.get("test_data"),
                "protocols": tuple(chosen),
                "features": features,
                "device": entry.get("device") or "cpu",
            }
        )
    return entries


def _fill(text: str, data: str, data_balanced: str, at: str) -> str:
    """Replace the placeholders, then check no other ``{...}`` is left and the spec parses."""
    from protossl.data import parse_data_spec

    filled = text.replace("{data_balanced}", data_balanced).replace("{data}", data)
    left = re.search(r"\{[^{}]*\}", filled)
    if left:
        raise UserError(
            f"{at}: unknown placeholder {left.group(0)} in '{text}'; "
            f"use {' or '.join(PLACEHOLDERS)}"
        )
    try:
        return str(parse_data_spec(filled))
    except UserError as exc:
        raise UserError(f"{at}: {exc}") from None


def resolve_evals(
    entries: list[dict[str, Any]], data_spec: str, where: str
) -> tuple[EvalTask, ...]:
    """The eval entries for a run trained on ``data_spec``, placeholders filled.

    Example:
        >>> entry = {"data": "{data_balanced}", "test_data": None, "protocols": ("knn",),
        ...          "features": "backbone", "device": "cpu"}
        >>> resolve_evals([entry], "digits@lt=10", "sweep.yaml")[0].data
        'digits'
    """
    from protossl.data import parse_data_spec

    balanced = str(dataclasses.replace(parse_data_spec(data_spec), lt_ratio=None))
    tasks = []
    for i, entry in enumerate(entries, start=1):
        at = f"{where}: eval entry {i}"
        test = entry["test_data"]
        tasks.append(
            EvalTask(
                data=_fill(entry["data"], data_spec, balanced, at),
                test_data=_fill(test, data_spec, balanced, at) if test else None,
                protocols=entry["protocols"],
                features=entry["features"],
                device=entry["device"],
            )
        )
    return tuple(tasks)


# ---------------------------------------------------------------- the grid


def _axis_points(axis: str, values: list[Any], where: str) -> list[tuple[str, dict[str, Any]]]:
    """Each value of one grid axis as (name part, {key: value}).

    A plain axis sets its own key; a linked axis (every value a mapping) sets the
    mapping's keys together and is named by its ``name`` (default ``<axis>-<index>``).
    """
    linked = [isinstance(v, dict) for v in values]
    if any(linked) and not all(linked):
        raise UserError(f"{where}: grid.{axis} mixes mappings and plain values; use one kind")
    if not all(linked):
        return [(f"{_short(axis)}-{_format_value(v)}", {axis: v}) for v in values]
    if axis in _ROW_KEYS:
        raise UserError(
            f"{where}: grid.{axis}: a linked axis is a column of results.csv; "
            f"name it something other than {', '.join(sorted(_ROW_KEYS))} (e.g. dataset)"
        )
    points = []
    for i, value in enumerate(values):
        keys = {k: v for k, v in value.items() if k != "name"}
        if not keys:
            raise UserError(f"{where}: grid.{axis} value {i + 1} sets no key")
        name = value.get("name", f"{_short(axis)}-{i}")
        if not isinstance(name, (str, int)) or not str(name):
            raise UserError(f"{where}: grid.{axis} value {i + 1}: 'name' must be a short string")
        points.append((str(name), keys))
    return points


def load_sweep(path: str | Path) -> list[SweepRun]:
    """Parse and check a sweep file; every run's config and evaluations are validated up front."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"sweep file not found: {path}")
    spec = load_yaml_file(path, "sweep file") or {}
    if not isinstance(spec, dict):
        raise UserError(f"sweep file {path} must hold a mapping with 'grid'")
    unknown = set(spec) - {"preset", "set", "grid", "eval"}
    if unknown:
        raise UserError(
            f"sweep file {path}: unknown keys {sorted(unknown)}; use preset, set, grid, eval"
        )
    where = f"sweep file {path}"
    base_preset = str(spec.get("preset", "dino"))
    shared = spec.get("set") or {}
    grid = spec.get("grid") or {}
    if not isinstance(shared, dict) or not isinstance(grid, dict):
        raise UserError(f"{where}: 'set' and 'grid' must be mappings of keys")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise UserError(f"{where}: grid.{key} must be a non-empty list")
    evals = _parse_eval_section(spec.get("eval"), where)
    runs: list[SweepRun] = []
    axes = [_axis_points(axis, values, where) for axis, values in grid.items()]
    for combo in itertools.product(*axes):
        settings: dict[str, Any] = {}
        grid_values: dict[str, Any] = {}
        parts: list[str] = []
        for axis, (part, keys) in zip(grid, combo, strict=True):
            clash = set(keys) & set(settings)
            if clash:
                raise UserError(f"{where}: grid key(s) {sorted(clash)} set by two axes")
            settings.update(keys)
            if keys.keys() != {axis}:  # a linked axis: its name, then the keys it sets
                grid_values[axis] = part
            grid_values.update(keys)
            if keys.keys() != {"preset"}:
                parts.append(part)
        preset = str(settings.pop("preset", base_preset))
        if preset not in available_presets():
            raise UserError(f"{where}: unknown preset {preset!r}")
        overrides = [f"{k}={_format_value(v)}" for k, v in shared.items()]
        overrides += [f"{k}={_format_value(v)}" for k, v in settings.items()]
        cfg = load_config(preset, overrides=overrides)  # fail before anything runs
        check_training_memory(cfg)  # one line now, not an out-of-memory child later
        name = "_".join([preset, *parts]).replace("/", "-").replace(" ", "")
        tasks = resolve_evals(evals, cfg.data.spec, where)
        runs.append(SweepRun(name, preset, tuple(overrides), grid_values, tasks, cfg.num_threads))
    if not runs:
        raise UserError(f"sweep file {path} has an empty grid")
    if len({r.name for r in runs}) != len(runs):
        raise UserError(f"sweep file {path}: two grid points give the same run name")
    return runs


# ---------------------------------------------------------------- state of a run


def _read_summary(run_dir: Path) -> dict[str, Any]:
    try:
        summary = json.loads(RunPaths(run_dir).summary.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return summary if isinstance(summary, dict) else {}


def run_status(run_dir: Path) -> str:
    """``done`` (finished summary), ``partial`` (a checkpoint to resume) or ``new``."""
    if _read_summary(run_dir).get("finished"):
        return "done"
    return "partial" if RunPaths(run_dir).last_checkpoint.is_file() else "new"


def pending_protocols(run_dir: Path, task: EvalTask) -> tuple[str, ...]:
    """The protocols of ``task`` whose results are not yet in the run's summary.json.

    A protocol counts as done when the evaluation's own record
    (``summary["eval"]["runs"][task.label]``) has a ``<protocol>_...`` entry, so results
    on other data (or the trainer's own kNN) never make an evaluation look done.
    """
    section = _read_summary(run_dir).get("eval")
    runs = section.get("runs") if isinstance(section, dict) else None
    record = runs.get(task.label) if isinstance(runs, dict) else None
    keys = list(record) if isinstance(record, dict) else []
    return tuple(p for p in task.protocols if not any(k.startswith(f"{p}_") for k in keys))


def has_work(run: SweepRun, run_dir: Path) -> bool:
    """Whether the run still needs training or one of its evaluations."""
    if run_status(run_dir) != "done":
        return True
    return any(pending_protocols(run_dir, task) for task in run.evals)


def train_command(run: SweepRun, run_dir: Path, resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", "protossl", "train", "--out", str(run_dir)]
    if resume:
        return cmd + ["--resume"]
    cmd += ["--preset", run.preset]
    for item in run.overrides:
        cmd += ["--set", item]
    return cmd


def eval_command(run_dir: Path, task: EvalTask, protocols: tuple[str, ...]) -> list[str]:
    cmd = [sys.executable, "-m", "protossl", "eval", str(run_dir), "--data", task.data]
    if task.test_data:
        cmd += ["--test-data", task.test_data]
    cmd += ["--protocols", ",".join(protocols), "--features", task.features]
    return cmd + ["--device", task.device]


# ---------------------------------------------------------------- results


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(value, (int, float, str, bool)) or value is None:
        out[prefix] = value


def collect(
    runs: list[SweepRun],
    out: Path,
    errors: dict[str, str],
    eval_errors: dict[str, list[str]] | None = None,
) -> list[dict[str, Any]]:
    """One row per run (grid values, status, summary numbers); written as CSV and JSON.

    Status: ``done`` (trained and every evaluation in its summary), ``partial`` (a
    checkpoint, or trained with evaluations still to run), ``new`` or ``failed``. A run
    whose training failed has no numbers; one whose evaluation failed keeps its training
    numbers and any evaluation that worked, with status ``failed``.
    """
    eval_errors = eval_errors or {}
    rows: list[dict[str, Any]] = []
    for run in runs:
        row: dict[str, Any] = {"run": run.name, "preset": run.preset}
        row.update({k: _format_value(v) for k, v in run.grid_values.items() if k != "preset"})
        failed = run.name in errors or bool(eval_errors.get(run.name))
        status = run_status(out / run.name)
        if status == "done" and has_work(run, out / run.name):
            status = "partial"  # trained, but an evaluation is still to come
        row["status"] = "failed" if failed else status
        messages = ([errors[run.name]] if run.name in errors else []) + eval_errors.get(
            run.name, []
        )
        row["error"] = "; ".join(messages)
        summary = _read_summary(out / run.name)
        if summary and run.name not in errors:
            flat: dict[str, Any] = {}
            for key in SUMMARY_KEYS:
                value = summary.get(key)
                if key == "eval" and isinstance(value, dict):
                    # eval.runs holds each evaluation's record again (see protossl eval);
                    # the flat eval.<metric> entries are the table's columns.
                    value = {k: v for k, v in value.items() if k != "runs"}
                if key in summary:
                    _flatten(key, value, flat)
            row.update(flat)
        rows.append(row)
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    atomic_write_text(out / "results.json", json.dumps(rows, indent=2) + "\n")
    lines: list[str] = []

    class _Sink:
        def write(self, text: str) -> int:
            lines.append(text)
            return len(text)

    writer = csv.DictWriter(_Sink(), fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "results.csv", "".join(lines))
    return rows


def _last_error_line(log: Path, offset: int = 0) -> str:
    """The last line mentioning an error written to ``log`` after ``offset`` bytes."""
    if not log.is_file():
        return "no log"
    with log.open("rb") as handle:
        handle.seek(offset)
        text = handle.read().decode(errors="replace")
    # "$ ..." lines are the commands the sweep logged, not output.
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("$ ")]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or ["no output"])[-1].strip()[:300]


# ---------------------------------------------------------------- the scheduler


@dataclass
class _Step:
    kind: str  # "train" or "eval N (protocols)"
    command: list[str]
    log: Path
    env: dict[str, str]


def _steps(run: SweepRun, run_dir: Path, gpu: str | None) -> Iterator[_Step]:
    """The run's remaining work, decided lazily: evaluations are looked at after training."""
    env = dict(os.environ)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    status = run_status(run_dir)
    if status != "done":
        cmd = train_command(run, run_dir, resume=status == "partial")
        yield _Step("resumed" if status == "partial" else "train", cmd, run_dir / "train.log", env)
    eval_env = dict(env)
    if run.num_threads > 0:
        # protossl eval has no thread option; the run's own thread count keeps --jobs fair.
        eval_env.update(OMP_NUM_THREADS=str(run.num_threads), MKL_NUM_THREADS=str(run.num_threads))
    for i, task in enumerate(run.evals, start=1):
        missing = pending_protocols(run_dir, task)
        if missing:
            kind = f"eval {i} ({','.join(missing)})"
            yield _Step(kind, eval_command(run_dir, task, missing), run_dir / "eval.log", eval_env)


@dataclass
class _Slot:
    """A run in progress: its remaining steps and the process of the current one."""

    run: SweepRun
    steps: Iterator[_Step]
    gpu: str | None
    begun: float
    step: _Step | None = None
    proc: subprocess.Popen[bytes] | None = None
    offset: int = 0


def _launch(slot: _Slot) -> bool:
    """Start the slot's next step; False when none is left."""
    step = next(slot.steps, None)
    slot.step, slot.proc = step, None
    if step is None:
        return False
    # The marker first: the run folder is protossl's before train.log is written into it.
    write_marker(step.log.parent)
    with step.log.open("ab") as log:
        slot.offset = log.tell()
        log.write(f"$ {' '.join(step.command)}\n".encode())
        log.flush()
        slot.proc = subprocess.Popen(
            step.command, stdout=log, stderr=log, env=step.env, preexec_fn=die_with_parent
        )
    return True


def _stop_children(slots: dict[str, _Slot], grace: float = 10.0) -> None:
    """Terminate every running child, then kill those still alive after ``grace`` s."""
    procs = [s.proc for s in slots.values() if s.proc is not None and s.proc.poll() is None]
    for proc in procs:
        proc.terminate()
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _raise_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def run_sweep(
    path: str | Path,
    out: str | Path,
    jobs: int = 1,
    gpus: list[str] | None = None,
    echo: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> list[dict[str, Any]]:
    """Train and evaluate every grid point not yet finished; returns the collected rows."""
    runs = load_sweep(path)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder; choose a folder")
    if jobs < 1:
        raise UserError("--jobs must be >= 1")
    # One sweep process per folder; its children die with it (signals below, and
    # die_with_parent for a SIGKILL), so a restarted sweep never runs beside an orphan.
    out.mkdir(parents=True, exist_ok=True)
    with FolderLock(out, "sweep folder"):
        if threading.current_thread() is not threading.main_thread():
            return _run_sweep(runs, out, jobs, gpus, echo)  # signals belong to the main thread
        previous = signal.signal(signal.SIGTERM, _raise_on_sigterm)
        try:
            return _run_sweep(runs, out, jobs, gpus, echo)
        finally:
            signal.signal(signal.SIGTERM, previous)


def _run_sweep(
    runs: list[SweepRun],
    out: Path,
    jobs: int,
    gpus: list[str] | None,
    echo: Callable[[str], None],
) -> list[dict[str, Any]]:
    todo = [r for r in runs if has_work(r, out / r.name)]
    eval_only = sum(1 for r in todo if run_status(out / r.name) == "done")
    line = f"sweep: {len(runs)} runs, {len(runs) - len(todo)} already finished, {len(todo)} to run"
    echo(line + (f" ({eval_only} only to evaluate)" if eval_only else ""))
    errors: dict[str, str] = {}
    eval_errors: dict[str, list[str]] = {}
    slots: dict[str, _Slot] = {}
    free_gpus = list(gpus or [])
    durations: list[float] = []
    started = time.perf_counter()
    pending = list(todo)
    finished = 0
    try:
        while pending or slots:
            while pending and len(slots) < jobs and (not gpus or free_gpus):
                run = pending.pop(0)
                gpu = free_gpus.pop(0) if gpus else None
                slot = _Slot(run, _steps(run, out / run.name, gpu), gpu, time.perf_counter())
                slots[run.name] = slot
                if _launch(slot):
                    assert slot.step is not None
                    how = {"train": "started", "resumed": "resumed"}.get(
                        slot.step.kind, "evaluating"
                    )
                    echo(f"[{finished + len(slots)}/{len(todo)}] {run.name}: {how}")
            time.sleep(0.5)
            for name, slot in list(slots.items()):
                if slot.proc is not None and slot.proc.poll() is None:
                    continue
                if slot.proc is not None and slot.step is not None:
                    step = slot.step
                    if slot.proc.returncode != 0:
                        message = _last_error_line(step.log, slot.offset)
                        if step.kind in ("train", "resumed"):
                            errors[name] = message
                            slot.steps = iter(())  # nothing to evaluate
                        else:
                            eval_errors.setdefault(name, []).append(f"{step.kind}: {message}")
                            echo(f"{name}: {step.kind} FAILED: {message}")
                    if _launch(slot):
                        assert slot.step is not None
                        echo(f"{name}: {slot.step.kind}")
                        continue
                del slots[name]
                if slot.gpu is not None:
                    free_gpus.append(slot.gpu)
                finished += 1
                seconds = time.perf_counter() - slot.begun
                if name in errors:
                    state = f"FAILED: {errors[name]}"
                elif name in eval_errors:
                    state = f"trained, {len(eval_errors[name])} evaluation(s) FAILED"
                else:
                    durations.append(seconds)
                    state = "done"
                left = len(todo) - finished
                mean = sum(durations) / len(durations) if durations else seconds
                eta = mean * left / max(jobs, 1)
                elapsed = (time.perf_counter() - started) / 60
                echo(
                    f"[{finished}/{len(todo)}] {name}: {state} in {seconds / 60:.1f} min; "
                    f"elapsed {elapsed:.1f} min, ETA {eta / 60:.1f} min"
                )
                collect(runs, out, errors, eval_errors)
    finally:  # Ctrl-C, SIGTERM or a crash: no child outlives the sweep
        _stop_children(slots)
    rows = collect(runs, out, errors, eval_errors)
    failed = sum(1 for r in rows if r["status"] == "failed")
    echo(f"sweep: {len(rows) - failed} finished, {failed} failed -> {out / 'results.csv'}")
    return rows
