"""The ``folder:PATH`` source: walking an ImageFolder tree (``PATH/<class>/<image>.jpg``, as
torchvision's ``ImageFolder``) into an :class:`~protossl.data.datasets.ImageDataset`.

A tree is either already split into ``PATH/train`` and ``PATH/test`` (or ``PATH/val``), or
split here 80/20 with the fixed stratified split of :mod:`protossl.data.splits`. Classes
are the sorted sub-folder names (of both splits, so a class missing from one split keeps
its index); images are found recursively below each class folder, sorted.

The walk follows directory links (data sets are often linked into place) but enters every
real folder once and lists every real file once, so a link loop or a linked copy never
multiplies images; folders it cannot read are skipped. Both are reported in one
:class:`~protossl.data.image_files.CorruptImageWarning` each, never an exception.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> root = Path(tempfile.mkdtemp())
    >>> for name in ("cat", "dog"):
    ...     (root / name).mkdir()
    ...     for i in range(5):
    ...         Image.new("RGB", (4, 4)).save(root / name / f"{i}.png")
    >>> train = load_folder_split(str(root), "train", None)
    >>> len(train), train.classes, train.class_counts()
    (8, ['cat', 'dog'], [4, 4])
    >>> import shutil; shutil.rmtree(root)
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from protossl.core.errors import UserError
from protossl.data.datasets import ImageDataset, Transform
from protossl.data.image_files import IMAGE_EXTENSIONS, MAX_NAMED_FILES, CorruptImageWarning
from protossl.data.specs import Split
from protossl.data.splits import stratified_split

_SPLIT_DIRS = ("train", "test", "val")


def load_folder_split(path: str, split: Split, transform: Transform | None) -> ImageDataset:
    """One split of the ImageFolder tree at ``path``, unreadable files dropped with a warning.

    Raises:
        UserError: for a missing folder, a tree with only one of train/ and test/, or a
            split without images.
    """
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
    # Only split folders but not a usable pair: treating them as classes would silently
    # train on a "train" and a "test" class.
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
    # stacklevel 4: past this helper, the walk and the folder loader, to the line of
    # load_dataset that asked for the folder.
    if listing.unreadable_folders:
        named = ", ".join(listing.unreadable_folders[:MAX_NAMED_FILES])
        more = len(listing.unreadable_folders) - MAX_NAMED_FILES
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
