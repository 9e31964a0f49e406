"""Objectives: multi-crop cross-entropy, teacher target builders, KoLeo regularizers.

Example:
    >>> import torch
    >>> from protossl.objectives import Centering, DINOCrossEntropy, KoLeoProto
    >>> probs = Centering(16).targets(torch.randn(2, 4, 16), teacher_temp=0.04)
"""

from protossl.objectives.cross_entropy import DINOCrossEntropy, multicrop_cross_entropy
from protossl.objectives.koleo import KoLeoProto, koleo_loss, koleo_proto_loss
from protossl.objectives.registry import (
    EMBEDDING_REGULARIZERS,
    MLCD_REGULARIZERS,
    PROTOTYPE_REGULARIZERS,
    TARGET_BUILDERS,
    build_embedding_regularizer,
    build_mlcd_regularizer,
    build_prototype_regularizer,
    build_target_builder,
    register_embedding_regularizer,
    register_mlcd_regularizer,
    register_prototype_regularizer,
    register_target_builder,
)
from protossl.objectives.targets import Centering, TargetBuilder
from protossl.objectives.vmf import log_vmf_normalizer

# Modules that register themselves by name (imported for that side effect).
from protossl.objectives import embedding as _embedding  # noqa: E402,F401  isort: skip
from protossl.objectives import pairwise as _pairwise  # noqa: E402,F401  isort: skip
from protossl.objectives import sinkhorn as _sinkhorn  # noqa: E402,F401  isort: skip
from protossl.objectives import probability_centering as _prob  # noqa: E402,F401  isort: skip
from protossl.objectives import mlcd as _mlcd  # noqa: E402,F401  isort: skip
from protossl.objectives import msn as _msn  # noqa: E402,F401  isort: skip

__all__ = [
    "EMBEDDING_REGULARIZERS",
    "MLCD_REGULARIZERS",
    "PROTOTYPE_REGULARIZERS",
    "TARGET_BUILDERS",
    "Centering",
    "DINOCrossEntropy",
    "KoLeoProto",
    "TargetBuilder",
    "build_embedding_regularizer",
    "build_mlcd_regularizer",
    "build_prototype_regularizer",
    "build_target_builder",
    "koleo_loss",
    "log_vmf_normalizer",
    "koleo_proto_loss",
    "multicrop_cross_entropy",
    "register_embedding_regularizer",
    "register_mlcd_regularizer",
    "register_prototype_regularizer",
    "register_target_builder",
]
