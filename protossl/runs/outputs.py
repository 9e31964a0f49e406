"""Outputs never clobber inputs: the checks every command runs before it writes a file.

A command's output option (``dedupe --out``, ``report --out`` and ``--results-md``, ...)
names a path the user typed, so a slip of the keyboard must never destroy something a
run still needs. Before anything is computed, :func:`check_output_file` (one file) and
:func:`check_output_folder` (a folder of files) refuse, with one line:

* a path that is one of the command's own inputs (reading and writing one file);
* a run's own state: ``config.yaml``, ``metrics.jsonl``, ``summary.json``, ``run.json``,
  its logs and lock, and anything under its ``checkpoints/`` folder; a run or sweep
  folder itself as an output folder. ``--force`` does not lift these: they are never
  the right place for a command's output;
* an existing output, unless ``--force``; the file is then replaced atomically
  (temporary file and rename), so an interrupted write leaves the old one intact.

Example:
    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp()) / "compact.safetensors"
    >>> check_output_file(out, force=False) == out
    True
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from protossl.core.errors import UserError
from protossl.core.run_layout import CHECKPOINTS_DIR, RUN_STATE_FILES
from protossl.runs.folder import is_run_folder

__all__ = ["check_output_file", "check_output_folder", "protected_reason"]

# RUN_STATE_FILES (core.run_layout): what a run folder needs to resume, analyze and
# report; no command output goes there.
# What a sweep folder needs to resume.
_SWEEP_STATE_FILES = frozenset({"results.json", "results.csv", "sweep.yaml"})


def _is_sweep_folder(folder: Path) -> bool:
    return (folder / "results.json").is_file() and any(
        is_run_folder(child) for child in _subfolders(folder)
    )


def _subfolders(folder: Path) -> list[Path]:
    try:
        return [Path(e.path) for e in os.scandir(folder) if e.is_dir()]
    except OSError:
        return []


def protected_reason(path: str | Path) -> str | None:
    """Why ``path`` is part of a run's or a sweep's state (so never an output), or None.

    Example:
        >>> protected_reason("/nowhere/at/all.txt") is None
        True
    """
    target = Path(os.path.abspath(path))
    parent = target.parent
    if target.name in RUN_STATE_FILES and is_run_folder(parent):
        return f"the {target.name} of the run {parent}"
    run = _run_of_checkpoints_folder(parent)
    if run is not None:
        return f"inside the checkpoints of the run {run}"
    if target.name in _SWEEP_STATE_FILES and _is_sweep_folder(parent):
        return f"the {target.name} of the sweep {parent}"
    return None


def _run_of_checkpoints_folder(folder: Path) -> Path | None:
    """The run whose ``checkpoints/`` folder is ``folder`` or holds it, else None."""
    for candidate in (folder, *folder.parents):
        if candidate.name == CHECKPOINTS_DIR and is_run_folder(candidate.parent):
            return candidate.parent
    return None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except OSError:
        return False


def _refuse_inputs(path: Path, inputs: Iterable[str | Path], what: str) -> None:
    for source in inputs:
        source_path = Path(source)
        if _same_file(path, source_path):
            raise UserError(
                f"{what} {path} is the input {source_path}; write the output to another path"
            )


def check_output_file(
    path: str | Path,
    *,
    force: bool,
    inputs: Iterable[str | Path] = (),
    what: str = "--out",
) -> Path:
    """Refuse to write ``path`` where it would replace an input or a run's state.

    Args:
        path: The output file the user named.
        force: Replace an existing ordinary file (atomically, by the writer).
        inputs: Files the command reads; the output may be none of them.
        what: The option's name, for the message.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        UserError: One line naming the path and what to do instead.
    """
    target = Path(path)
    if target.is_dir():
        raise UserError(f"{what} {target} is a folder; name the file to write")
    _refuse_inputs(target, inputs, what)
    reason = protected_reason(target)
    if reason is not None:
        raise UserError(f"{what} {target} is {reason}; protossl never writes over it")
    if target.exists() and not force:
        raise UserError(f"{what} {target} exists; pass --force to replace it")
    return target


def check_output_folder(
    path: str | Path,
    *,
    force: bool,
    inputs: Iterable[str | Path] = (),
    what: str = "--out",
    default: bool = False,
) -> Path:
    """Refuse an output folder that is a run's or sweep's own folder, or that is not empty.

    Args:
        path: The folder the command writes its files into.
        force: Write into an existing non-empty folder (each file replaced atomically).
        inputs: Files and folders the command reads; the output may be none of them.
        what: The option's name, for the message.
        default: ``path`` is the command's own default (e.g. ``RUN/report``), not typed
            by the user: rewriting what the same command wrote there before is expected
            and needs no ``--force``.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise UserError(f"{what} {target} is a file, not a folder; choose a folder")
    _refuse_inputs(target, inputs, what)
    if target.is_dir() and (is_run_folder(target) or _is_sweep_folder(target)):
        raise UserError(
            f"{what} {target} is a run or sweep folder; write the output into a new folder "
            "(for example a subfolder of it)"
        )
    run = _run_of_checkpoints_folder(Path(os.path.abspath(target)))
    if run is not None:
        raise UserError(
            f"{what} {target} is inside the checkpoints of the run {run}; choose another folder"
        )
    if target.is_dir() and not default and not force and any(os.scandir(target)):
        raise UserError(f"{what} {target} exists and is not empty; pass --force to write into it")
    return target
