"""Data sources: parse a data spec and load its train or test split as an image data set.

A *data spec* is the string a user passes as ``--data``:

* ``digits`` -- scikit-learn's bundled 8x8 handwritten digits (1,797 images, no download),
  the offline default;
* ``folder:PATH`` -- an ImageFolder tree (``PATH/<class>/<image>.jpg``), either already split
  into ``PATH/train`` and ``PATH/test`` (or ``PATH/val``), or split here 80/20;
* an optional long-tail suffix ``@lt=R`` (e.g. ``folder:PATH@lt=100``) subsamples the *train*
  split exponentially to an imbalance ratio R, as in CIFAR-10-LT (Cao et al., "Learning
  Imbalanced Datasets with Label-Distribution-Aware Margin Loss", NeurIPS 2019). The test split
  stays balanced, as in that benchmark.

Every split is deterministic: the 80/20 split uses a fixed seed that no argument changes, so the
test set of a spec is the same in every run. Unreadable image files never crash an epoch: they
are found cheaply up front and skipped with one warning, and a file that still fails to decode
later is replaced by the next readable item (see :class:`ImageDataset`).

Example:
    >>> from protossl.data import load_dataset
    >>> train = load_dataset("digits", "train")
    >>> len(train), train.classes[:3]
    (1438, ['0', '1', '2'])
"""

from __future__ import annotations

import copy
import functools
import math
import os
import re
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from protossl.core.errors import UserError
from protossl.data.image_modes import to_rgb

Split = Literal["train", "test"]
Transform = Callable[[Image.Image], Any]

KNOWN_SPECS = ("digits", "folder:PATH")
# Kinds the design names but this module does not load yet; they get a pointed message.
NOT_YET_SUPPORTED = ("synthetic", "cifar10", "cifar100", "stl10")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif")
TEST_FRACTION = 0.2
# Fixed on purpose and independent of any user seed: the test set of a spec must never change.
SPLIT_SEED = 0
_SPLIT_DIRS = ("train", "test", "val")
_MAX_NAMED_FILES = 5
_CHECK_CHUNK = 512


class CorruptImageWarning(UserWarning):
    """Warned when image files cannot be read and are skipped (filter it with ``warnings``)."""


# --------------------------------------------------------------------------------------------
# Data specs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataSpec:
    """A parsed data spec: which source (``kind``), where (``path``), and an optional
    long-tail imbalance ratio (``lt_ratio``, from an ``@lt=R`` suffix).

    Example:
        >>> parse_data_spec("folder:/data/cifar10@lt=100")
        DataSpec(kind='folder', path='/data/cifar10', lt_ratio=100.0)
    """

    kind: str
    path: str | None = None
    lt_ratio: float | None = None

    def __str__(self) -> str:
        text = self.kind if self.path is None else f"{self.kind}:{self.path}"
        if self.lt_ratio is not None:
            text += f"@lt={self.lt_ratio:g}"
        return text


def parse_data_spec(spec: str) -> DataSpec:
    """Parse ``digits``, ``folder:PATH`` and an optional ``@lt=R`` suffix into a :class:`DataSpec`.

    Raises:
        UserError: for an empty or unknown spec, a missing path, or a bad imbalance ratio.

    Example:
        >>> parse_data_spec("digits@lt=10")
        DataSpec(kind='digits', path=None, lt_ratio=10.0)
    """
    if not isinstance(spec, str) or not spec.strip():
        raise UserError(f"empty data spec; use one of: {', '.join(KNOWN_SPECS)}")
    text = spec.strip()
    lt_ratio = None
    # Only a trailing "@lt=" is an option, so paths that contain "@" elsewhere still work.
    match = re.fullmatch(r"(.*)@lt=([^@/]*)", text)
    if match:
        text, lt_ratio = match.group(1), _parse_lt_ratio(match.group(2), spec)
    option = re.search(r"@([A-Za-z_]+)=[^@/]*$", text)
    if option:
        raise UserError(
            f"unknown option '@{option.group(1)}=' in data spec '{spec}'; "
            "the only option is @lt=R (e.g. folder:PATH@lt=100)"
        )
    kind, has_path, path = text.partition(":")
    return _check_kind(kind.strip().lower(), path.strip() if has_path else None, lt_ratio, spec)


def _parse_lt_ratio(value: str, spec: str) -> float:
    try:
        ratio = float(value)
    except ValueError:
        ratio = math.nan
    if not math.isfinite(ratio) or ratio < 1.0:
        raise UserError(
            f"bad long-tail ratio '@lt={value}' in data spec '{spec}'; "
            "use a number >= 1, e.g. @lt=100 (largest class / smallest class)"
        )
    return ratio


