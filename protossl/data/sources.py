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

This module is the entry point (:func:`load_dataset`) and keeps the names it always had; the
work is done by one module per job:

* :mod:`protossl.data.specs` -- parsing ``--data`` into a :class:`DataSpec`;
* :mod:`protossl.data.splits` -- the stratified 80/20 split and the long-tail subsampling;
* :mod:`protossl.data.image_files` -- the cheap up-front check for unreadable files;
* :mod:`protossl.data.datasets` -- :class:`ImageDataset`, which every source returns;
* :mod:`protossl.data.digits` and :mod:`protossl.data.folder_walk` -- the two sources.

Example:
    >>> from protossl.data import load_dataset
    >>> train = load_dataset("digits", "train")
    >>> len(train), train.classes[:3]
    (1438, ['0', '1', '2'])
"""

from __future__ import annotations

from protossl.core.errors import UserError
from protossl.data.datasets import ImageDataset, Transform
from protossl.data.digits import load_digits_split
from protossl.data.folder_walk import FolderListing, load_folder_split
from protossl.data.image_files import (
    IMAGE_EXTENSIONS,
    CorruptImageWarning,
    find_unreadable_images,
)
from protossl.data.specs import KNOWN_SPECS, NOT_YET_SUPPORTED, DataSpec, Split, parse_data_spec
from protossl.data.splits import (
    SPLIT_SEED,
    TEST_FRACTION,
    long_tail_counts,
    long_tail_indices,
    stratified_split,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "KNOWN_SPECS",
    "NOT_YET_SUPPORTED",
    "SPLIT_SEED",
    "TEST_FRACTION",
    "CorruptImageWarning",
    "DataSpec",
    "FolderListing",
    "ImageDataset",
    "Split",
    "Transform",
    "find_unreadable_images",
    "load_dataset",
    "long_tail_counts",
    "long_tail_indices",
    "parse_data_spec",
    "stratified_split",
]


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
    # Each source is called directly from here: the warnings of the folder walk count their
    # stacklevel from this frame.
    if data_spec.kind == "digits":
        dataset = load_digits_split(split, transform)
    elif data_spec.kind == "folder" and data_spec.path:
        dataset = load_folder_split(data_spec.path, split, transform)
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
