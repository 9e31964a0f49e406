"""ImageFolder walking: links followed, no loop, no file twice, unreadable folders named."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from protossl.data import load_dataset
from protossl.data.sources import CorruptImageWarning


def _images(folder: Path, count: int, value: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(np.full((4, 4, 3), value + i, np.uint8)).save(folder / f"{i:02d}.png")


def _load(root: Path, split: str = "train") -> tuple[object, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = load_dataset(f"folder:{root}", split)  # type: ignore[arg-type]
    messages = [str(w.message) for w in caught if issubclass(w.category, CorruptImageWarning)]
    return dataset, messages


def _tree(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    _images(root / "train" / "cat", 3)
    _images(root / "train" / "dog", 2, value=100)
    _images(root / "test" / "cat", 1)
    _images(root / "test" / "dog", 1, value=100)
    return root


def test_a_link_loop_lists_every_image_once(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    # cat/loop -> cat: following it naively lists cat's images again at every depth.
    os.symlink(root / "train" / "cat", root / "train" / "cat" / "loop")
    train, messages = _load(root)
    assert len(train) == 5 and train.class_counts() == [3, 2]  # type: ignore[attr-defined]
    assert len(set(train.files)) == 5  # type: ignore[attr-defined]
    assert not any("/loop/" in f for f in train.files)  # type: ignore[attr-defined]
    assert messages == []  # a folder entered once is not a duplicate image


def test_a_linked_copy_of_a_file_counts_once_under_the_first_class(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    # The same file reached from dog/ through a link: used once, where sorted order meets it.
    os.symlink(root / "train" / "cat" / "00.png", root / "train" / "dog" / "also_cat.png")
    train, messages = _load(root)
    assert train.class_counts() == [3, 2]  # type: ignore[attr-defined]
    assert train.listing_counts()["duplicates"] == 1  # type: ignore[attr-defined]
    assert len(messages) == 1 and "also_cat.png" in messages[0] and "once" in messages[0]


def test_a_linked_class_folder_is_followed(tmp_path: Path) -> None:
    # Data sets are often linked into place: a class folder that is a link still counts.
    root = _tree(tmp_path)
    elsewhere = tmp_path / "bird_images"
    _images(elsewhere, 2, value=200)
    os.symlink(elsewhere, root / "train" / "bird")
    train, messages = _load(root)
    assert train.classes == ["bird", "cat", "dog"]  # type: ignore[attr-defined]
    assert train.class_counts() == [2, 3, 2] and messages == []  # type: ignore[attr-defined]


def test_an_unreadable_folder_is_named_and_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _tree(tmp_path)
    locked = root / "train" / "dog"
    real_scandir = os.scandir

    def scandir(path: object = ".") -> object:
        # Permissions do not stop root (the CI user), so the denial is simulated.
        if Path(str(path)) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "scandir", scandir)
    train, messages = _load(root)
    assert train.class_counts() == [3, 0]  # type: ignore[attr-defined]
    assert len(messages) == 1 and str(locked) in messages[0] and "unreadable folder" in messages[0]
    counts = train.listing_counts()  # type: ignore[attr-defined]
    assert counts == {
        "listed": 3,
        "unreadable": 0,
        "used": 3,
        "unreadable_folders": 1,
        "duplicates": 0,
    }


def test_listing_counts_survive_the_long_tail_subset(tmp_path: Path) -> None:
    root = tmp_path / "data"
    _images(root / "train" / "a", 10)
    _images(root / "train" / "b", 10, value=50)
    _images(root / "test" / "a", 1)
    _images(root / "test" / "b", 1, value=50)
    (root / "train" / "a" / "broken.png").write_bytes(b"not an image")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CorruptImageWarning)
        train = load_dataset(f"folder:{root}@lt=10", "train")
    counts = train.listing_counts()
    # 21 files listed, 1 unreadable, 20 readable of which the long tail keeps 10 + 1.
    assert counts["listed"] == 21 and counts["unreadable"] == 1
    assert counts["used"] == len(train) == 11