def _check_kind(kind: str, path: str | None, lt_ratio: float | None, spec: str) -> DataSpec:
    known = ", ".join(KNOWN_SPECS)
    if kind == "digits":
        if path:
            raise UserError(f"data spec '{spec}': digits takes no path; use --data digits")
        return DataSpec("digits", None, lt_ratio)
    if kind == "folder":
        if not path:
            raise UserError(f"data spec '{spec}' has no path; use folder:PATH")
        return DataSpec("folder", path, lt_ratio)
    if kind in NOT_YET_SUPPORTED:
        raise UserError(
            f"data spec '{spec}': '{kind}' is not yet supported; use one of: {known} "
            "(an ImageFolder copy of the data works with folder:PATH)"
        )
    raise UserError(f"unknown data spec '{spec}'; use one of: {known}")


# --------------------------------------------------------------------------------------------
# Deterministic splitting and long-tail subsampling
# --------------------------------------------------------------------------------------------


def stratified_split(
    targets: Sequence[int], test_fraction: float = TEST_FRACTION, seed: int = SPLIT_SEED
) -> tuple[list[int], list[int]]:
    """Split indices into (train, test) so that every class keeps its proportion.

    Class c with n_c items puts ``floor(test_fraction * n_c + 0.5)`` of them in test (at most
    n_c - 1, so no class vanishes from train); which ones is a permutation drawn from a
    generator seeded by ``(seed, c)``, so one class's draw never depends on another's.
    Both index lists come back sorted.

    Example:
        >>> stratified_split([0] * 10 + [1] * 5)[1]
        [4, 6, 11]
    """
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1) (got {test_fraction})")
    train: list[int] = []
    test: list[int] = []
    for c, members in _indices_by_class(targets).items():
        n_test = min(math.floor(test_fraction * len(members) + 0.5), len(members) - 1)
        order = np.random.default_rng([seed, c]).permutation(len(members))
        test.extend(members[i] for i in order[:n_test])
        train.extend(members[i] for i in order[n_test:])
    return sorted(train), sorted(test)


def long_tail_counts(class_sizes: Sequence[int], ratio: float) -> list[int]:
    """How many items each class keeps under an exponential long tail of imbalance ``ratio``.

    Classes are ordered by index (folder names sorted, digits 0..9): class c of C keeps
    ``int(n_max * (1/ratio) ** (c / (C - 1)))`` items, capped by its own size and at least 1,
    where n_max is the largest class. This is the CIFAR-10-LT formula of Cao et al. (2019), so
    CIFAR-10 train at ratio 100 gives 5000, 2997, 1796, ..., 83, 50.

    Example:
        >>> long_tail_counts([5000] * 10, 100)
        [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    """
    if ratio < 1.0:
        raise ValueError(f"ratio must be >= 1 (got {ratio})")
    num_classes = len(class_sizes)
    n_max = max(class_sizes, default=0)
    counts = []
    for c, size in enumerate(class_sizes):
        fraction = (1.0 / ratio) ** (c / (num_classes - 1)) if num_classes > 1 else 1.0
        keep = min(size, max(1, int(n_max * fraction)))
        counts.append(keep)
    return counts


def long_tail_indices(
    targets: Sequence[int], num_classes: int, ratio: float, seed: int = 0
) -> list[int]:
    """Indices (sorted) of an exponentially long-tailed subset; see :func:`long_tail_counts`.

    Which items of class c survive is drawn from a generator seeded by ``(seed, c)``.

    Example:
        >>> len(long_tail_indices([0] * 100 + [1] * 100, 2, ratio=10))
        110
    """
    by_class = _indices_by_class(targets)
    sizes = [len(by_class.get(c, [])) for c in range(num_classes)]
    kept: list[int] = []
    for c, keep in enumerate(long_tail_counts(sizes, ratio)):
        members = by_class.get(c, [])
        order = np.random.default_rng([seed, c]).permutation(len(members))
        kept.extend(members[i] for i in order[:keep])
    return sorted(kept)


def _indices_by_class(targets: Sequence[int]) -> dict[int, list[int]]:
    by_class: dict[int, list[int]] = {}
    for index, target in enumerate(targets):
        by_class.setdefault(int(target), []).append(index)
    return dict(sorted(by_class.items()))


# --------------------------------------------------------------------------------------------
# Checking image files
# --------------------------------------------------------------------------------------------


