"""Who owns a run folder: the marker that makes it protossl's, and the lock of its writer.

* **Ownership.** A run folder holds ``run.json`` (protossl version, creation time, a run
  id). ``protossl train --out`` creates a new folder or continues one of protossl's, and
  refuses any other non-empty folder, so it never writes over a user's own
  ``config.yaml`` or ``metrics.jsonl``. Folders written before the marker existed count as
  protossl's when their ``config.yaml`` is a protossl configuration or they hold
  ``checkpoints/last.pt``.
* **One writer.** While a process writes a run (training, or ``eval`` recording into
  ``summary.json``) or a sweep folder, it holds an exclusive OS file lock on ``.lock``
  inside it. The operating system drops the lock with the process, so a killed run never
  blocks a later one; a second writer is refused with a line naming the holder's pid.
  (``fcntl`` locks: POSIX only; where ``fcntl`` is missing nothing is locked.)

Example:
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp()) / "run"
    >>> with claim_run_folder(folder):
    ...     is_run_folder(folder), (folder / "run.json").is_file()
    (True, True)
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from protossl.core.errors import UserError
from protossl.core.run_layout import (
    EVAL_LOG_NAME,
    LOCK_NAME,
    MARKER_NAME,
    TRAIN_LOG_NAME,
    RunPaths,
)
from protossl.core.safe_yaml import load_yaml_file

# What ``protossl sweep`` may leave in a run folder before its training starts.
_SWEEP_FILES = frozenset({TRAIN_LOG_NAME, EVAL_LOG_NAME, MARKER_NAME, LOCK_NAME})

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows: no locking
    fcntl = None  # type: ignore[assignment]


def is_run_folder(path: str | Path) -> bool:
    """True for a folder protossl wrote a run into (marker, or an older run's files)."""
    paths = RunPaths(Path(path))
    if paths.marker.is_file() or paths.last_checkpoint.is_file():
        return True
    config = paths.config
    if not config.is_file():
        return False
    try:
        data = load_yaml_file(config, "config")
    except UserError:
        return False
    return isinstance(data, dict) and {"method", "model", "optim"} <= set(data)


def write_marker(path: str | Path) -> None:
    """Create ``path`` if needed and write its ``run.json`` unless it has one."""
    from protossl import __version__
    from protossl.core.files import atomic_write_text

    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    marker = root / MARKER_NAME
    if marker.is_file():
        return
    info = {
        "protossl": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "run_id": uuid.uuid4().hex,
    }
    atomic_write_text(marker, json.dumps(info, indent=2) + "\n")


def check_owned(path: str | Path, what: str = "--out") -> None:
    """Refuse a path that is a file, or a non-empty folder that is not a protossl run."""
    root = Path(path)
    if root.exists() and not root.is_dir():
        raise UserError(f"{what} {root} is a file, not a folder; choose a folder")
    if not root.is_dir() or is_run_folder(root):
        return
    foreign = sorted(e.name for e in os.scandir(root) if e.name not in _SWEEP_FILES)
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise UserError(
            f"{what} {root} is not empty and is not a protossl run folder (it holds {shown}); "
            "choose a new or empty folder"
        )


class FolderLock:
    """An exclusive lock on ``FOLDER/.lock`` held until :meth:`release` or process exit."""

    def __init__(self, folder: str | Path, what: str = "run folder") -> None:
        self.path = Path(folder) / LOCK_NAME
        self._handle: IO[str] | None = None
        if fcntl is None:  # pragma: no cover - no locks on this platform
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise UserError(
                f"{what} {self.path.parent} is being written by another protossl process "
                f"(pid {holder}); wait for it to finish or stop it"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        """Let the next writer in (closing the file drops the lock)."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


def claim_run_folder(path: str | Path, what: str = "--out") -> FolderLock:
    """Check ownership, write the marker, take the writer's lock, then remove what earlier
    writers left half-written (their temporary files), in that order."""
    check_owned(path, what)
    write_marker(path)
    lock = FolderLock(path)
    remove_stale_temporaries(path)
    return lock


def remove_stale_temporaries(path: str | Path) -> int:
    """Delete the temporary files of interrupted atomic writes in a run folder.

    ``save_checkpoint_atomic`` and ``atomic_write_text`` write ``.NAME.<token>.tmp`` next
    to their target and rename it; a process killed in between (kill -9, power loss)
    leaves it behind, possibly the size of a checkpoint. Call only while holding the
    folder's lock: then no live writer owns any of them. Returns how many were removed.
    """
    removed = 0
    root = Path(path)
    for folder in (root, RunPaths(root).checkpoints):
        if not folder.is_dir():
            continue
        for entry in os.scandir(folder):
            if entry.is_file() and entry.name.startswith(".") and entry.name.endswith(".tmp"):
                os.unlink(entry.path)
                removed += 1
    return removed


def die_with_parent() -> None:
    """``preexec_fn`` for children: Linux sends them SIGTERM when their parent dies.

    So a sweep killed with SIGKILL (which it cannot catch) leaves no training behind.
    Elsewhere this does nothing; the run lock still stops a second writer.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc: Any = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except OSError:  # no libc by that name: no parent-death signal
        pass
