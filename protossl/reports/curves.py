"""Training curves of several runs side by side, from their ``metrics.jsonl``.

Both faces of collapse over training: the cross-entropy, how many prototypes
any test image picks (usage) and the nearest-neighbour distance between
prototypes (duplicates start where it reaches eps).

Example:
    >>> plot_runs({"dino": Path("runs/dino")}, Path("curves.png"))  # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PANELS = (
    ("cross_entropy", "cross-entropy"),
    ("prototypes_used", "prototypes used (test argmax)"),
    ("nn_distance_median", "nearest-neighbour distance, median"),
    ("M", "unique prototypes M"),
)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The per-epoch records of a run."""
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_runs(runs: dict[str, Path], out: Path) -> Path:
    """Write a PNG with one panel per quantity in ``PANELS`` and one line per run."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.4))
    for name, run_dir in runs.items():
        records = read_metrics(run_dir)
        steps = [r["step"] for r in records]
        for ax, (key, _title) in zip(axes, PANELS, strict=True):
            if key in records[0]:
                ax.plot(steps, [r[key] for r in records], marker=".", label=name)
    for ax, (_key, title) in zip(axes, PANELS, strict=True):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
