"""The labelled image data set that every source returns: :class:`ImageDataset`.

Items are ``(transform(img), label)`` with ``img`` a PIL RGB image, as a torchvision
``ImageFolder`` gives them, so the PIL augmentations (:mod:`protossl.data.multicrop`) apply
unchanged. Images come from files (ImageFolder trees) or from one in-memory uint8 array (the
digits), which stays one block of memory that is cheap to pickle into loader workers.

Example:
    >>> import numpy as np
    >>> ds = ImageDataset(np.zeros((4, 8, 8), np.uint8), [0, 1, 0, 1], ["a", "b"])
    >>> ds.subset([1, 3]).class_counts(), ds[0][0].mode
    ([0, 2], 'RGB')
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from protossl.core.errors import UserError
from protossl.data.image_files import MAX_NAMED_FILES, CorruptImageWarning, find_unreadable_images
from protossl.data.image_modes import to_rgb

Transform = Callable[[Image.Image], Any]


class ImageDataset(torch.utils.data.Dataset):
    """Labelled images from files or an in-memory uint8 array; items are
    ``(transform(img), label)`` with ``img`` a PIL RGB image (the image itself without a
    transform).

    Files that cannot be decoded at ``__getitem__`` time (they passed the cheap up-front check
    of :meth:`from_files`, or changed since) are warned about once, by name, and replaced by the
    next readable item (index + 1, + 2, ...), with that item's own label, so an epoch never
    crashes and (image, label) pairs stay consistent. ``num_skipped`` / ``skipped_files``
    count only the files dropped up front, because a worker process cannot report back.

    Example:
        >>> import numpy as np
        >>> ds = ImageDataset(np.zeros((2, 8, 8), np.uint8), [0, 1], ["a", "b"])
        >>> ds[1][0].size, ds[1][1]
        ((8, 8), 1)
    """

    def __init__(
        self,
        samples: Sequence[str] | np.ndarray,
        targets: Sequence[int],
        classes: Sequence[str],
        transform: Transform | None = None,
        skipped_files: Sequence[str] = (),
    ) -> None:
        if len(samples) != len(targets):
            raise ValueError(f"{len(samples)} samples but {len(targets)} targets")
        if any(not 0 <= int(t) < len(classes) for t in targets):
            raise ValueError(f"targets must lie in [0, {len(classes)})")
        # Arrays stay arrays (one block of memory, cheap to pickle into workers).
        self._arrays = samples if isinstance(samples, np.ndarray) else None
        self._files: list[str] = [] if self._arrays is not None else [str(s) for s in samples]
        self.targets: list[int] = [int(t) for t in targets]
        self.classes: list[str] = list(classes)
        self.transform = transform
        self.skipped_files: list[str] = list(skipped_files)
        self.num_listed = len(self.targets) + len(self.skipped_files)  # before any subset
        # Set by the folder loader: unreadable folders, and paths that reached a listed file.
        self.skipped_folders: list[str] = []
        self.duplicate_paths: list[str] = []
        self._undecodable: set[int] = set()

    @classmethod
    def from_files(
        cls,
        paths: Sequence[str],
        targets: Sequence[int],
        classes: Sequence[str],
        transform: Transform | None = None,
        check: bool = True,
    ) -> ImageDataset:
        """Build a data set from image files, dropping (with one warning) those that PIL
        cannot open when ``check`` is true; see :func:`find_unreadable_images`."""
        bad = set(find_unreadable_images(paths)) if check else set()
        skipped = [p for p in paths if p in bad]
        if skipped:
            _warn_skipped(skipped)
        kept = [i for i, p in enumerate(paths) if p not in bad]
        return cls(
            [paths[i] for i in kept], [targets[i] for i in kept], classes, transform, skipped
        )

    @property
    def num_skipped(self) -> int:
        """How many files were dropped up front as unreadable."""
        return len(self.skipped_files)

    @property
    def files(self) -> list[str] | None:
        """The image paths, or None for an in-memory data set."""
        return None if self._arrays is not None else list(self._files)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} items")
        for offset in range(n):
            i = (index + offset) % n
            image = self._load(i)
            if image is not None:
                return (self.transform(image) if self.transform else image), self.targets[i]
        raise UserError("none of the images in the data set can be decoded; check the files")

    def _load(self, i: int) -> Image.Image | None:
        if self._arrays is not None:
            return Image.fromarray(self._arrays[i]).convert("RGB")
        # Remembered per process, so a bad file costs one failed decode and one warning.
        if i in self._undecodable:
            return None
        path = self._files[i]
        try:
            with Image.open(path) as image:
                return to_rgb(image)
        except Exception:  # any decode failure: skip this file, never crash the epoch
            self._undecodable.add(i)
            warnings.warn(
                f"cannot decode image {path}; using the next item instead (fix or delete it)",
                CorruptImageWarning,
                stacklevel=3,
            )
            return None

    def with_transform(self, transform: Transform | None) -> ImageDataset:
        """A shallow copy over the same images with another transform (e.g. an eval view)."""
        view = copy.copy(self)
        view.transform = transform
        view._undecodable = set(self._undecodable)
        return view

    def subset(self, indices: Sequence[int]) -> ImageDataset:
        """A data set of the given items, keeping classes, transform and skipped files."""
        samples: Sequence[str] | np.ndarray
        if self._arrays is not None:
            samples = self._arrays[np.asarray(indices, dtype=np.int64)]
        else:
            samples = [self._files[i] for i in indices]
        targets = [self.targets[i] for i in indices]
        part = ImageDataset(samples, targets, self.classes, self.transform, self.skipped_files)
        # The listing counts describe the whole folder walk, not the subset.
        part.num_listed = self.num_listed
        part.skipped_folders = list(self.skipped_folders)
        part.duplicate_paths = list(self.duplicate_paths)
        return part

    def listing_counts(self) -> dict[str, int]:
        """How many images were listed, skipped as unreadable and used, for summaries.

        Example:
            >>> import numpy as np
            >>> ImageDataset(np.zeros((3, 2, 2), np.uint8), [0, 0, 1], ["a", "b"]).listing_counts()
            {'listed': 3, 'unreadable': 0, 'used': 3, 'unreadable_folders': 0, 'duplicates': 0}
        """
        return {
            "listed": self.num_listed,
            "unreadable": self.num_skipped,
            "used": len(self),
            "unreadable_folders": len(self.skipped_folders),
            "duplicates": len(self.duplicate_paths),
        }

    def class_counts(self) -> list[int]:
        """Number of items per class, indexed like ``classes``."""
        return np.bincount(self.targets, minlength=len(self.classes)).tolist()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(items={len(self)}, classes={len(self.classes)}, "
            f"skipped={self.num_skipped})"
        )


def _warn_skipped(skipped: Sequence[str]) -> None:
    named = ", ".join(skipped[:MAX_NAMED_FILES])
    more = len(skipped) - MAX_NAMED_FILES
    suffix = f" and {more} more (see dataset.skipped_files)" if more > 0 else ""
    # stacklevel 3: past this helper and from_files, to the loader that asked for the files.
    warnings.warn(
        f"skipped {len(skipped)} unreadable image file(s): {named}{suffix}; "
        "fix or delete them to silence this warning",
        CorruptImageWarning,
        stacklevel=3,
    )
