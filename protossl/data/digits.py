"""The ``digits`` source: scikit-learn's bundled 8x8 handwritten digits (1,797 images in 10
classes), the offline default that needs no download.

The pixel values (0..16) are stretched to 0..255 so the images look like ordinary uint8
images to the augmentations, and the 80/20 split is the fixed stratified one of
:func:`protossl.data.splits.stratified_split`, so the test set never changes.

Example:
    >>> train, test = load_digits_split("train", None), load_digits_split("test", None)
    >>> len(train), len(test), train.classes[:3]
    (1438, 359, ['0', '1', '2'])
"""

from __future__ import annotations

import functools

import numpy as np

from protossl.data.datasets import ImageDataset, Transform
from protossl.data.specs import Split
from protossl.data.splits import stratified_split


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    # Imported here, not at module level: only this source needs scikit-learn, and it is
    # loaded once (the cache), on first use.
    from sklearn.datasets import load_digits

    digits = load_digits()
    # Values are 0..16; stretch to the full uint8 range so they look like ordinary images.
    images = np.clip(np.rint(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    images.setflags(write=False)  # the cache is shared; nobody may change it
    return images, digits.target.astype(np.int64)


def load_digits_split(split: Split, transform: Transform | None) -> ImageDataset:
    """The ``train`` (1,438 images) or ``test`` (359) split of the digits, as RGB images."""
    images, targets = _digits_arrays()
    train, test = stratified_split(targets.tolist())
    indices = np.asarray(train if split == "train" else test, dtype=np.int64)
    classes = [str(d) for d in range(10)]
    return ImageDataset(images[indices], targets[indices].tolist(), classes, transform)
