"""Find the runs in a run or sweep folder, and read what each one recorded.

A *run folder* is what ``protossl train --out`` writes (``config.yaml``,
``metrics.jsonl``, ``summary.json``, ``checkpoints/last.pt``); a *sweep folder*
(``protossl sweep --out``) holds one run folder per grid point plus
``results.json``. Runs are labelled like the presets they come from (``dino``,
``dino-kp``, ``ibot-vmf-kp``): the method, ``-vmf`` for von Mises-Fisher
prototypes, ``-kp`` for KoLeo-proto (Govindarajan et al., "On Partial Prototype
Collapse in the DINO Family of Self-Supervised Methods"). A baseline and its
regularized twin are runs whose configs differ only in the prototype regularizer.

Example:
    >>> runs = discover_runs(Path("sweeps/cifar10"))  # doctest: +SKIP
    >>> [(r.label, r.K, r.M) for r in runs]  # doctest: +SKIP
    [('dino', 256, 231), ('dino-kp', 256, 256), ...]
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protossl.core.dotted import flatten_dotted
from protossl.core.errors import UserError
from protossl.core.run_layout import RunPaths
from protossl.core.safe_yaml import load_yaml_file
from protossl.diagnostics import DEFAULT_EPS

__all__ = [
    "RunRecord",
    "discover_runs",
    "failed_rows",
    "group_twins",
    "is_run_folder",
    "read_run",
]

# Any of these makes a folder a run (a run killed before its first epoch has only a config).
RUN_MARKERS = ("summary.json", "metrics.jsonl", "checkpoints/last.pt")
# Config keys that may differ between a baseline and its regularized twin, or that do
# not change what is learned (threads, workers, device).
_TWIN_FREE_KEYS = (
    "objective.prototype_regularizer",
    "objective.regularizer_weight",
    "objective.prototype_regularizer_options",
    "num_threads",
    "data.num_workers",
    "runtime",
)


@dataclass(frozen=True)
class RunRecord:
    """One run folder as the report sees it.

    Attributes:
        name: the folder's name (its name inside a sweep).
        path: the folder.
        config: ``config.yaml`` as a nested dict ({} if absent).
        summary: ``summary.json`` ({} if absent or unreadable).
        metrics: the per-epoch records of ``metrics.jsonl`` (lines cut short are skipped).
        row: the run's row of the sweep's ``results.json`` ({} outside a sweep).
        notes: problems met while reading (shown in the report).
    """

    name: str
    path: Path
    config: dict[str, Any]
    summary: dict[str, Any]
    metrics: list[dict[str, Any]]
    row: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def method(self) -> str:
        return str(self.config.get("method") or self.summary.get("method") or "unknown")

    @property
    def regularizer(self) -> str:
        """The prototype regularizer (``none``, ``koleo``, ...)."""
        objective = self.config.get("objective") or {}
        return str(objective.get("prototype_regularizer") or "none")

    @property
    def regularized(self) -> bool:
        return self.regularizer != "none"

    @property
    def family(self) -> str:
        """The baseline's label: method, plus ``-vmf`` for vMF prototypes."""
        model = self.config.get("model") or {}
        return self.method + ("-vmf" if model.get("prototype_layer") == "vmf" else "")

    @property
    def label(self) -> str:
        """Preset-like name: ``dino``, ``dino-kp``, ``ibot-vmf-kp``, ``swav+other``."""
        if self.regularizer == "none":
            return self.family
        if self.regularizer == "koleo":
            return f"{self.family}-kp"
        return f"{self.family}+{self.regularizer}"

    @property
    def K(self) -> int | None:  # noqa: N802 - the paper's symbol
        return _int_or_none(self.row.get("K", self.summary.get("K")))

    @property
    def M(self) -> int | None:  # noqa: N802 - the paper's symbol
        return _int_or_none(self.row.get("M", self.summary.get("M")))

    @property
    def data(self) -> str:
        """The training data spec (``?`` when no record names it)."""
        spec = self.row.get("data") or self.summary.get("data")
        return str(spec or (self.config.get("data") or {}).get("spec") or "?")

    @property
    def prototypes_used(self) -> int | None:
        """Prototypes that were some monitor image's argmax at the end (usage's face)."""
        usage = self.summary.get("usage") or {}
        return _int_or_none(usage.get("prototypes_used")) if isinstance(usage, dict) else None

    @property
    def eps(self) -> float:
        """The linking distance the run measured M at."""
        value = self.summary.get("eps", (self.config.get("monitor") or {}).get("eps"))
        return float(value) if isinstance(value, int | float) else DEFAULT_EPS

    @property
    def status(self) -> str:
        """``done``, ``partial`` or ``failed`` (a sweep's record wins)."""
        if self.row.get("status"):
            return str(self.row["status"])
        return "done" if self.summary.get("finished") else "partial"

    @property
    def checkpoint(self) -> Path | None:
        path = RunPaths(self.path).last_checkpoint
        return path if path.is_file() else None

    @property
    def slug(self) -> str:
        """The name, safe in a file name."""
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", self.name).strip("._") or "run"

    @property
    def uniqueness_curve(self) -> list[tuple[float, int]]:
        """[(eps, M), ...] from the summary; [] if it has none."""
        curve = (self.summary.get("prototypes") or {}).get("uniqueness_curve") or []
        try:
            return [(float(e), int(m)) for e, m in curve]
        except (TypeError, ValueError):
            return []

    def twin_key(self) -> str:
        """Equal for runs whose configs differ only in the prototype regularizer."""
        flat = flatten_dotted(self.config)  # every leaf: list-valued keys count too
        kept = {k: v for k, v in flat.items() if not k.startswith(_TWIN_FREE_KEYS)}
        return json.dumps(kept, sort_keys=True, default=str)


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        return int(value)
    except ValueError:
        return None


