"""Tests for protossl.data: data specs, splits, corrupt files, long tail and multi-crop."""

from __future__ import annotations

import io
import math
import random
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from protossl.core.errors import UserError
from protossl.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CorruptImageWarning,
    DataSpec,
    EvalTransform,
    ImageDataset,
    MultiCropTransform,
    blur_parameters,
    default_local_size,
    find_unreadable_images,
    load_dataset,
    long_tail_counts,
    long_tail_indices,
    parse_data_spec,
    stratified_split,
)

CIFAR10 = Path(__file__).resolve().parents[3] / "shared" / "data" / "cifar10"
DIGITS_CLASS_SIZES = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------


def _image_bytes(seed: int, size: int = 12, fmt: str = "PNG") -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


def _make_class_folders(root: Path, sizes: dict[str, int], seed: int = 0) -> list[Path]:
    """Write ``sizes[c]`` small images (alternating PNG/JPEG) into ``root/<c>/``."""
    written = []
    for c, (name, count) in enumerate(sizes.items()):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            fmt, ext = ("PNG", "png") if i % 2 else ("JPEG", "JPG")  # upper case on purpose
            path = folder / f"img{i:03d}.{ext}"
            path.write_bytes(_image_bytes(seed * 10_000 + c * 1000 + i, fmt=fmt))
            written.append(path)
    return written


def _pixels(dataset: ImageDataset) -> list[bytes]:
    return [np.asarray(dataset[i][0]).tobytes() for i in range(len(dataset))]


def _expected_test_count(n: int) -> int:
    return min(math.floor(0.2 * n + 0.5), n - 1)


# ------------------------------------------------------------------------------------------
# data specs
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("digits", DataSpec("digits", None, None)),
        (" DIGITS ", DataSpec("digits", None, None)),
        ("digits@lt=10", DataSpec("digits", None, 10.0)),
        ("folder:/data/x", DataSpec("folder", "/data/x", None)),
        ("folder:/data/x@lt=100", DataSpec("folder", "/data/x", 100.0)),
        ("folder:/data/a@b/c", DataSpec("folder", "/data/a@b/c", None)),
    ],
)
def test_parse_data_spec(spec: str, expected: DataSpec) -> None:
    parsed = parse_data_spec(spec)
    assert parsed == expected
    assert parse_data_spec(str(parsed)) == parsed  # str() round-trips


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("", "empty data spec"),
        ("imagenet", "unknown data spec"),
        ("cifar10:/data/cifar", "not yet supported"),
        ("synthetic", "not yet supported"),
        ("folder:", "has no path"),
        ("digits:/x", "takes no path"),
        ("folder:/x@lt=0.5", "use a number >= 1"),
        ("folder:/x@lt=abc", "use a number >= 1"),
        ("folder:/x@lt=inf", "use a number >= 1"),
        ("digits@foo=3", "unknown option '@foo='"),
    ],
)
def test_bad_spec_is_a_user_error(spec: str, needle: str) -> None:
    with pytest.raises(UserError, match=needle) as info:
        parse_data_spec(spec)
    message = str(info.value)
    assert "\n" not in message
    if needle in ("empty data spec", "unknown data spec", "not yet supported"):
        assert "digits" in message and "folder:PATH" in message  # says what to use instead


def test_bad_spec_through_load_dataset() -> None:
    with pytest.raises(UserError, match="unknown data spec"):
        load_dataset("mnist", "train")
    with pytest.raises(ValueError, match="split"):
        load_dataset("digits", "val")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------
# digits
# ------------------------------------------------------------------------------------------


def test_digits_split_sizes_are_exact_and_stratified() -> None:
    train = load_dataset("digits", "train")
    test = load_dataset("digits", "test")
    expected_test = [_expected_test_count(n) for n in DIGITS_CLASS_SIZES]
    assert test.class_counts() == expected_test
    assert train.class_counts() == [
        n - t for n, t in zip(DIGITS_CLASS_SIZES, expected_test, strict=True)
    ]
    assert (len(train), len(test)) == (1438, 359)
    assert train.classes == test.classes == [str(d) for d in range(10)]


