"""Every sweep file the repository ships parses and validates (configs, memory, evaluations).

A shipped sweep that fails on its first line only after a user waited for the set-up, or
one whose runs collide, is a bug; ``load_sweep`` checks every grid point's config up front
without training anything.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from protossl.sweep.spec import load_sweep

ROOT = Path(__file__).resolve().parents[2]
SWEEP_FILES = sorted((ROOT / "sweeps").glob("*.yaml"))


def test_the_repository_ships_sweep_files() -> None:
    assert len(SWEEP_FILES) >= 2


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
def test_shipped_sweep_file_validates(path: Path) -> None:
    runs = load_sweep(path)
    names = [run.name for run in runs]
    assert len(names) == len(set(names)) >= 1
    for run in runs:
        # Every run sets what its file's comment promises (the shared 'set' keys), and an
        # evaluation, where the file has one, names its data.
        assert run.overrides
        assert all(task.data for task in run.evals)
