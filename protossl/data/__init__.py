"""Data: sources (data specs, splits, long-tail subsampling) and DINO multi-crop augmentation
(per image with PIL, or batched on tensors: ``build_train_augmentation``).

Example:
    >>> from protossl.data import EvalTransform, MultiCropTransform, load_dataset
    >>> train = load_dataset("digits", "train", transform=MultiCropTransform(16))
    >>> crops, label = train[0]
    >>> len(crops), tuple(crops[0].shape), tuple(crops[2].shape)
    (6, (3, 16, 16), (3, 7, 7))
    >>> eval_view = train.with_transform(EvalTransform(16))
"""

from protossl.data.batched_augment import (
    AUGMENTATIONS,
    BatchedAugmentation,
    BatchedMultiCrop,
    build_train_augmentation,
)
from protossl.data.multicrop import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EvalTransform,
    MultiCropTransform,
    StandardAugmentation,
    blur_parameters,
    default_local_size,
)
from protossl.data.sources import (
    IMAGE_EXTENSIONS,
    KNOWN_SPECS,
    CorruptImageWarning,
    DataSpec,
    ImageDataset,
    find_unreadable_images,
    load_dataset,
    long_tail_counts,
    long_tail_indices,
    parse_data_spec,
    stratified_split,
)

__all__ = [
    "AUGMENTATIONS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "KNOWN_SPECS",
    "BatchedAugmentation",
    "BatchedMultiCrop",
    "CorruptImageWarning",
    "DataSpec",
    "EvalTransform",
    "ImageDataset",
    "MultiCropTransform",
    "StandardAugmentation",
    "blur_parameters",
    "build_train_augmentation",
    "default_local_size",
    "find_unreadable_images",
    "load_dataset",
    "long_tail_counts",
    "long_tail_indices",
    "parse_data_spec",
    "stratified_split",
]
