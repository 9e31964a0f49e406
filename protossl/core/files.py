"""Crash-safe checkpoint writing and code-free checkpoint reading.

Two promises of the command line (see the design document) live here:

* nothing already written is lost or half-written: :func:`save_checkpoint_atomic`
  writes to a temporary file next to the target, syncs it to disk and renames it
  over the target in one atomic step, so ``last.pt`` is always either the old or
  the new checkpoint, even if the process dies mid-write;
* a checkpoint from the internet never executes code: :func:`load_checkpoint`
  always uses ``torch.load(..., weights_only=True)`` and turns every failure into
  a one-line :class:`~protossl.core.errors.UserError`.

``weights_only=True`` accepts tensors, Python scalars, strings, ``None`` and
lists / tuples / dicts of those, but refuses numpy arrays and scalars. Pass
state that may contain numpy values through :func:`to_weights_only_safe` before
saving it.
"""

from __future__ import annotations

import os
import pickle
import re
import secrets
from collections import OrderedDict
from contextlib import suppress
from pathlib import Path
from typing import IO, Any, cast

import numpy as np
import torch

from protossl.core.errors import UserError

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "load_checkpoint",
    "save_checkpoint_atomic",
    "to_weights_only_safe",
]

# numpy dtype kinds torch can hold: bool, signed / unsigned int, float, complex.
_TENSOR_KINDS = frozenset("biufc")
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


# --------------------------------------------------------------------------- saving


def _open_temp_next_to(path: Path) -> tuple[int, Path]:
    """Create and open a new hidden temporary file in ``path``'s directory.

    The same directory guarantees that the final ``os.replace`` is a rename
    within one file system (atomic on POSIX); ``os.open`` with mode 0o666 lets
    the umask decide the permissions, as for any ordinary file, unlike
    ``tempfile.mkstemp`` whose 0o600 would stick to the checkpoint.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file next to {path}")


def _fsync_directory(directory: Path) -> None:
    """Persist the rename itself; best effort, since not every OS can open a directory."""
    with suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class _WriteErrorRecorder:
    """A file-like wrapper that remembers the OSError of a failed ``write``."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return int(self.handle.write(data))
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.handle.flush()


def _name_the_target(exc: BaseException, path: Path) -> None:
    """A full disk inside ``torch.save`` names no file: name the one being written."""
    if isinstance(exc, OSError) and exc.filename is None:
        exc.filename = str(path)


