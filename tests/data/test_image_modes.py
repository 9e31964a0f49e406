"""to_rgb: every image mode PIL reads becomes the picture a viewer shows (tested mode by mode).

Each case builds an image in one mode with known samples, writes it to a file in a format
that keeps the mode where one exists (so the loader's own decode path runs), and compares
``to_rgb`` with a reference conversion written here from the mode's definition.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from protossl.data import load_dataset
from protossl.data.image_modes import to_rgb

RNG = np.random.default_rng(0)
GREY8 = RNG.integers(0, 256, (5, 7), dtype=np.uint8)
RGB8 = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)
ALPHA = RNG.integers(0, 256, (5, 7), dtype=np.uint8)
ALPHA[0, 0], ALPHA[0, 1] = 0, 255  # fully transparent and fully opaque pixels


def _over_white(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Straight-alpha compositing over white: c * a + 255 * (1 - a), a in [0, 1]."""
    a = alpha.astype(np.float64)[..., None] / 255.0
    return np.rint(colour.astype(np.float64) * a + 255.0 * (1.0 - a))


def _grey3(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None], 3, axis=-1).astype(np.float64)


def _roundtrip(image: Image.Image, fmt: str) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    buffer.seek(0)
    reopened = Image.open(buffer)
    reopened.load()
    return reopened


def _assert_close(image: Image.Image, expected: np.ndarray, tol: float = 1.0) -> None:
    assert image.mode == "RGB"
    got = np.asarray(image, dtype=np.float64)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= tol


def test_eight_bit_modes_match_their_definitions() -> None:
    _assert_close(to_rgb(_roundtrip(Image.fromarray(RGB8, "RGB"), "PNG")), RGB8, tol=0)
    _assert_close(to_rgb(_roundtrip(Image.fromarray(GREY8, "L"), "PNG")), _grey3(GREY8), tol=0)
    bits = GREY8 > 127
    one = _roundtrip(Image.fromarray(bits).convert("1"), "PNG")
    assert one.mode == "1"
    _assert_close(to_rgb(one), _grey3(bits * 255.0), tol=0)
    # A palette image: each index is its palette colour.
    palette = RNG.integers(0, 256, (256, 3), dtype=np.uint8)
    indices = RNG.integers(0, 256, (5, 7), dtype=np.uint8)
    p = Image.fromarray(indices, "P")
    p.putpalette(palette.ravel().tolist())
    p = _roundtrip(p, "PNG")
    assert p.mode == "P"
    _assert_close(to_rgb(p), palette[indices].astype(np.float64), tol=0)


def test_sixteen_and_thirty_two_bit_grey_are_scaled_not_clipped() -> None:
    samples = RNG.integers(0, 65536, (5, 7)).astype(np.uint16)
    samples[0, :3] = (0, 32896, 65535)
    i16 = _roundtrip(Image.fromarray(samples), "PNG")
    assert i16.mode.startswith("I")  # PIL reads 16-bit PNGs as I;16 (older versions: I)
    expected = _grey3(np.rint(samples / 257.0))
    _assert_close(to_rgb(i16), expected, tol=0)
    assert np.asarray(to_rgb(i16))[0, :3, 0].tolist() == [0, 128, 255]
    # 32-bit integers: 16-bit data, out-of-range samples saturate.
    wide = samples.astype(np.int32)
    wide[1, 0], wide[1, 1] = -5, 100_000
    clipped = np.clip(wide, 0, 65535)
    _assert_close(to_rgb(Image.fromarray(wide, "I")), _grey3(np.rint(clipped / 257.0)), tol=0)
    # The plain conversion is the bug: it clips, so a mid-grey 16-bit sample turns white.
    assert np.asarray(i16.convert("RGB"))[0, 1, 0] == 255


def test_float_images_are_read_as_unit_or_byte_intensities() -> None:
    unit = RNG.random((5, 7)).astype(np.float32)
    unit[0, 0] = np.nan
    expected = _grey3(np.rint(np.nan_to_num(unit, nan=0.0).astype(np.float64) * 255.0))
    _assert_close(to_rgb(Image.fromarray(unit, "F")), expected, tol=0)
    bytes_like = (RNG.random((5, 7)) * 300 - 20).astype(np.float32)
    expected = _grey3(np.rint(np.clip(bytes_like.astype(np.float64), 0, 255)))
    _assert_close(to_rgb(Image.fromarray(bytes_like, "F")), expected, tol=0)


def test_transparency_is_composited_over_white() -> None:
    rgba = np.dstack([RGB8, ALPHA])
    png = _roundtrip(Image.fromarray(rgba, "RGBA"), "PNG")
    _assert_close(to_rgb(png), _over_white(RGB8, ALPHA))
    assert np.asarray(to_rgb(png))[0, 0].tolist() == [255, 255, 255]  # fully transparent
    assert np.asarray(to_rgb(png))[0, 1].tolist() == RGB8[0, 1].tolist()  # fully opaque
    la = _roundtrip(Image.fromarray(np.dstack([GREY8, ALPHA]), "LA"), "PNG")
    assert la.mode == "LA"
    _assert_close(to_rgb(la), _over_white(_grey3(GREY8), ALPHA))
    # Palette with a transparent index (GIF / PNG tRNS): that colour becomes white.
    p = Image.fromarray((GREY8 % 4).astype(np.uint8), "P")
    p.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 9, 9] + [0] * (256 * 3 - 12))
    p.info["transparency"] = 0
    p = _roundtrip(p, "PNG")
    colours = np.array([[255, 255, 255], [0, 255, 0], [0, 0, 255], [9, 9, 9]], np.float64)
    _assert_close(to_rgb(p), colours[GREY8 % 4], tol=0)