def test_digits_images_are_rgb_uint8_8x8() -> None:
    image, label = load_dataset("digits", "test")[0]
    array = np.asarray(image)
    assert image.mode == "RGB" and image.size == (8, 8) and isinstance(label, int)
    assert array.dtype == np.uint8
    assert np.array_equal(array[..., 0], array[..., 1])  # gray replicated to 3 channels
    all_pixels = np.stack([np.asarray(img) for img, _ in load_dataset("digits", "test")])
    assert all_pixels.max() == 255 and all_pixels.min() == 0  # 0..16 stretched to 0..255


def test_digits_split_is_a_partition_and_fixed() -> None:
    from sklearn.datasets import load_digits

    everything = Counter(
        np.stack([np.clip(np.rint(im * 255 / 16), 0, 255).astype(np.uint8)] * 3, -1).tobytes()
        for im in load_digits().images
    )
    train, test = _pixels(load_dataset("digits", "train")), _pixels(load_dataset("digits", "test"))
    assert Counter(train) + Counter(test) == everything  # every image in exactly one split
    # The user seed and repeated calls never move an image between splits.
    assert _pixels(load_dataset("digits", "test", seed=123)) == test
    assert _pixels(load_dataset("digits", "train", seed=7)) == train


def test_stratified_split_is_disjoint_and_deterministic() -> None:
    targets = [0] * 10 + [1] * 5 + [2] * 1 + [3] * 3
    train, test = stratified_split(targets)
    assert set(train).isdisjoint(test) and sorted(train + test) == list(range(len(targets)))
    assert Counter(targets[i] for i in test) == {0: 2, 1: 1, 3: 1}  # class 2 stays in train
    assert stratified_split(targets) == (train, test)
    assert stratified_split(targets, seed=1) != (train, test)


# ------------------------------------------------------------------------------------------
# folders
# ------------------------------------------------------------------------------------------


def test_folder_without_subfolders_is_split_80_20(tmp_path: Path) -> None:
    sizes = {"cat": 10, "dog": 5, "emu": 7}
    files = _make_class_folders(tmp_path, sizes)
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "dog" / "._img000.JPG").write_bytes(b"macOS resource fork")
    train = load_dataset(f"folder:{tmp_path}", "train")
    test = load_dataset(f"folder:{tmp_path}", "test")
    assert train.classes == ["cat", "dog", "emu"]
    assert test.class_counts() == [_expected_test_count(n) for n in sizes.values()]
    assert set(train.files).isdisjoint(test.files)
    assert sorted(train.files + test.files) == sorted(str(f) for f in files)
    assert train.num_skipped == 0
    for image, label in test:
        assert image.mode == "RGB" and 0 <= label < 3
    # Labels follow the folders.
    assert all(
        Path(f).parent.name == train.classes[t]
        for f, t in zip(train.files, train.targets, strict=True)
    )
    # Deterministic across calls and user seeds.
    assert load_dataset(f"folder:{tmp_path}", "test", seed=99).files == test.files


@pytest.mark.parametrize("held_out", ["test", "val"])
def test_folder_with_split_subfolders(tmp_path: Path, held_out: str) -> None:
    _make_class_folders(tmp_path / "train", {"a": 3, "b": 2, "c": 4})
    _make_class_folders(tmp_path / held_out, {"a": 2, "c": 1}, seed=1)  # no "b" in test
    train = load_dataset(f"folder:{tmp_path}", "train")
    test = load_dataset(f"folder:{tmp_path}", "test")
    assert train.classes == test.classes == ["a", "b", "c"]  # same label for the same class
    assert train.class_counts() == [3, 2, 4]
    assert test.class_counts() == [2, 0, 1]
    assert all(f"/{held_out}/" in f for f in test.files)


def test_folder_with_only_train_is_a_user_error(tmp_path: Path) -> None:
    _make_class_folders(tmp_path / "train", {"a": 3})
    with pytest.raises(UserError, match="train/.*test/"):
        load_dataset(f"folder:{tmp_path}", "train")


def test_missing_folder_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_dataset(f"folder:{tmp_path / 'nope'}", "train")
    (tmp_path / "file.jpg").write_bytes(_image_bytes(0))
    with pytest.raises(UserError, match="is not a folder"):
        load_dataset(f"folder:{tmp_path / 'file.jpg'}", "train")


def test_empty_folder_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"no images found under .*<class>/<image>\.jpg"):
        load_dataset(f"folder:{tmp_path}", "train")
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "readme.txt").write_text("no images here")
    (tmp_path / "loose.jpg").write_bytes(_image_bytes(0))  # not inside a class folder
    with pytest.raises(UserError, match="no images found"):
        load_dataset(f"folder:{tmp_path}", "test")


