"""Turn any picture PIL can open into the RGB image a person would see.

``Image.convert("RGB")`` (what torchvision's and DINO's loaders call) is right for most
8-bit modes, but silently wrong for others: 16- and 32-bit greyscale are clipped to 255
instead of scaled (a 16-bit scan becomes almost all white), float images in [0, 1] floor to
black, an alpha channel is dropped (fully transparent pixels show whatever colour lies
under them), CIELAB bands are copied as if they were R, G and B, ``La`` cannot be
converted at all, and the EXIF orientation of phone photos is ignored. :func:`to_rgb` fixes
each of those; everything else goes through ``convert("RGB")`` unchanged.

Decisions (documented here because no file format settles them):

* transparency is composited over **white**, as an image viewer or a web page shows it;
* ``I;16*`` holds 16-bit samples: value / 257, rounded (65,535 -> 255);
* ``I`` (32-bit integers) is taken as 16-bit data, PIL's mode for many 16-bit files:
  clipped to [0, 65,535], then as ``I;16``;
* ``F`` (32-bit floats) is taken as intensities in [0, 1] when no sample exceeds 1, else
  in [0, 255]; NaN becomes 0;
* ``LAB`` goes through littleCMS (``ImageCms``) from CIELAB (D50) to sRGB; ``CMYK`` with an
  embedded ICC profile through that profile, without one through PIL's conversion;
* the EXIF orientation tag is applied (``ImageOps.exif_transpose``) before anything else.

Example:
    >>> import numpy as np
    >>> scan = Image.fromarray(np.array([[0, 32896, 65535]], np.uint16))  # 16-bit
    >>> np.asarray(to_rgb(scan))[0, :, 0].tolist()
    [0, 128, 255]
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageCms, ImageOps

_WHITE = (255, 255, 255)
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_SIXTEEN_BIT = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


def to_rgb(image: Image.Image) -> Image.Image:
    """The picture as 8-bit RGB, oriented and composited as a viewer shows it.

    Args:
        image: any PIL image (opened from a file or built in memory).

    Returns:
        A new ``RGB`` image of the (EXIF-oriented) size.
    """
    oriented = ImageOps.exif_transpose(image) if _has_orientation(image) else image
    mode = oriented.mode
    if mode == "RGB":
        return oriented.copy() if oriented is image else oriented
    if mode in _SIXTEEN_BIT or mode == "I":
        return _grey_to_rgb(np.asarray(oriented, dtype=np.float64), scale=1.0 / 257.0, top=65535)
    if mode == "F":
        values = np.nan_to_num(np.asarray(oriented, dtype=np.float64), nan=0.0)
        scale = 255.0 if values.size and values.max() <= 1.0 else 1.0
        return _grey_to_rgb(values * scale, scale=1.0, top=255)
    if mode == "LAB":
        return _through_profile(oriented, ImageCms.createProfile("LAB"), "LAB")
    if mode == "CMYK" and oriented.info.get("icc_profile"):
        profile = ImageCms.ImageCmsProfile(io.BytesIO(oriented.info["icc_profile"]))
        try:
            return _through_profile(oriented, profile, "CMYK")
        except ImageCms.PyCMSError:  # a broken embedded profile: the plain conversion
            return oriented.convert("RGB")
    if mode in _ALPHA_MODES or (mode == "P" and oriented.has_transparency_data):
        return _over_white(oriented)
    return oriented.convert("RGB")


def _has_orientation(image: Image.Image) -> bool:
    # Parsing EXIF costs more than decoding a tiny PNG: look only where it can be.
    if "exif" not in image.info and image.format not in ("TIFF", "MPO"):
        return False
    try:
        return image.getexif().get(0x0112, 1) not in (1, None)
    except Exception:  # unreadable EXIF: nothing to orient by
        return False


def _grey_to_rgb(values: np.ndarray, scale: float, top: float) -> Image.Image:
    # Clip in the source's own range first, so that out-of-range samples saturate.
    grey = np.rint(np.clip(values, 0, top) * scale).clip(0, 255).astype(np.uint8)
    return Image.fromarray(np.repeat(grey[..., None], 3, axis=-1), "RGB")


def _over_white(image: Image.Image) -> Image.Image:
    if image.mode in ("RGBa", "La"):
        # Premultiplied colour: over white, out = colour + 255 * (1 - alpha), exactly.
        bands = np.asarray(image, dtype=np.int32)
        colour, alpha = bands[..., :-1], bands[..., -1:]
        out = np.clip(colour + (255 - alpha), 0, 255).astype(np.uint8)
        if out.shape[-1] == 1:
            out = np.repeat(out, 3, axis=-1)
        return Image.fromarray(out, "RGB")
    rgba = image.convert("RGBA")  # P (with transparency), LA, PA expand to RGBA
    background = Image.new("RGBA", rgba.size, (*_WHITE, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _through_profile(
    image: Image.Image, profile: ImageCms.ImageCmsProfile | ImageCms.core.CmsProfile, mode: str
) -> Image.Image:
    transform = ImageCms.buildTransformFromOpenProfiles(
        profile, ImageCms.createProfile("sRGB"), mode, "RGB"
    )
    return ImageCms.applyTransform(image, transform)  # type: ignore[return-value]