def is_run_folder(path: Path) -> bool:
    """Whether ``path`` holds a run (a summary, metrics or a checkpoint).

    A ``summary.json`` alone does not make a run: ``protossl demo --out`` writes its
    own summary next to its run folders, and that folder is a collection of runs.
    The trainer writes ``config.yaml`` before anything else, so a run has it or one
    of the other markers.
    """
    if not path.is_dir():
        return False
    if RunPaths(path).config.is_file():
        return any((path / marker).is_file() for marker in RUN_MARKERS)
    return any((path / marker).is_file() for marker in RUN_MARKERS if marker != "summary.json")


def _read_json(path: Path, notes: list[str]) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        notes.append(f"{path.name} is not valid JSON; ignored")
        return None


def read_run(path: Path, name: str | None = None, row: dict[str, Any] | None = None) -> RunRecord:
    """Read one run folder (never fails on a damaged file: it becomes a note)."""
    notes: list[str] = []
    config: Any = None
    if RunPaths(path).config.is_file():
        try:
            config = load_yaml_file(RunPaths(path).config, "config")
        except UserError as exc:
            notes.append(f"config.yaml ignored: {exc}")
    summary = _read_json(RunPaths(path).summary, notes)
    metrics: list[dict[str, Any]] = []
    if RunPaths(path).metrics.is_file():
        for line in RunPaths(path).metrics.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill
                continue
            if isinstance(record, dict) and "step" in record:
                metrics.append(record)
    return RunRecord(
        name=name or path.resolve().name,
        path=path,
        config=config if isinstance(config, dict) else {},
        summary=summary if isinstance(summary, dict) else {},
        metrics=metrics,
        row=row or {},
        notes=tuple(notes),
    )


def _sweep_rows(root: Path) -> list[dict[str, Any]]:
    rows = _read_json(root / "results.json", [])
    if not isinstance(rows, list):
        return []
    return [r for r in rows if isinstance(r, dict) and isinstance(r.get("run"), str)]


def discover_runs(root: Path) -> list[RunRecord]:
    """The runs of a run folder (itself) or a sweep folder (its run sub-folders).

    In a sweep, runs come in ``results.json`` order, then any other run folders by
    name. Grid points without a folder that looks like a run (failed before training)
    are left out; :func:`failed_rows` lists them.

    Raises:
        UserError: if ``root`` does not exist, is not a folder, or holds no run.
    """
    root = Path(root)
    if not root.exists():
        raise UserError(
            f"{root} does not exist; pass a run folder (protossl train --out) "
            "or a sweep folder (protossl sweep --out)"
        )
    if not root.is_dir():
        raise UserError(f"{root} is not a folder; pass a run folder or a sweep folder")
    if is_run_folder(root):
        return [read_run(root)]
    rows = {row["run"]: row for row in _sweep_rows(root)}
    names = [n for n in rows if is_run_folder(root / n)]
    names += sorted(
        entry.name
        for entry in root.iterdir()
        if entry.name not in rows and not entry.name.startswith(".") and is_run_folder(entry)
    )
    if not names:
        raise UserError(
            f"no runs in {root}: expected a run folder (summary.json, metrics.jsonl or "
            "checkpoints/last.pt) or a sweep folder with one such folder per run"
        )
    return [read_run(root / n, n, rows.get(n)) for n in names]


def failed_rows(root: Path) -> list[dict[str, Any]]:
    """Sweep rows whose run has no folder to show (failed before writing anything)."""
    return [
        row
        for row in _sweep_rows(Path(root))
        if not is_run_folder(Path(root) / row["run"]) and row.get("status") == "failed"
    ]


def group_twins(runs: list[RunRecord]) -> list[list[RunRecord]]:
    """Runs grouped by :meth:`RunRecord.twin_key`, baselines first, in discovery order.

    Example:
        >>> [[r.label for r in g] for g in group_twins(runs)]  # doctest: +SKIP
        [['dino', 'dino-kp'], ['ibot-vmf', 'ibot-vmf-kp']]
    """
    groups: dict[str, list[RunRecord]] = {}
    for run in runs:
        groups.setdefault(run.twin_key(), []).append(run)
    return [sorted(g, key=lambda r: r.regularized) for g in groups.values()]
