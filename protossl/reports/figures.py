"""The report's figures, one PNG each (matplotlib, Agg backend: files only, never a window).

They show the seed paper's claims (Govindarajan et al., "On Partial Prototype
Collapse in the DINO Family of Self-Supervised Methods") for one's own runs:
unique prototypes M against K with the line M = K, M over eps, t-SNE maps of the
prototypes with duplicate groups coloured, and the second face of collapse,
prototype usage (how the marginal latent class distribution is met), with
example images of the largest clusters.

Example:
    >>> point = MKPoint("dino", family="dino", regularized=False, K=256, M=200)
    >>> plot_m_vs_k([point], Path("m_vs_k.png"))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

__all__ = [
    "Curve",
    "MKPoint",
    "ProtoMap",
    "plot_clusters",
    "plot_embedding_map",
    "plot_m_vs_k",
    "plot_prototype_maps",
    "plot_training",
    "plot_uniqueness",
    "plot_usage",
]

TRAINING_PANELS = (
    ("loss", "loss"),
    ("M", "unique prototypes M"),
    ("usage_entropy", "usage entropy (nats)"),
)
# Distinct colours for the largest duplicate groups / clusters / classes; the rest are grey.
_TOP = 10
# tab10 without its grey (C7), which would read as "no group"; navy as the tenth.
_PALETTE = ("C0", "C1", "C2", "C3", "C4", "C5", "C6", "C8", "C9", "#000080")
_GREY = "#b0b0b0"
_DARK_GREY = "#606060"


@dataclass(frozen=True)
class MKPoint:
    """One run in the M-against-K plot (``data``: its training data, one column each;
    ``used``: prototypes that were some test image's argmax, the bottom row)."""

    label: str
    family: str
    regularized: bool
    K: int
    M: int
    data: str = ""
    used: int | None = None


@dataclass(frozen=True)
class Curve:
    """One run's line in a plot over steps or eps."""

    name: str
    group: str  # runs of one group share a colour (twins: solid baseline, dashed regularized)
    regularized: bool
    x: Sequence[float]
    y: Sequence[float]
    panel: str = ""  # training data: one row of the training figure each


@dataclass(frozen=True, eq=False)
class ProtoMap:
    """A t-SNE map of (a subset of) one run's prototype directions.

    Attributes:
        title: panel title (run, K, M, eps).
        coords: [n, 2] map of the shown prototypes.
        groups: [n] duplicate-group id of each shown prototype.
        group_sizes: size of every group in the *full* head, indexed by group id.
    """

    title: str
    coords: np.ndarray
    groups: np.ndarray
    group_sizes: np.ndarray


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def save_png_atomic(fig: Any, out: Path, dpi: int = 100) -> Path:
    """Render ``fig`` as PNG and write it atomically (an interrupted report keeps old files)."""
    import io

    from protossl.core.files import atomic_write_bytes

    buffer = io.BytesIO()
    # No "Software" text chunk: the page then carries no address at all.
    fig.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
    _pyplot().close(fig)
    atomic_write_bytes(out, buffer.getvalue())
    return out


def _save(fig: Any, out: Path) -> Path:
    return save_png_atomic(fig, out)


def _family_styles(families: Sequence[str]) -> dict[str, str]:
    palette = [f"C{i}" for i in range(10)]
    ordered = list(dict.fromkeys(families))
    return {f: palette[i % len(palette)] for i, f in enumerate(ordered)}


def _log_axes(ax: Any) -> None:
    """Log scales with plain numbers at 1, 2, 5 x 10^n (not 4 x 10^1)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.set_minor_locator(NullLocator())
        axis.set_major_formatter(FuncFormatter(lambda value, _pos: f"{value:g}"))


def _plot_against_k(
    ax: Any, points: Sequence[MKPoint], value: str, colours: dict[str, str]
) -> None:
    """One line per label through the mean of ``value`` (M or used) at each K; every run a
    marker. Baselines solid with circles, regularized twins dashed with squares."""
    families = list(dict.fromkeys(p.family for p in points))
    ordered = sorted(points, key=lambda p: (families.index(p.family), p.regularized))
    for label in dict.fromkeys(p.label for p in ordered):
        mine = [p for p in points if p.label == label and getattr(p, value) is not None]
        if not mine:
            continue
        first = mine[0]
        ks = sorted({p.K for p in mine})
        means = [float(np.mean([getattr(p, value) for p in mine if size == p.K])) for size in ks]
        colour = colours[first.family]
        ax.plot(ks, means, "--" if first.regularized else "-", color=colour, label=label)
        ys = [getattr(p, value) for p in mine]
        ax.scatter(
            [p.K for p in mine], ys, color=colour, marker="s" if first.regularized else "o", s=28
        )


def plot_m_vs_k(points: Sequence[MKPoint], out: Path, eps: float | None = None) -> Path:
    """M against K, log axes, one column per training data set; a second row shows the
    prototypes used (some test image's argmax) against K where the points know it.

    Every run is a marker; a line joins the mean at each K (seeds averaged), baseline
    solid, regularized dashed. The dotted diagonal is M = K (no collapse).
    """
    plt = _pyplot()
    panels = list(dict.fromkeys(p.data for p in points))
    with_usage = any(p.used is not None for p in points)
    rows = 2 if with_usage else 1
    fig, axes = plt.subplots(
        rows, len(panels), figsize=(5.2 * len(panels), 4.2 * rows), squeeze=False
    )
    colours = _family_styles([p.family for p in points])
    all_k = [p.K for p in points]
    low, high = min(all_k) / 1.5, max(all_k) * 1.5
    for column, data in enumerate(panels):
        mine = [p for p in points if p.data == data]
        suffix = f"\n{data}" if data else ""
        ax = axes[0][column]
        _plot_against_k(ax, mine, "M", colours)
        ax.plot([low, high], [low, high], ":", color=_DARK_GREY, label="M = K")
        _log_axes(ax)
        ax.set_xlabel("K (prototypes)")
        ax.set_ylabel("M (unique prototypes)")
        title = "unique prototypes" + (f" (eps {eps:g})" if eps is not None else "")
        ax.set_title(title + suffix, fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
        if with_usage:
            ax = axes[1][column]
            _plot_against_k(ax, mine, "used", colours)
            _log_axes(ax)
            ax.set_xlabel("K (prototypes)")
            ax.set_ylabel("prototypes used (some image's argmax)")
            ax.set_title("prototypes used" + suffix, fontsize=10)
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, out)


def _plot_curves(ax: Any, curves: Sequence[Curve], colours: dict[str, str]) -> None:
    for curve in curves:
        ax.plot(
            curve.x,
            curve.y,
            "--" if curve.regularized else "-",
            marker=".",
            color=colours[curve.group],
            label=curve.name,
        )


def plot_training(panels: Mapping[str, Sequence[Curve]], out: Path) -> Path:
    """One column per quantity of :data:`TRAINING_PANELS` (over steps), one row per
    training data set (``Curve.panel``), one line per run."""
    plt = _pyplot()
    rows = list(dict.fromkeys(c.panel for curves in panels.values() for c in curves)) or [""]
    fig, axes = plt.subplots(
        len(rows),
        len(TRAINING_PANELS),
        figsize=(4.3 * len(TRAINING_PANELS), 3.6 * len(rows)),
        squeeze=False,
    )
    colours = _family_styles([c.group for curves in panels.values() for c in curves])
    for row, data in zip(axes, rows, strict=True):
        for ax, (key, title) in zip(row, TRAINING_PANELS, strict=True):
            _plot_curves(ax, [c for c in panels.get(key, ()) if c.panel == data], colours)
            ax.set_title(title + (f"\n{data}" if data else ""), fontsize=10)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        handles, _names = row[0].get_legend_handles_labels()
        if handles:
            row[0].legend(fontsize=6)
    fig.tight_layout()
    return _save(fig, out)


def plot_uniqueness(curves: Sequence[Curve], out: Path, eps: float | None = None) -> Path:
    """M against eps (log x), one line per run; the vertical line marks the eps of M."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 4.2))
    _plot_curves(ax, curves, _family_styles([c.group for c in curves]))
    if eps is not None:
        ax.axvline(eps, color=_DARK_GREY, linestyle=":", label=f"eps {eps:g}")
    ax.set_xscale("log")
    ax.set_xlabel("eps (linking distance between unit prototypes)")
    ax.set_ylabel("M (unique prototypes)")
    ax.set_title("uniqueness curve")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, out)


def _rank_colours(ids: np.ndarray, sizes: np.ndarray, min_size: int) -> list[Any]:
    """Tab10 colours for the ``_TOP`` largest ids with size >= min_size, grey otherwise."""
    big = [int(i) for i in np.argsort(-sizes, kind="stable") if sizes[i] >= min_size][:_TOP]
    palette = {gid: _PALETTE[rank] for rank, gid in enumerate(big)}
    return [palette.get(int(g), _GREY) for g in ids]


def plot_prototype_maps(maps: Sequence[ProtoMap], out: Path) -> Path:
    """Prototype t-SNE maps side by side (baseline, then regularized).

    The ten largest duplicate groups (size >= 2) get their own colours, smaller
    duplicate groups dark grey, unique prototypes light grey.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(maps), figsize=(4.6 * len(maps), 4.4), squeeze=False)
    for ax, pmap in zip(axes[0], maps, strict=True):
        colours = _rank_colours(pmap.groups, pmap.group_sizes, min_size=2)
        duplicated = pmap.group_sizes[pmap.groups] >= 2
        colours = [
            c if c != _GREY or not dup else _DARK_GREY
            for c, dup in zip(colours, duplicated, strict=True)
        ]
        sizes = np.where(duplicated, 18, 8)
        ax.scatter(pmap.coords[:, 0], pmap.coords[:, 1], c=colours, s=sizes, linewidths=0)
        ax.set_title(pmap.title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return _save(fig, out)


def plot_embedding_map(
    coords: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    assignments: np.ndarray,
    num_prototypes: int,
    out: Path,
    title: str,
) -> Path:
    """Test embeddings' t-SNE map twice: coloured by label, and by assigned prototype
    (the ten most used prototypes in colour, the rest grey)."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10.0, 4.6))
    many = len(classes) > 20
    cmap = plt.get_cmap("tab20" if len(classes) > 10 else "tab10")
    for c, name in enumerate(classes):
        mask = labels == c
        if mask.any():
            colour = cmap(c % cmap.N)
            left.scatter(coords[mask, 0], coords[mask, 1], s=8, color=colour, label=name)
    if not many and len(classes) > 0:
        left.legend(fontsize=7, markerscale=2, loc="best")
    left.set_title("coloured by label", fontsize=9)
    counts = np.bincount(assignments, minlength=num_prototypes)
    right.scatter(
        coords[:, 0],
        coords[:, 1],
        s=8,
        c=_rank_colours(assignments, counts, min_size=1),
        linewidths=0,
    )
    right.set_title(
        f"coloured by assigned prototype ({int((counts > 0).sum())} of {num_prototypes} used)",
        fontsize=9,
    )
    for ax in (left, right):
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, out)


