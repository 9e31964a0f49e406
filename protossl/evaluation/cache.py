"""On-disk cache of frozen features, so repeated evaluations skip the forward passes.

A cache entry is ``<dir>/features-<key>.pt`` holding ``{"features", "labels",
"meta"}``, written atomically (:func:`protossl.core.files.save_checkpoint_atomic`)
and read with ``weights_only=True``. The key is a SHA-256 over:

* the checkpoint's **content** (SHA-256 of its bytes). Content rather than
  size + mtime + path because a resumed run rewrites ``last.pt`` in place, possibly
  within the file system's mtime resolution and with the same size (same
  tensors, new values), and a copied or moved run keeps valid entries. Hashing
  runs at disk speed (~1 s per GB), far below the cost of a forward pass over
  the data;
* the data: the canonical data spec, the split, the transform's ``repr``, and a
  fingerprint of the loaded items (count, labels, classes, and for image files
  each path with its size and mtime), so adding, removing or editing an image
  invalidates the entry;
* the feature kind (backbone / bottleneck / logits) and :data:`CACHE_VERSION`.

An unreadable or corrupt entry counts as a miss and is overwritten; a cache
directory that cannot be written only costs the speed-up (a warning).

Example:
    >>> cache = FeatureCache(Path("runs/dino/cache"))  # doctest: +SKIP
    >>> x, y = cache.get_or_compute(key, lambda: extract_features(encode, data))  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from protossl.core.errors import UserError
from protossl.core.files import load_checkpoint, save_checkpoint_atomic

__all__ = ["CACHE_VERSION", "FeatureCache", "dataset_fingerprint", "feature_key", "file_digest"]

# Bump when the meaning of cached features changes (e.g. the extraction code).
CACHE_VERSION = 1
_BLOCK = 1 << 20

Features = tuple[torch.Tensor, torch.Tensor]


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def dataset_fingerprint(dataset: Any) -> str:
    """A digest of what a data set holds: its labels, classes and (for files) each file's
    path, size and mtime. In-memory data sets (``digits``) are deterministic per spec."""
    digest = hashlib.sha256()
    digest.update(json.dumps([len(dataset), list(dataset.targets), list(dataset.classes)]).encode())
    for path in getattr(dataset, "files", None) or []:
        try:
            stat = os.stat(path)
            digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{path}\0missing\n".encode())
    return digest.hexdigest()


def feature_key(
    checkpoint_digest: str,
    spec: str,
    split: str,
    transform: str,
    dataset: str,
    kind: str,
) -> str:
    """The cache key (24 hex digits) of one (checkpoint, data, split, transform, kind)."""
    payload = json.dumps(
        {
            "version": CACHE_VERSION,
            "checkpoint": checkpoint_digest,
            "spec": spec,
            "split": split,
            "transform": transform,
            "dataset": dataset,
            "kind": kind,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


class FeatureCache:
    """Feature files in one directory, with hit / miss counters.

    Args:
        directory: Where ``features-<key>.pt`` files live; None disables caching.
    """

    def __init__(self, directory: str | Path | None) -> None:
        self.directory = Path(directory) if directory is not None else None
        self.hits = 0
        self.misses = 0

    def path(self, key: str) -> Path | None:
        return None if self.directory is None else self.directory / f"features-{key}.pt"

    def load(self, key: str) -> Features | None:
        """The cached (features, labels), or None if absent or unreadable."""
        path = self.path(key)
        if path is None or not path.is_file():
            return None
        try:
            state = load_checkpoint(path)
            features, labels = state["features"], state["labels"]
        except (UserError, KeyError):
            return None
        if not isinstance(features, torch.Tensor) or not isinstance(labels, torch.Tensor):
            return None
        return features, labels

    def save(self, key: str, features: torch.Tensor, labels: torch.Tensor, meta: dict) -> None:
        path = self.path(key)
        if path is None:
            return
        try:
            save_checkpoint_atomic({"features": features, "labels": labels, "meta": meta}, path)
        except OSError as exc:
            warnings.warn(
                f"could not write the feature cache {path} ({exc.strerror or exc}); "
                "features will be recomputed next time",
                stacklevel=2,
            )

    def get_or_compute(
        self, key: str, compute: Callable[[], Features], meta: dict | None = None
    ) -> Features:
        """Load the entry for ``key`` or compute, store and return it."""
        cached = self.load(key)
        if cached is not None:
            self.hits += 1
            return cached
        self.misses += 1
        features, labels = compute()
        self.save(key, features, labels, meta or {})
        return features, labels