def find_unreadable_images(paths: Sequence[str], num_threads: int | None = None) -> list[str]:
    """Return the paths among ``paths`` that PIL cannot open, in input order.

    The check is cheap: it parses headers (``Image.verify``, which also checks PNG CRCs) and
    for JPEGs looks for the end-of-image marker in the last bytes; only a JPEG without that
    marker (truncated, or with trailing data) is fully decoded to decide. Threads overlap the
    file I/O, which dominates on a cold cache.

    Example:
        >>> find_unreadable_images([])
        []
    """
    workers = num_threads or min(8, os.cpu_count() or 1)
    # Chunks, not single files: one future per file costs more than checking the file.
    chunks = [paths[i : i + _CHECK_CHUNK] for i in range(0, len(paths), _CHECK_CHUNK)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        bad_per_chunk = list(pool.map(_unreadable_in, chunks))
    return [path for bad in bad_per_chunk for path in bad]


def _unreadable_in(paths: Sequence[str]) -> list[str]:
    return [path for path in paths if not _is_readable(path)]


def _is_readable(path: str) -> bool:
    # Any exception (OSError, SyntaxError from PNG chunks, DecompressionBombError, ...)
    # means the file cannot be used, which is all the caller needs to know.
    try:
        with open(path, "rb") as handle:
            with Image.open(handle) as image:
                image_format = image.format
                image.verify()
            if image_format != "JPEG" or _ends_with_jpeg_marker(handle):
                return True
        with Image.open(path) as image:
            image.load()
        return True
    except Exception:
        return False


def _ends_with_jpeg_marker(handle: Any) -> bool:
    # A complete JPEG ends with FF D9 (possibly followed by a little padding); reading the
    # tail costs one seek, unlike decoding the whole file.
    size = handle.seek(0, os.SEEK_END)
    handle.seek(max(0, size - 32))
    return b"\xff\xd9" in handle.read()


# --------------------------------------------------------------------------------------------
# The data set
# --------------------------------------------------------------------------------------------


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
    named = ", ".join(skipped[:_MAX_NAMED_FILES])
    more = len(skipped) - _MAX_NAMED_FILES
    suffix = f" and {more} more (see dataset.skipped_files)" if more > 0 else ""
    warnings.warn(
        f"skipped {len(skipped)} unreadable image file(s): {named}{suffix}; "
        "fix or delete them to silence this warning",
        CorruptImageWarning,
        stacklevel=3,
    )


# --------------------------------------------------------------------------------------------
# Loading a spec
# --------------------------------------------------------------------------------------------


def load_dataset(
    spec: str | DataSpec,
    split: Split,
    transform: Transform | None = None,
    seed: int = 0,
) -> ImageDataset:
    """Load one split of a data spec.

    ``seed`` only chooses which images a long-tail suffix keeps; the train/test split itself
    is fixed. The long tail applies to the train split only (the test split stays balanced).

    Raises:
        UserError: for a bad spec, a missing folder, or an empty split.

    Example:
        >>> test = load_dataset("digits", "test")
        >>> len(test), test[0][0].mode
        (359, 'RGB')
    """
    data_spec = spec if isinstance(spec, DataSpec) else parse_data_spec(spec)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test' (got {split!r})")
    if data_spec.kind == "digits":
        dataset = _load_digits(split, transform)
    elif data_spec.kind == "folder" and data_spec.path:
        dataset = _load_folder(data_spec.path, split, transform)
    else:
        dataset = None
    if dataset is None:  # a hand-made DataSpec that parse_data_spec would have refused
        raise UserError(
            f"unsupported data spec '{data_spec}'; use one of: {', '.join(KNOWN_SPECS)}"
        )
    if data_spec.lt_ratio is not None and split == "train":
        keep = long_tail_indices(dataset.targets, len(dataset.classes), data_spec.lt_ratio, seed)
        dataset = dataset.subset(keep)
    if len(dataset) == 0 and dataset.num_skipped:
        raise UserError(
            f"all {dataset.num_skipped} images of the {split} split of '{data_spec}' are "
            f"unreadable (e.g. {dataset.skipped_files[0]}); replace them with valid image files"
        )
    if len(dataset) == 0:
        raise UserError(
            f"the {split} split of data spec '{data_spec}' is empty; add images (at least 5 per "
            "class for an automatic 80/20 split) or provide a train/ and test/ folder"
        )
    return dataset


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    # Values are 0..16; stretch to the full uint8 range so they look like ordinary images.
    images = np.clip(np.rint(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    images.setflags(write=False)  # the cache is shared; nobody may change it
    return images, digits.target.astype(np.int64)


def _load_digits(split: Split, transform: Transform | None) -> ImageDataset:
    images, targets = _digits_arrays()
    train, test = stratified_split(targets.tolist())
    indices = np.asarray(train if split == "train" else test, dtype=np.int64)
    classes = [str(d) for d in range(10)]
    return ImageDataset(images[indices], targets[indices].tolist(), classes, transform)


def _load_folder(path: str, split: Split, transform: Transform | None) -> ImageDataset:
    root = Path(path).expanduser()
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise UserError(
            f"data folder {root} {what}; pass folder:PATH with PATH/<class>/<image>.jpg "
            "or PATH/train/<class>/... and PATH/test/<class>/..."
        )
    split_dir = _split_folder(root, split)
    if split_dir is not None:
        classes = sorted(set(_subfolders(root / "train")) | set(_subfolders(split_dir)))
        listing = _list_images(split_dir, classes)
        _require_images(split_dir, listing.paths)
        dataset = ImageDataset.from_files(listing.paths, listing.targets, classes, transform)
    else:
        classes = _subfolders(root)
        listing = _list_images(root, classes)
        _require_images(root, listing.paths)
        # Split on the full listing, before any file is dropped, so that a file turning bad
        # never moves other files between train and test.
        train, test = stratified_split(listing.targets)
        chosen = train if split == "train" else test
        dataset = ImageDataset.from_files(
            [listing.paths[i] for i in chosen],
            [listing.targets[i] for i in chosen],
            classes,
            transform,
        )
    dataset.skipped_folders = list(listing.unreadable_folders)
    dataset.duplicate_paths = list(listing.duplicates)
    return dataset


def _split_folder(root: Path, split: Split) -> Path | None:
    """The folder holding ``split`` when ``root`` is pre-split into train/ and test/ (or val/),
    else None (``root`` holds the class folders)."""
    subfolders = set(_subfolders(root))
    held_out = next((d for d in ("test", "val") if d in subfolders), None)
    if "train" in subfolders and held_out:
        return root / ("train" if split == "train" else held_out)
    if subfolders and subfolders <= set(_SPLIT_DIRS):
        raise UserError(
            f"data folder {root} has only {', '.join(sorted(subfolders))}/; add both train/ and "
            "test/ (or val/), or point folder:PATH at one of them to split it 80/20"
        )
    return None


def _subfolders(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


@dataclass
class FolderListing:
    """What walking an ImageFolder tree found: the images and what it left out.

    Directory links are followed (data sets are often linked into place), but every real
    folder is entered once and every real file listed once, under the first class and path
    that reach it in sorted order, so a link loop or a linked copy never multiplies images.
    """

    paths: list[str] = field(default_factory=list)
    targets: list[int] = field(default_factory=list)
    unreadable_folders: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)  # paths that reach a listed file


def _list_images(root: Path, classes: Sequence[str]) -> FolderListing:
    """All image files under ``root/<class>/`` (recursively), sorted, with class indices."""
    listing = FolderListing()
    seen_dirs: set[str] = set()
    seen_files: set[str] = set()

    def unreadable(error: OSError) -> None:
        listing.unreadable_folders.append(str(error.filename or error))

    for label, name in enumerate(classes):
        if not (root / name).is_dir():  # a class of the other split only: nothing to list
            continue
        for dirpath, dirnames, filenames in os.walk(
            root / name, followlinks=True, onerror=unreadable
        ):
            real_dir = os.path.realpath(dirpath)
            if real_dir in seen_dirs:  # a loop, or a second link to a folder already walked
                dirnames[:] = []
                continue
            seen_dirs.add(real_dir)
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            # Hidden files (e.g. macOS "._x.jpg" resource forks) are not images.
            for filename in sorted(filenames):
                if filename.startswith(".") or not filename.lower().endswith(IMAGE_EXTENSIONS):
                    continue
                path = os.path.join(dirpath, filename)
                # realpath costs a system call per path component: only a linked file needs it.
                linked = os.path.islink(path)
                real = os.path.realpath(path) if linked else os.path.join(real_dir, filename)
                if real in seen_files:
                    listing.duplicates.append(path)
                    continue
                seen_files.add(real)
                listing.paths.append(path)
                listing.targets.append(label)
    _warn_listing(root, listing)
    return listing


def _warn_listing(root: Path, listing: FolderListing) -> None:
    if listing.unreadable_folders:
        named = ", ".join(listing.unreadable_folders[:_MAX_NAMED_FILES])
        more = len(listing.unreadable_folders) - _MAX_NAMED_FILES
        suffix = f" and {more} more" if more > 0 else ""
        warnings.warn(
            f"skipped {len(listing.unreadable_folders)} unreadable folder(s) under {root}: "
            f"{named}{suffix}; their images are not used (check the permissions)",
            CorruptImageWarning,
            stacklevel=4,
        )
    if listing.duplicates:
        warnings.warn(
            f"{len(listing.duplicates)} image path(s) under {root} reach a file already listed "
            f"through a link (e.g. {listing.duplicates[0]}); each file is used once",
            CorruptImageWarning,
            stacklevel=4,
        )


def _require_images(folder: Path, paths: Sequence[str]) -> None:
    if not paths:
        raise UserError(
            f"no images found under {folder}; expected {folder}/<class>/<image>.jpg "
            f"(extensions: {', '.join(e[1:] for e in IMAGE_EXTENSIONS)})"
        )