def plot_usage(counts: np.ndarray, out: Path, title: str) -> Path:
    """Test images per prototype, sorted (the MLCD as met), against the uniform n / K."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    ordered = np.sort(np.asarray(counts))[::-1]
    ranks = np.arange(1, ordered.size + 1)
    # Rank r is the bar [r, r + 1) on a log axis: when a few of thousands of prototypes
    # take every image (usage collapse), a linear axis would draw them too thin to see.
    ax.bar(ranks, ordered, width=1.0, align="edge", color="C0", linewidth=0)
    ax.axhline(ordered.sum() / ordered.size, color=_DARK_GREY, linestyle=":", label="uniform")
    ax.set_xscale("log")
    ax.set_xlim(1, ordered.size + 1)
    ax.set_xlabel("prototype (by usage rank, log scale)")
    ax.set_ylabel("test images assigned")
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return _save(fig, out)


def plot_clusters(rows: Sequence[tuple[str, Sequence[Image.Image]]], out: Path) -> Path:
    """A grid: one row per cluster (its title, then its example images)."""
    plt = _pyplot()
    cols = max((len(images) for _, images in rows), default=1)
    fig, axes = plt.subplots(
        len(rows), cols, figsize=(1.1 * cols + 0.4, 1.25 * len(rows) + 0.3), squeeze=False
    )
    for r, (title, images) in enumerate(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(images):
                ax.imshow(np.asarray(images[c].convert("RGB")), interpolation="nearest")
            else:
                ax.axis("off")
        axes[r][0].set_title(title, fontsize=8, loc="left")
    fig.tight_layout()
    return _save(fig, out)
