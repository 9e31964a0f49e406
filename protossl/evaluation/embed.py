"""``protossl embed``: features and prototype assignments of every image, streamed to disk.

For a protossl run (or a released backbone, :mod:`protossl.evaluation.released`) and one
split of a data set, writes into one folder:

- ``features.npy``: float32 [N, D], the teacher backbone's features, in data set order;
- ``prototype.npy`` (int64) and ``probability.npy`` (float32): the teacher's prototype
  assignment (argmax of its prototype scores, the cluster of Caron et al. 2021) and its
  probability under the teacher's softmax at ``objective.teacher_temp`` (DINO's target
  distribution, without centering); absent for a released backbone (no prototypes);
- ``rows.csv``: index, file path (empty for in-memory data), label, class name, prototype,
  probability; ``clusters.csv``: image, prototype; ``prototype_counts.csv``: prototype,
  images, in decreasing order;
- ``embed.json``: what was embedded and how (the resume fingerprint) and the row count.

The arrays are memory-mapped and filled a chunk of rows at a time, so memory stays bounded
whatever the folder's size. ``embed.json`` records the rows done after each chunk (written
atomically, after the arrays are flushed): a killed run, started again with the same
command, recomputes from the first unfinished chunk and ends with the same files as an
uninterrupted run, no row duplicated or missing.

Example:
    >>> prototype_counts(np.array([3, 1, 3, 3]), 4)
    [(3, 3), (1, 1)]
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.lib.format import open_memmap
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from protossl.core.errors import UserError
from protossl.core.files import atomic_write_text
from protossl.data import EvalTransform, load_dataset, parse_data_spec
from protossl.evaluation.cache import dataset_fingerprint, file_digest
from protossl.evaluation.released import ReleasedMethod, load_for_evaluation
from protossl.methods import Method
from protossl.models.backbones import Backbone
from protossl.runs.outputs import check_output_folder

__all__ = ["EmbedResult", "embed", "prototype_counts"]

EMBED_VERSION = 1
STATE_FILE = "embed.json"
SPLITS = ("train", "test")


@dataclass(frozen=True)
class EmbedResult:
    """What :func:`embed` wrote."""

    folder: Path
    rows: int
    dim: int
    resumed_from: int  # rows already done when this call started (0: a fresh start)
    assignments: bool  # prototype.npy / probability.npy written


def prototype_counts(prototypes: np.ndarray, num_prototypes: int) -> list[tuple[int, int]]:
    """(prototype, images) for every prototype that got an image, most images first."""
    counts = np.bincount(prototypes, minlength=num_prototypes)
    order = sorted(np.flatnonzero(counts).tolist(), key=lambda k: (-int(counts[k]), k))
    return [(int(k), int(counts[k])) for k in order]


def _features_and_logits(
    method: Method, backbone: nn.Module, images: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's backbone features and prototype scores from one backbone pass.

    The scores are the method's own (``teacher_logits``); the features are read off the
    backbone while it computes them, so the backbone runs once per batch. A method whose
    scores do not go through the teacher's backbone exactly once gets a second pass.
    """
    captured: list[torch.Tensor] = []
    handle = backbone.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        logits = method.teacher_logits(images)
    finally:
        handle.remove()
    features = captured[0] if len(captured) == 1 else backbone(images)
    return features, logits


def _read_state(folder: Path) -> dict[str, Any] | None:
    path = folder / STATE_FILE
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return state if isinstance(state, dict) else None