def test_empty_split_is_a_user_error(tmp_path: Path) -> None:
    _make_class_folders(tmp_path, {"a": 1, "b": 1})  # too few images to hold any out
    assert len(load_dataset(f"folder:{tmp_path}", "train")) == 2
    with pytest.raises(UserError, match="test split .* is empty"):
        load_dataset(f"folder:{tmp_path}", "test")


# ------------------------------------------------------------------------------------------
# corrupt files
# ------------------------------------------------------------------------------------------


def _write_corrupt_files(folder: Path) -> tuple[Path, Path]:
    garbage = folder / "garbage.jpg"
    garbage.write_bytes(np.random.default_rng(0).bytes(500))
    truncated = folder / "truncated.jpg"
    jpeg = _image_bytes(5, size=32, fmt="JPEG")
    truncated.write_bytes(jpeg[: len(jpeg) // 2])
    return garbage, truncated


def test_corrupt_files_are_skipped_counted_and_named(tmp_path: Path) -> None:
    _make_class_folders(tmp_path / "train", {"a": 4, "b": 4})
    _make_class_folders(tmp_path / "test", {"a": 1, "b": 1}, seed=1)
    garbage, truncated = _write_corrupt_files(tmp_path / "train" / "b")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train = load_dataset(f"folder:{tmp_path}", "train", transform=MultiCropTransform(8, 2))
    corrupt_warnings = [w for w in caught if issubclass(w.category, CorruptImageWarning)]
    assert len(corrupt_warnings) == 1  # one warning for all of them
    message = str(corrupt_warnings[0].message)
    assert str(garbage) in message and str(truncated) in message and "skipped 2" in message
    assert train.num_skipped == 2
    assert sorted(train.skipped_files) == sorted([str(garbage), str(truncated)])
    assert len(train) == 8 and train.class_counts() == [4, 4]
    # A whole epoch, through a DataLoader, never raises.
    loader = torch.utils.data.DataLoader(train, batch_size=3)
    assert sum(len(labels) for _, labels in loader) == 8


def test_find_unreadable_images(tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    good.write_bytes(_image_bytes(0))
    bad_png = tmp_path / "bad.png"
    bad_png.write_bytes(_image_bytes(1)[:-20])
    trailing = tmp_path / "trailing.jpg"  # valid JPEG followed by junk: PIL still reads it
    trailing.write_bytes(_image_bytes(2, fmt="JPEG") + b"\0junk" * 20)
    garbage, truncated = _write_corrupt_files(tmp_path)
    paths = [str(p) for p in (good, garbage, trailing, bad_png, truncated)]
    assert find_unreadable_images(paths) == [str(garbage), str(bad_png), str(truncated)]
    assert find_unreadable_images(paths, num_threads=1) == find_unreadable_images(paths)


def test_all_files_corrupt_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    _write_corrupt_files(tmp_path / "a")
    (tmp_path / "a" / "more.png").write_bytes(b"not a png")
    with pytest.warns(CorruptImageWarning), pytest.raises(UserError, match="unreadable"):
        load_dataset(f"folder:{tmp_path}", "train")


def test_file_failing_at_getitem_is_replaced_by_the_next(tmp_path: Path) -> None:
    _make_class_folders(tmp_path, {"a": 2, "b": 2})
    paths = sorted(str(p) for p in tmp_path.rglob("*.*"))
    dataset = ImageDataset.from_files(paths, [0, 0, 1, 1], ["a", "b"])
    Path(paths[1]).write_bytes(b"broken after the up-front check")
    Path(paths[3]).write_bytes(b"also broken")
    with pytest.warns(CorruptImageWarning, match=paths[1]):
        image, label = dataset[1]
    assert np.array_equal(np.asarray(image), np.asarray(dataset[2][0])) and label == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per file: no second warning
        assert dataset[1][1] == 1
    with pytest.warns(CorruptImageWarning, match=paths[3]):
        assert dataset[3][1] == 0  # wraps around to index 0
    assert [label for _, label in dataset] == [0, 1, 1, 0]  # iteration never raises
    with pytest.raises(IndexError):
        dataset[4]


def test_with_transform_is_a_view_on_the_same_images() -> None:
    train = load_dataset("digits", "train")
    view = train.with_transform(EvalTransform(16))
    assert view.transform is not None and train.transform is None
    assert view.targets == train.targets and len(view) == len(train)
    assert isinstance(train[0][0], Image.Image)
    assert view[0][0].shape == (3, 16, 16)
    expected = EvalTransform(16)(train[0][0])
    assert torch.equal(view[0][0], expected)


def test_image_dataset_validates_arguments() -> None:
    with pytest.raises(ValueError, match="targets"):
        ImageDataset(np.zeros((2, 4, 4), np.uint8), [0], ["a"])
    with pytest.raises(ValueError, match="lie in"):
        ImageDataset(np.zeros((2, 4, 4), np.uint8), [0, 2], ["a", "b"])


# ------------------------------------------------------------------------------------------
# long tail
# ------------------------------------------------------------------------------------------


def test_long_tail_counts_match_cifar10_lt() -> None:
    # Cao et al. (2019)'s CIFAR-10-LT class sizes.
    assert long_tail_counts([5000] * 10, 100) == [
        5000,
        2997,
        1796,
        1077,
        645,
        387,
        232,
        139,
        83,
        50,
    ]
    assert long_tail_counts([5000] * 10, 10)[-1] == 500
    assert long_tail_counts([10, 3, 10], 1) == [10, 3, 10]  # capped by the class's own size
    assert long_tail_counts([7], 100) == [7]
    assert long_tail_counts([100, 100], 1000) == [100, 1]  # never below one


def test_long_tail_indices_exact_counts_and_seeds() -> None:
    targets = [c for c in range(4) for _ in range(60)]
    kept = long_tail_indices(targets, 4, ratio=8)
    assert Counter(targets[i] for i in kept) == {0: 60, 1: 30, 2: 15, 3: 7}
    assert kept == sorted(set(kept))
    assert long_tail_indices(targets, 4, ratio=8) == kept
    assert long_tail_indices(targets, 4, ratio=8, seed=1) != kept


def test_long_tail_spec_on_digits_subsamples_train_only() -> None:
    train = load_dataset("digits@lt=100", "train")
    n_max = max(n - _expected_test_count(n) for n in DIGITS_CLASS_SIZES)  # 146
    assert n_max == 146
    assert train.class_counts() == [142, 87, 52, 31, 18, 11, 6, 4, 2, 1]
    assert len(load_dataset("digits@lt=100", "test")) == 359  # test stays balanced
    other = load_dataset("digits@lt=100", "train", seed=1)
    assert other.class_counts() == train.class_counts()
    assert _pixels(other) != _pixels(train)


def test_long_tail_spec_on_folder(tmp_path: Path) -> None:
    _make_class_folders(tmp_path / "train", {"a": 9, "b": 9, "c": 9})
    _make_class_folders(tmp_path / "test", {"a": 1, "b": 1, "c": 1}, seed=1)
    train = load_dataset(f"folder:{tmp_path}@lt=9", "train")
    assert train.class_counts() == [9, 3, 1]
    assert load_dataset(f"folder:{tmp_path}@lt=9", "test").class_counts() == [1, 1, 1]


# ------------------------------------------------------------------------------------------
# multi-crop
# ------------------------------------------------------------------------------------------


def _random_image(seed: int = 0, size: tuple[int, int] = (40, 30)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.mark.parametrize(
    ("image_size", "local_size", "expected_local"),
    [(8, None, 4), (16, None, 7), (32, None, 14), (224, None, 96), (32, 12, 12)],
)
def test_multicrop_count_and_shapes(
    image_size: int, local_size: int | None, expected_local: int
) -> None:
    transform = MultiCropTransform(image_size, num_local_crops=3, local_size=local_size)
    crops = transform(_random_image(size=(50, 30)))  # non-square input, square crops
    assert transform.num_crops == len(crops) == 5
    assert [tuple(c.shape) for c in crops] == [(3, image_size, image_size)] * 2 + [
        (3, expected_local, expected_local)
    ] * 3
    assert all(c.dtype == torch.float32 for c in crops)


def test_multicrop_without_local_crops() -> None:
    transform = MultiCropTransform(16, num_local_crops=0)
    assert transform.num_crops == 2 and len(transform(_random_image())) == 2


def test_multicrop_batches_through_a_dataloader() -> None:
    dataset = load_dataset("digits", "test", transform=MultiCropTransform(16, 2))
    crops, labels = next(iter(torch.utils.data.DataLoader(dataset, batch_size=4)))
    assert [tuple(c.shape) for c in crops] == [(4, 3, 16, 16)] * 2 + [(4, 3, 7, 7)] * 2
    assert labels.shape == (4,)


def test_multicrop_is_reproducible_with_torch_seed_only() -> None:
    transform = MultiCropTransform(16, num_local_crops=4)
    image = _random_image()

    def crops_with(torch_seed: int, other_seed: int) -> list[torch.Tensor]:
        torch.manual_seed(torch_seed)
        random.seed(other_seed)  # other generators must not matter
        np.random.seed(other_seed)
        return transform(image)

    first, again = crops_with(0, 1), crops_with(0, 2)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    different = crops_with(1, 1)
    assert all(not torch.equal(a, b) for a, b in zip(first, different, strict=True))
    # Within one call, the crops differ from each other.
    assert not torch.equal(first[2], first[3])


def test_multicrop_values_are_normalized() -> None:
    torch.manual_seed(0)
    transform = MultiCropTransform(16, num_local_crops=2)
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    low, high = (-mean / std).view(3, 1, 1), ((1 - mean) / std).view(3, 1, 1)
    stacked = []
    for seed in range(20):
        for crop in transform(_random_image(seed)):
            assert torch.isfinite(crop).all()
            assert (crop >= low - 1e-5).all() and (crop <= high + 1e-5).all()
            stacked.append(crop.flatten())
    values = torch.cat(stacked)
    assert -1.0 < values.mean().item() < 1.0 and 0.3 < values.std().item() < 2.0
    symmetric = MultiCropTransform(16, 2, mean=(0.5,) * 3, std=(0.5,) * 3)
    assert all(c.abs().max() <= 1 + 1e-5 for c in symmetric(_random_image()))


def test_eval_transform_is_exact_on_a_constant_image() -> None:
    rgb = (128, 64, 32)
    out = EvalTransform(24)(Image.new("RGB", (10, 7), rgb))
    assert out.shape == (3, 24, 24)
    expected = (torch.tensor(rgb) / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(out, expected.view(3, 1, 1).expand_as(out), atol=1e-5)
    torch.manual_seed(0)
    image = _random_image()
    assert torch.equal(EvalTransform(16)(image), EvalTransform(16)(image))  # deterministic


def test_blur_scales_with_image_size() -> None:
    assert blur_parameters(224) == (13, (0.1, 2.0))
    for size in (4, 8, 16, 32, 64, 96, 224, 512):
        kernel, (sigma_low, sigma_high) = blur_parameters(size)
        assert kernel % 2 == 1 and kernel >= 3
        assert math.isclose(sigma_high / sigma_low, 20.0)
        assert math.isclose(sigma_high, 2.0 * size / 224)
    assert default_local_size(224) == 96 and default_local_size(4) == 4


@pytest.mark.parametrize(
    "kwargs",
    [
        {"image_size": 2},
        {"image_size": 16.0},
        {"image_size": True},
        {"image_size": 16, "num_local_crops": -1},
        {"image_size": 16, "local_size": 3},
        {"image_size": 16, "global_scale": (0.5, 0.4)},
        {"image_size": 16, "local_scale": (0.0, 0.4)},
        {"image_size": 16, "local_scale": (0.1, 1.5)},
        {"image_size": 16, "mean": (0.5, 0.5)},
        {"image_size": 16, "std": (0.2, 0.0, 0.2)},
    ],
)
def test_multicrop_rejects_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        MultiCropTransform(**kwargs)


def test_small_local_crops_still_blur() -> None:
    # At 224 px the kernel (13) is wider than a 4 px local crop: it must be capped, not crash.
    transform = MultiCropTransform(224, num_local_crops=2, local_size=4)
    torch.manual_seed(0)
    for _ in range(5):
        assert transform(_random_image(size=(64, 64)))[2].shape == (3, 4, 4)


# ------------------------------------------------------------------------------------------
# the shared CIFAR-10 copy
# ------------------------------------------------------------------------------------------


@pytest.mark.skipif(not (CIFAR10 / "test").is_dir(), reason="shared CIFAR-10 folder is absent")
def test_cifar10_folder_test_split() -> None:
    test = load_dataset(f"folder:{CIFAR10}", "test")
    assert len(test) == 10_000 and test.class_counts() == [1000] * 10
    assert test.classes[0] == "airplane" and test.num_skipped == 0
    image, label = test[0]
    assert image.size == (32, 32) and label == 0
