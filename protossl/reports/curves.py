"""Training curves of several runs side by side, from their ``metrics.jsonl``.

Both faces of collapse over training, one panel each, one line per run: unique
prototypes M (duplicates), how many prototypes any test image picks (usage), the
nearest-neighbour distance between prototypes (duplicates start where it reaches
eps), and the cross-entropy against ln K (DINO's uniform plateau). A last panel
gives the uniqueness curve (M against eps) of each run's final prototypes, read
from its ``checkpoints/last.pt``. A panel no run has data for is left out, so old
metrics files and runs without a checkpoint still plot.

Example:
    >>> plot_runs({"dino": Path("runs/dino")}, Path("curves.png"))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from protossl.core.errors import UserError
from protossl.core.run_layout import RunPaths
from protossl.core.safe_yaml import load_yaml_file

# (metrics key, title) of the per-epoch panels with one value per record; the other
# panels (distance quantiles, loss, uniqueness curve) are drawn by their own functions.
PANELS = (
    ("M", "unique prototypes M (eps {eps:g})"),
    ("prototypes_used", "prototypes used (test argmax)"),
)
NN_KEYS = (("nn_distance_median", "-", "median"), ("nn_distance_q10", ":", "q10"))
LOSS_KEYS = ("cross_entropy", "loss")  # the first a record has is drawn against ln K
UNIQUENESS_EPS = tuple(float(e) for e in np.geomspace(1e-3, 1.0, 25))
DEFAULT_EPS = 0.025  # the monitor's default (protossl.config.MonitorConfig.eps)
_GREY = "#606060"

Records = list[dict[str, Any]]
Series = tuple[list[float], list[float]]
Drawer = Callable[[Any, dict[str, Records], dict[str, str]], None]


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The per-epoch records of a run."""
    path = RunPaths(run_dir).metrics
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _records(run_dir: Path) -> Records:
    """The records of a run, or none where it has no ``metrics.jsonl`` yet."""
    return read_metrics(run_dir) if RunPaths(run_dir).metrics.is_file() else []


def _series(records: Records, key: str) -> Series:
    """(epochs done, values) of ``key`` over the records that have it."""
    kept = [r for r in records if r.get(key) is not None]
    return [r.get("epoch", i) + 1 for i, r in enumerate(kept)], [r[key] for r in kept]


def _has(runs: dict[str, Records], keys: tuple[str, ...]) -> bool:
    """Whether some record of some run has one of ``keys``."""
    return any(r.get(k) is not None for records in runs.values() for r in records for k in keys)


def run_eps(run_dir: Path) -> float:
    """The eps of a run's M (``monitor.eps`` in its ``config.yaml``; the default without one)."""
    try:
        config = load_yaml_file(RunPaths(run_dir).config, "config") or {}
        return float(config["monitor"]["eps"])
    except (UserError, KeyError, TypeError, ValueError):
        return DEFAULT_EPS


def final_prototypes_curve(run_dir: Path) -> list[tuple[float, int]] | None:
    """M over :data:`UNIQUENESS_EPS` for the student prototypes of ``checkpoints/last.pt``.

    None where the run has no readable protossl checkpoint. Read with protossl's
    checkpoint reader (``weights_only``: no code runs); torch is imported only here.
    """
    checkpoint = RunPaths(run_dir).last_checkpoint
    if not checkpoint.is_file():
        return None
    from protossl.diagnostics import uniqueness_curve
    from protossl.diagnostics.checkpoints import read_prototype_heads

    try:
        _format, heads = read_prototype_heads(checkpoint, format="protossl")
    except UserError:  # unreadable, or not a protossl checkpoint: no panel for this run
        return None
    weights = heads.get("student", next(iter(heads.values())))
    return uniqueness_curve(weights.detach(), UNIQUENESS_EPS)


def _style(ax: Any, title: str, xlabel: str = "epoch") -> None:
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3, which="both")


def _draw_values(key: str, title: str) -> Drawer:
    """A panel drawer of one metrics key, with K dotted for M (its largest value)."""

    def draw(ax: Any, runs: dict[str, Records], colours: dict[str, str]) -> None:
        for name, records in runs.items():
            ax.plot(*_series(records, key), marker=".", color=colours[name], label=name)
        if key == "M":
            for k in sorted({r["K"] for rs in runs.values() for r in rs if "K" in r}):
                ax.axhline(k, color=_GREY, linestyle=":", linewidth=1)
        _style(ax, title)

    return draw