def _write_csv(path: Path, header: list[str], rows: Any) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def embed(
    source: str | Path,
    data: str,
    out: str | Path,
    *,
    split: str = "train",
    batch_size: int = 256,
    image_size: int | None = None,
    chunk_rows: int = 4096,
    progress: bool = False,
    force: bool = False,
    after_batch: Callable[[int], None] | None = None,
) -> EmbedResult:
    """Embed every image of ``data``'s ``split`` with the teacher of ``source``.

    Args:
        source: A run folder, a protossl checkpoint, or a released ViT file.
        data: A data spec (``digits``, ``folder:PATH``, ...).
        out: The output folder; the same command continues an interrupted embedding there.
        split: ``train`` or ``test``.
        batch_size: Images per forward pass.
        image_size: Input size (default: the run's; a released backbone's native size).
        chunk_rows: Rows between two progress records (the most a kill loses).
        progress: Show a progress bar with rate and ETA (stderr).
        force: Start over in a folder that holds another embedding or other files.
        after_batch: Called with the rows written so far after every batch (tests use it
            to interrupt a run at a chosen point).

    Raises:
        UserError: bad split, batch or chunk size; unknown checkpoint or data; an output
            folder that holds something else (without ``force``).
    """
    if split not in SPLITS:
        raise UserError(f"unknown --split {split!r}; use one of {', '.join(SPLITS)}")
    if batch_size < 1 or chunk_rows < 1:
        raise UserError("--batch-size and the chunk size must be >= 1")
    spec = str(parse_data_spec(data))
    loaded = load_for_evaluation(source, image_size)
    transform = EvalTransform(loaded.cfg.data.image_size)
    dataset = load_dataset(spec, "train" if split == "train" else "test", transform=transform)
    method = loaded.method
    assignments = not isinstance(method, ReleasedMethod)
    backbone = method.teacher.get_submodule("backbone")
    assert isinstance(backbone, Backbone)  # every method's teacher, and a released one
    dim = int(backbone.embed_dim)
    n = len(dataset)
    fingerprint = {
        "version": EMBED_VERSION,
        "checkpoint_sha256": file_digest(loaded.file),
        "data": spec,
        "split": split,
        "transform": repr(transform),
        "dataset": dataset_fingerprint(dataset),
        "rows": n,
        "dim": dim,
        "assignments": assignments,
    }
    folder = Path(out)
    state = _read_state(folder) if folder.is_dir() else None
    arrays = ["features.npy", *(["prototype.npy", "probability.npy"] if assignments else [])]
    resuming = (
        state is not None
        and state.get("fingerprint") == fingerprint
        and not force
        and all((folder / name).is_file() for name in arrays)
    )
    if not resuming:
        check_output_folder(folder, force=force, inputs=[source, loaded.file])
    done = int(state["rows_done"]) if resuming and state is not None else 0
    folder.mkdir(parents=True, exist_ok=True)

    mode = "r+" if resuming else "w+"
    features = open_memmap(folder / "features.npy", mode=mode, dtype=np.float32, shape=(n, dim))
    if assignments:
        prototype = open_memmap(folder / "prototype.npy", mode=mode, dtype=np.int64, shape=(n,))
        probability = open_memmap(
            folder / "probability.npy", mode=mode, dtype=np.float32, shape=(n,)
        )
    temperature = float(loaded.cfg.objective.teacher_temp)

    def record(rows_done: int, complete: bool) -> None:
        text = {"fingerprint": fingerprint, "rows_done": rows_done, "complete": complete}
        atomic_write_text(folder / STATE_FILE, json.dumps(text, indent=2) + "\n")

    if not resuming:
        record(0, False)
    bar = tqdm(total=n, initial=done, desc="embed", unit="img", disable=not progress)
    with torch.no_grad():
        for start in range(done, n, chunk_rows):
            stop = min(start + chunk_rows, n)
            loader = DataLoader(Subset(dataset, range(start, stop)), batch_size=batch_size)
            row = start
            for images, _labels in loader:
                if assignments:
                    feats, logits = _features_and_logits(method, backbone, images)
                    features[row : row + len(images)] = feats.float().numpy()
                    probs = torch.softmax(logits.float() / temperature, dim=-1)
                    best, index = probs.max(dim=-1)
                    prototype[row : row + len(images)] = index.numpy()
                    probability[row : row + len(images)] = best.numpy()
                else:
                    features[row : row + len(images)] = backbone(images).float().numpy()
                row += len(images)
                bar.update(len(images))
                if after_batch is not None:
                    after_batch(row)
            features.flush()
            if assignments:
                prototype.flush()
                probability.flush()
            record(stop, False)
    bar.close()

    labels = dataset.targets
    files = dataset.files or [""] * n
    if assignments:
        protos = np.asarray(prototype)
        probs_all = np.asarray(probability)
        _write_csv(
            folder / "rows.csv",
            ["index", "path", "label", "class", "prototype", "probability"],
            (
                (
                    i,
                    files[i],
                    labels[i],
                    dataset.classes[labels[i]],
                    int(protos[i]),
                    f"{probs_all[i]:.6g}",
                )
                for i in range(n)
            ),
        )
        _write_csv(
            folder / "clusters.csv",
            ["image", "prototype"],
            ((files[i] or i, int(protos[i])) for i in range(n)),
        )
        k = int(loaded.cfg.model.num_prototypes)
        _write_csv(
            folder / "prototype_counts.csv", ["prototype", "images"], prototype_counts(protos, k)
        )
    else:
        _write_csv(
            folder / "rows.csv",
            ["index", "path", "label", "class"],
            ((i, files[i], labels[i], dataset.classes[labels[i]]) for i in range(n)),
        )
    record(n, True)
    return EmbedResult(folder, n, dim, done, assignments)