def test_premultiplied_alpha_modes() -> None:
    # RGBa / La store colour * alpha / 255: over white, out = stored + 255 - alpha.
    stored = np.minimum(RGB8, ALPHA[..., None])
    rgba_pre = Image.frombytes("RGBa", (7, 5), np.dstack([stored, ALPHA]).tobytes())
    expected = np.clip(stored.astype(np.float64) + 255.0 - ALPHA[..., None], 0, 255)
    _assert_close(to_rgb(rgba_pre), expected, tol=0)
    grey_pre = np.minimum(GREY8, ALPHA)
    la_pre = Image.frombytes("La", (7, 5), np.dstack([grey_pre, ALPHA]).tobytes())
    expected = _grey3(np.clip(grey_pre.astype(np.float64) + 255.0 - ALPHA, 0, 255))
    _assert_close(to_rgb(la_pre), expected, tol=0)


def test_colour_spaces_other_than_rgb() -> None:
    # CIELAB: L 0..255 for 0..100, a and b signed. Neutral greys stay grey, L* = 0 black,
    # L* = 100 white, +a* is red, +b* yellow (sRGB reference values, within 2 levels).
    lab = np.array([[[0, 0, 0], [255, 0, 0], [128, 0, 0], [128, 60, 0], [128, 0, 60]]], np.uint8)
    rgb = np.asarray(to_rgb(Image.fromarray(lab, "LAB")), dtype=np.int64)[0]
    assert rgb[0].max() <= 2 and rgb[1].min() >= 253
    assert abs(int(rgb[2].max()) - int(rgb[2].min())) <= 2 and 117 <= rgb[2, 0] <= 121
    assert rgb[3, 0] > rgb[3, 1] + 100 and rgb[4, 0] > rgb[4, 2] + 60 and rgb[4, 1] > rgb[4, 2]
    # The plain conversion copies the bands: L* = 0 is not black.
    assert np.asarray(Image.fromarray(lab, "LAB").convert("RGB"))[0, 0].tolist() != [0, 0, 0]
    # HSV and YCbCr (JPEG's own): PIL's conversions follow their definitions.
    import colorsys

    hsv = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    expected = np.array(
        [[colorsys.hsv_to_rgb(*(c / 255.0 for c in px)) for px in row] for row in hsv]
    )
    _assert_close(to_rgb(Image.fromarray(hsv, "HSV")), np.rint(expected * 255.0))
    y, cb, cr = (RGB8[..., i].astype(np.float64) for i in range(3))
    expected = np.stack(
        [y + 1.402 * (cr - 128), y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128)]
        + [y + 1.772 * (cb - 128)],
        axis=-1,
    )
    _assert_close(to_rgb(Image.fromarray(RGB8, "YCbCr")), np.clip(expected, 0, 255), tol=1.5)
    # CMYK without a profile: R = (255 - C)(255 - K) / 255, as PIL defines it.
    cmyk = RNG.integers(0, 256, (5, 7, 4), dtype=np.uint8)
    image = _roundtrip(Image.fromarray(cmyk, "CMYK"), "JPEG")
    assert image.mode == "CMYK"
    decoded = np.asarray(image, dtype=np.float64)  # JPEG is lossy: compare to what it holds
    cmy, k = decoded[..., :3], decoded[..., 3:]
    expected = (255.0 - cmy) * (255.0 - k) / 255.0
    _assert_close(to_rgb(image), expected, tol=1.0)


def test_exif_orientation_is_applied() -> None:
    # Orientation 6: the camera was turned 90 degrees; a viewer rotates it back (clockwise).
    image = Image.fromarray(RGB8, "RGB")
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    image.save(buffer, "PNG", exif=exif)
    buffer.seek(0)
    rotated = to_rgb(Image.open(buffer))
    assert rotated.size == (5, 7)
    _assert_close(rotated, np.rot90(RGB8, k=-1).astype(np.float64), tol=0)
    # A phone JPEG upside down (orientation 3): rotated by 180 degrees, decoded as stored.
    exif[0x0112] = 3
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif)
    stored = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"), np.float64)
    _assert_close(to_rgb(Image.open(io.BytesIO(buffer.getvalue()))), stored[::-1, ::-1], tol=0)


def test_loader_uses_to_rgb_for_files(tmp_path: Path) -> None:
    # The data set's own decode path: a 16-bit PNG and a transparent PNG in a folder.
    for split in ("train", "test"):
        folder = tmp_path / split / "a"
        folder.mkdir(parents=True)
        Image.fromarray(np.full((4, 4), 32896, np.uint16)).save(folder / "grey16.png")
        Image.fromarray(np.zeros((4, 4, 4), np.uint8), "RGBA").save(folder / "clear.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing here is corrupt
        test = load_dataset(f"folder:{tmp_path}", "test")
    files = test.files or []
    pixels = {Path(f).name: np.asarray(test[i][0])[0, 0].tolist() for i, f in enumerate(files)}
    assert pixels == {"grey16.png": [128, 128, 128], "clear.png": [255, 255, 255]}


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P", "I;16", "F", "CMYK", "LAB", "1"])
def test_every_mode_gives_rgb_of_the_same_size(mode: str) -> None:
    image = Image.new(mode, (6, 3))
    out = to_rgb(image)
    assert out.mode == "RGB" and out.size == (6, 3) and out is not image