def _draw_nn(ax: Any, runs: dict[str, Records], colours: dict[str, str]) -> None:
    """Nearest-neighbour distance quantiles between prototypes, per run."""
    for name, records in runs.items():
        for key, linestyle, label in NN_KEYS:
            xs, ys = _series(records, key)
            ax.plot(xs, ys, linestyle, marker=".", color=colours[name], label=f"{name} {label}")
    _style(ax, "prototype NN distance (solid: median, dotted: q10)")
    ax.legend(fontsize=7)


def _log_k(record: dict[str, Any]) -> float | None:
    """ln K of a record, from ``K`` or ``log_K``."""
    if record.get("K"):
        return math.log(record["K"])
    value = record.get("log_K")
    return None if value is None else float(value)


def _draw_loss(ax: Any, runs: dict[str, Records], colours: dict[str, str]) -> None:
    """The cross-entropy (else the loss) per run, with ln K as a dashed line."""
    key = next(k for k in LOSS_KEYS if _has(runs, (k,)))
    for name, records in runs.items():
        ax.plot(*_series(records, key), marker=".", color=colours[name], label=name)
    levels = {v for rs in runs.values() for r in rs if (v := _log_k(r)) is not None}
    for level in sorted(levels):
        ax.axhline(level, color=_GREY, linestyle="--", linewidth=1, label=f"ln K = {level:.2f}")
    _style(ax, f"{key.replace('_', '-')} (dashed: ln K)")
    ax.legend(fontsize=7)


def _draw_uniqueness(
    ax: Any, curves: dict[str, list[tuple[float, int]]], colours: dict[str, str], eps: float
) -> None:
    """M against eps (log axis, 1e-3 to 1) of the final prototypes; eps of M dotted."""
    for name, curve in curves.items():
        xs, ys = zip(*curve, strict=True)
        ax.plot(xs, ys, marker=".", color=colours[name], label=name)
    ax.axvline(eps, color=_GREY, linestyle=":", linewidth=1, label=f"eps {eps:g}")
    ax.set_xscale("log")
    ax.set_xlim(UNIQUENESS_EPS[0], UNIQUENESS_EPS[-1])
    _style(ax, "uniqueness curve, final prototypes", xlabel="eps")
    ax.legend(fontsize=7)


def _panels(runs: dict[str, Records], eps: float) -> list[Drawer]:
    """The per-epoch panels some run has data for, in display order."""
    panels = [_draw_values(k, t.format(eps=eps)) for k, t in PANELS if _has(runs, (k,))]
    if _has(runs, tuple(k for k, _, _ in NN_KEYS)):
        panels.append(_draw_nn)
    if _has(runs, LOSS_KEYS):
        panels.append(_draw_loss)
    return panels


def curve_figure(runs: dict[str, Path]) -> Any:
    """The matplotlib figure of :func:`plot_runs`: one axis per panel with data."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    records = {name: _records(run_dir) for name, run_dir in runs.items()}
    colours = {name: f"C{i}" for i, name in enumerate(runs)}
    curves = {n: c for n, d in runs.items() if (c := final_prototypes_curve(d)) is not None}
    eps = run_eps(next(iter(runs.values()))) if runs else DEFAULT_EPS
    panels = _panels(records, eps)
    count = max(1, len(panels) + bool(curves))
    fig, axes = plt.subplots(1, count, figsize=(4.2 * count, 3.4), squeeze=False)
    for ax, draw in zip(axes[0], panels, strict=False):
        draw(ax, records, colours)
    if curves:
        _draw_uniqueness(axes[0][-1], curves, colours, eps)
    if not panels and not curves:
        axes[0][0].text(0.5, 0.5, "no training records yet", ha="center", va="center")
    elif panels:
        axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_runs(runs: dict[str, Path], out: Path) -> Path:
    """Write a PNG with one panel per quantity (see the module docstring), one line per run."""
    from protossl.reports.figures import save_png_atomic

    return save_png_atomic(curve_figure(runs), out, dpi=110)
