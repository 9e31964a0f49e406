"""Checking image files cheaply before an epoch: which files PIL cannot open.

Unreadable image files never crash an epoch: :func:`find_unreadable_images` finds them up
front (headers only, plus a look at a JPEG's last bytes) so that the data set can drop them
with one :class:`CorruptImageWarning`; a file that still fails to decode later is replaced by
the next readable item (:class:`protossl.data.datasets.ImageDataset`).

Example:
    >>> import tempfile, os
    >>> from PIL import Image
    >>> folder = tempfile.mkdtemp()
    >>> good, bad = os.path.join(folder, "good.png"), os.path.join(folder, "bad.png")
    >>> Image.new("RGB", (4, 4)).save(good)
    >>> _ = open(bad, "wb").write(b"not an image")
    >>> [os.path.basename(p) for p in find_unreadable_images([good, bad])]
    ['bad.png']
    >>> import shutil; shutil.rmtree(folder)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from PIL import Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif")
# Warnings name at most this many files or folders, so a broken copy of a large data set
# gives one readable line, not thousands.
MAX_NAMED_FILES = 5
_CHECK_CHUNK = 512


class CorruptImageWarning(UserWarning):
    """Warned when image files cannot be read and are skipped (filter it with ``warnings``)."""


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
