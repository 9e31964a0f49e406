"""The training checkpoint: what ``checkpoints/last.pt`` holds, written and read in one place.

A protossl training checkpoint is a dict saved with ``torch.save`` and read with
``weights_only=True`` (:func:`protossl.core.files.load_checkpoint`)::

    {"format": "protossl", "version": 1, "config": Config.to_dict(), "epoch": next epoch,
     "step": optimizer steps so far, "elapsed_seconds": float,
     "method": Method.state_dict(), "optimizer": optimizer.state_dict(),
     "hooks": [TrainerHook.state_dict(), ...]  (only when the run has hooks)}

Reading checks the format, and the version: an older file is brought up to date by the
functions in :data:`MIGRATIONS` (one per version step), a newer one is refused with a line
that says to upgrade protossl.

Example:
    >>> state = training_state({"method": "dino"}, 1, 10, 2.5, {}, {})
    >>> state["format"], state["version"], state["step"]
    ('protossl', 1, 10)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protossl.config import Config, config_from_dict
from protossl.core.errors import UserError
from protossl.core.files import load_checkpoint, save_checkpoint_atomic
from protossl.core.run_layout import CHECKPOINT_FORMAT, RunPaths
from protossl.methods import Method, build_method

__all__ = [
    "CHECKPOINT_VERSION",
    "MIGRATIONS",
    "LoadedRun",
    "config_of_run",
    "is_training_state",
    "load_method",
    "method_from_state",
    "read_training_checkpoint",
    "save_training_checkpoint",
    "training_state",
]

CHECKPOINT_VERSION = 1
# MIGRATIONS[v] turns a version-v state into a version-(v + 1) state. Empty while every
# checkpoint ever written is version 1; the first format change adds MIGRATIONS[1].
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}


def training_state(
    config: dict[str, Any],
    next_epoch: int,
    step: int,
    elapsed_seconds: float,
    method: dict[str, Any],
    optimizer: dict[str, Any],
    hooks: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The checkpoint dict of the current version (``hooks``: the trainer hooks' states,
    stored only when there are hooks)."""
    state = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": config,
        "epoch": next_epoch,
        "step": step,
        "elapsed_seconds": elapsed_seconds,
        "method": method,
        "optimizer": optimizer,
    }
    if hooks:
        state["hooks"] = hooks
    return state


def save_training_checkpoint(paths: RunPaths, state: dict[str, Any], every_epochs: int) -> None:
    """Write ``last.pt`` (atomically) and, every ``every_epochs`` epochs, a periodic copy."""
    save_checkpoint_atomic(state, paths.last_checkpoint)
    epoch = int(state["epoch"])
    if every_epochs > 0 and epoch % every_epochs == 0:
        save_checkpoint_atomic(state, paths.epoch_checkpoint(epoch))


def _migrate(state: dict[str, Any], path: Path) -> dict[str, Any]:
    version = state.get("version", 1)
    if not isinstance(version, int) or version < 1:
        raise UserError(f"{path} has an invalid checkpoint version {version!r}")
    if version > CHECKPOINT_VERSION:
        raise UserError(
            f"{path} was written by a newer protossl (checkpoint version {version}; this "
            f"protossl reads up to {CHECKPOINT_VERSION}): upgrade protossl to read it"
        )
    while version < CHECKPOINT_VERSION:
        state = MIGRATIONS[version](state)
        version += 1
        state["version"] = version
    return state


def is_training_state(state: Any) -> bool:
    """Whether a loaded checkpoint dict is a protossl training checkpoint."""
    return (
        isinstance(state, dict)
        and state.get("format") == CHECKPOINT_FORMAT
        and isinstance(state.get("config"), dict)
        and isinstance(state.get("method"), dict)
    )


def read_training_checkpoint(path: str | Path, why: str = "") -> dict[str, Any]:
    """A protossl training checkpoint, checked and migrated to the current version.

    Args:
        path: The checkpoint file.
        why: Appended to the refusal (for example ``"eval needs one"``).

    Raises:
        UserError: unreadable or unsafe file, not a protossl training checkpoint, or a
            version newer than this protossl reads.
    """
    path = Path(path)
    state = load_checkpoint(path)
    if not is_training_state(state):
        raise UserError(f"{path} is not a protossl training checkpoint{'; ' + why if why else ''}")
    return _migrate(state, path)


def config_of_run(run_dir: str | Path) -> Config:
    """The configuration saved in a run's last checkpoint (what ``--resume`` continues)."""
    path = RunPaths(Path(run_dir)).last_checkpoint
    if not path.is_file():
        raise UserError(f"cannot resume: {path} does not exist; start a new run without --resume")
    state = read_training_checkpoint(path, "cannot resume from it")
    return config_from_dict(state["config"])


@dataclass
class LoadedRun:
    """A method rebuilt from a checkpoint, with its configuration and file."""

    method: Method
    cfg: Config
    file: Path


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_method(file: str | Path, why: str = "") -> LoadedRun:
    """Rebuild the method of a training checkpoint file, in evaluation mode, on the CPU.

    (Callers that report numbers check its weights for NaN/inf themselves:
    ``protossl.evaluation.finite.require_finite_weights``.)

    Raises:
        UserError: see :func:`read_training_checkpoint`, or weights that do not fit
            the checkpoint's own configuration.
    """
    file = Path(file)
    return method_from_state(load_checkpoint(file), file, why)


def method_from_state(state: Any, file: Path, why: str = "") -> LoadedRun:
    """:func:`load_method` for a checkpoint dict already loaded from ``file``.

    Raises:
        UserError: not a protossl training checkpoint, a newer version, or weights that
            do not fit the checkpoint's own configuration.
    """
    if not is_training_state(state):
        raise UserError(f"{file} is not a protossl training checkpoint{'; ' + why if why else ''}")
    state = _migrate(state, file)
    cfg = config_from_dict(state["config"])
    method = build_method(cfg)
    try:
        method.load_state_dict(state["method"])
    except (RuntimeError, KeyError, ValueError) as exc:
        raise UserError(f"{file}: weights do not match its config ({_first_line(exc)})") from None
    method.eval()
    return LoadedRun(method, cfg, file)