def save_checkpoint_atomic(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` to ``path`` so that ``path`` is never left half-written.

    The state is written with ``torch.save`` to a temporary file in the same
    directory, flushed and ``fsync``-ed, then moved onto ``path`` with
    ``os.replace``. If anything fails (including Ctrl-C), the temporary file is
    removed, the exception propagates and any previous ``path`` is untouched.
    Parent directories are created.

    Everything in ``state`` should load with ``weights_only=True``: tensors,
    Python scalars and strings, and lists / dicts of them. Convert numpy values
    first with :func:`to_weights_only_safe`.

    Args:
        state: The checkpoint contents (a dict, as :func:`load_checkpoint` requires).
        path: Destination file.

    Raises:
        TypeError: If ``state`` is not a dict.
        OSError: If the directory or file cannot be written.

    Example:
        >>> model = torch.nn.Linear(2, 2)
        >>> state = {"model": model.state_dict(), "step": 10}
        >>> save_checkpoint_atomic(state, "runs/dino/checkpoints/last.pt")  # doctest: +SKIP
    """
    if not isinstance(state, dict):
        raise TypeError(f"checkpoint state must be a dict (got {type(state).__name__})")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _open_temp_next_to(path)
    try:
        with os.fdopen(fd, "wb") as f:
            writer = _WriteErrorRecorder(f)
            try:
                torch.save(state, cast(IO[bytes], writer))  # duck-typed file
            except RuntimeError:
                # torch's zip writer reports a failed write (a full disk) as a RuntimeError
                # ("unexpected pos"); the OSError underneath says what happened.
                if writer.error is None:
                    raise
                raise writer.error from None
            f.flush()
            os.fsync(f.fileno())  # data on disk before the rename makes it visible
        os.replace(tmp, path)
    except BaseException as exc:
        # BaseException: a KeyboardInterrupt mid-save must not leave litter either.
        with suppress(OSError):
            tmp.unlink()
        _name_the_target(exc, path)
        raise
    _fsync_directory(path.parent)


# --------------------------------------------------------------------------- loading


def _refusal_message(path: Path, err: pickle.UnpicklingError) -> str | None:
    """One-line message if ``err`` is weights_only refusing an object, else None."""
    match = _REFUSED_GLOBAL.search(str(err))
    if match is None:
        return None
    name = match.group(1)
    hint = (
        " If you saved it yourself, convert numpy values with "
        "protossl.core.files.to_weights_only_safe before saving."
        if name.startswith("numpy")
        else ""
    )
    return (
        f"checkpoint {path} refused to load: it contains Python objects that would run code "
        f"on load ({name}); only tensors and plain containers are allowed.{hint}"
    )


def _read(path: Path, map_location: str) -> Any:
    """``torch.load`` with ``weights_only=True``, every failure turned into a UserError."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        message = _refusal_message(path, err)
        if message is None:
            message = (
                f"checkpoint {path} is not a readable PyTorch checkpoint (corrupt, truncated or "
                "another format); re-download it or use an earlier checkpoint"
            )
        raise UserError(message) from err
    except OSError as err:
        raise UserError(
            f"checkpoint {path} could not be read ({err.strerror or err}); check its permissions"
        ) from err
    except Exception as err:
        # torch.load reports damage as RuntimeError (zip), EOFError (empty), KeyError or
        # ValueError (garbage bytes) and more; all mean the same thing to the user.
        raise UserError(
            f"checkpoint {path} is truncated or corrupt ({type(err).__name__}); "
            "re-download it or use an earlier checkpoint from the same run"
        ) from err


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename (never half-written).

    An interruption at any point (an error, a full disk, Ctrl-C) leaves the previous
    ``path`` as it was and no temporary file behind.

    Example:
        >>> atomic_write_bytes(Path("head.safetensors"), b"...")  # doctest: +SKIP
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _open_temp_next_to(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with suppress(OSError):
            tmp.unlink()
        _name_the_target(exc, path)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically, as :func:`atomic_write_bytes`.

    Example:
        >>> atomic_write_text(Path("summary.json"), "{}\\n")  # doctest: +SKIP
    """
    atomic_write_bytes(path, text.encode("utf-8"))


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict without ever executing code from the file.

    Always calls ``torch.load(path, map_location=..., weights_only=True)``, so a
    malicious pickle (an object whose ``__reduce__`` runs a command) is refused
    rather than run.

    Args:
        path: A ``.pt`` / ``.pth`` file written by ``torch.save``.
        map_location: Device the tensors are loaded onto (default ``"cpu"``).

    Returns:
        The top-level dict stored in the file.

    Raises:
        UserError: One line naming the file and the fix, if the file is missing,
            is a directory, cannot be read, is truncated or corrupt, contains
            objects that ``weights_only`` refuses, or does not hold a dict.

    Example:
        >>> state = load_checkpoint("runs/dino/checkpoints/last.pt")  # doctest: +SKIP
        >>> model.load_state_dict(state["model"])  # doctest: +SKIP
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist; check the path")
    if path.is_dir():
        raise UserError(
            f"checkpoint {path} is a directory, not a file; pass the checkpoint file inside it "
            f"(for a run directory: {path / 'checkpoints' / 'last.pt'})"
        )
    state = _read(path, map_location)
    if not isinstance(state, dict):
        raise UserError(
            f"checkpoint {path} holds a {type(state).__name__}, not a dict of named entries; "
            "pass a checkpoint saved as torch.save({...}, path)"
        )
    return state


# --------------------------------------------------------------------------- conversion


def _convert_array(array: np.ndarray) -> Any:
    """Numeric arrays become tensors (a copy, never a view); others nested lists."""
    if array.dtype.kind in _TENSOR_KINDS:
        return torch.from_numpy(np.array(array, copy=True, order="C"))
    return to_weights_only_safe(array.tolist())


def _convert_dict(mapping: dict[Any, Any]) -> dict[Any, Any]:
    """Convert keys and values; keep OrderedDict and its ``_metadata`` (state dicts need it)."""
    items = ((to_weights_only_safe(k), to_weights_only_safe(v)) for k, v in mapping.items())
    if isinstance(mapping, OrderedDict):
        out: dict[Any, Any] = OrderedDict(items)
        if hasattr(mapping, "_metadata"):
            out._metadata = mapping._metadata  # type: ignore[attr-defined]
        return out
    return dict(items)


def to_weights_only_safe(obj: Any) -> Any:
    """Recursively convert ``obj`` into values ``torch.load(weights_only=True)`` accepts.

    numpy arrays of numbers or booleans become tensors, other numpy arrays
    nested lists, numpy scalars Python scalars, tuples lists, ``pathlib`` paths
    strings; dicts and lists are converted element by element. Tensors and
    plain Python values are returned unchanged. Use it on anything (metrics,
    RNG states, configs) that may hold numpy values before saving a checkpoint.

    Args:
        obj: Any nesting of dicts, lists, tuples, tensors, numpy and Python values.

    Returns:
        The converted object (new containers; tensors are not copied).

    Example:
        >>> to_weights_only_safe({"lr": np.float64(0.1), "hist": np.arange(3), "shape": (2, 3)})
        {'lr': 0.1, 'hist': tensor([0, 1, 2]), 'shape': [2, 3]}
    """
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, np.ndarray):
        return _convert_array(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return _convert_dict(obj)
    if isinstance(obj, list | tuple):
        return [to_weights_only_safe(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj
