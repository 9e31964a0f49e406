"""What the report measures on a run's checkpoint: prototypes, duplicate groups, and the
teacher's view of a subset of the test split.

Prototype directions and their duplicate groups (components of the eps-linkage
graph, Govindarajan et al., "On Partial Prototype Collapse in the DINO Family of
Self-Supervised Methods") come from the student head, as the run's ``M`` does.
Test images go through the *teacher* (as DINO, Caron et al. 2021, evaluates it):
backbone features for the embedding map, and the argmax of the prototype scores
as each image's cluster. Features come from the evaluation code
(:func:`~protossl.evaluation.features.extract_features`) through its feature
cache in ``RUN/cache``, so a second report (or ``protossl eval`` on the full test
split) does not repeat the forward passes.

Example:
    >>> probe = probe_run(run, samples=1000)  # doctest: +SKIP
    >>> probe.unique.num_unique, probe.test.usage.num_used  # doctest: +SKIP
    (231, 87)
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from protossl.core.errors import UserError
from protossl.data import EvalTransform, ImageDataset, load_dataset, parse_data_spec
from protossl.diagnostics import (
    UniqueResult,
    UsageStats,
    count_unique_prototypes,
    normalize_prototypes,
    prototype_usage,
)
from protossl.evaluation.cache import FeatureCache, dataset_fingerprint, feature_key, file_digest
from protossl.evaluation.features import extract_features, feature_encoder
from protossl.evaluation.finite import require_finite_features, require_finite_weights
from protossl.methods import Method
from protossl.reports.embedding import subsample_indices
from protossl.reports.runs import RunRecord
from protossl.runs.checkpoint import load_method as load_training_method

__all__ = ["RunProbe", "TestProbe", "load_method", "probe_run"]


@dataclass(frozen=True, eq=False)
class TestProbe:
    """The teacher on a fixed subset of the test split.

    Attributes:
        features: float32 [n, d] teacher backbone features.
        labels: int64 [n] class indices.
        assignments: int64 [n] argmax teacher prototype of each image.
        usage: usage statistics of ``assignments`` over the K prototypes.
        classes: class names.
        images: the same n images, untransformed (PIL), for example grids.
    """

    features: np.ndarray
    labels: np.ndarray
    assignments: np.ndarray
    usage: UsageStats
    classes: list[str]
    images: ImageDataset


@dataclass(frozen=True, eq=False)
class RunProbe:
    """Prototypes of a run's student head and, when its data loads, a :class:`TestProbe`.

    Attributes:
        directions: float64 [K, p] unit prototype directions.
        unique: duplicate groups at the run's eps (``unique.labels``: group of each row).
        test: the teacher on test images, or None (``note`` says why).
        note: why ``test`` is missing, else None.
    """

    directions: np.ndarray
    unique: UniqueResult
    test: TestProbe | None
    note: str | None = None


def load_method(checkpoint: Path) -> Method:
    """The method of a protossl training checkpoint, in evaluation mode, on the CPU."""
    method = load_training_method(checkpoint).method
    require_finite_weights(method, checkpoint)
    return method


def probe_run(
    run: RunRecord,
    samples: int = 1000,
    device: str = "cpu",
    cache: bool = True,
    seed: int = 0,
) -> RunProbe | None:
    """Measure ``run``'s checkpoint; None when it has none.

    Args:
        run: the run (its ``checkpoints/last.pt`` and config are read).
        samples: at most this many test images (a seeded subset; all when fewer).
        device: where the forward passes run (``cpu`` or ``cuda``).
        cache: read and write the feature cache in ``RUN/cache``.
        seed: chooses the test subset.

    A data set that no longer loads (a moved folder) is not an error: ``test`` is
    None and ``note`` holds the reason, so a report over a sweep still completes.
    """
    checkpoint = run.checkpoint
    if checkpoint is None:
        return None
    method = load_method(checkpoint)
    student = method.student_prototypes().detach().cpu()
    directions = normalize_prototypes(student).to(torch.float64).numpy()
    unique = count_unique_prototypes(student, eps=run.eps)
    try:
        test = _probe_test(method, checkpoint, run, samples, device, cache, seed)
    except UserError as exc:
        return RunProbe(directions, unique, None, f"test images unavailable: {exc}")
    return RunProbe(directions, unique, test)


def _probe_test(
    method: Method,
    checkpoint: Path,
    run: RunRecord,
    samples: int,
    device: str,
    cache: bool,
    seed: int,
) -> TestProbe:
    data = run.config.get("data") or {}
    spec = str(parse_data_spec(str(data.get("spec", "digits"))))
    transform = EvalTransform(int(data.get("image_size", 16)))
    dataset = load_dataset(spec, "test", transform=transform)
    if samples < len(dataset):
        # The full split otherwise: then the cache entry is the one protossl eval uses.
        dataset = dataset.subset(subsample_indices(len(dataset), samples, seed).tolist())
    store = FeatureCache(run.path / "cache" if cache else None)
    digest = file_digest(checkpoint) if cache else ""
    fingerprint = dataset_fingerprint(dataset)
    target = torch.device(device)
    method = method.to(target)
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for kind in ("backbone", "logits"):
        key = feature_key(digest, spec, "test", repr(dataset.transform), fingerprint, kind)
        out[kind] = store.get_or_compute(
            key,
            functools.partial(
                extract_features, feature_encoder(method, kind), dataset, device=target
            ),
            {"checkpoint": str(checkpoint), "spec": spec, "split": "test", "kind": kind},
        )
    features, labels = out["backbone"]
    logits, _ = out["logits"]
    require_finite_features(features, "backbone features of the test split", dataset.files)
    require_finite_features(logits, "prototype logits of the test split", dataset.files)
    assignments = logits.argmax(dim=1)
    return TestProbe(
        features=features.numpy().astype(np.float32),
        labels=labels.numpy().astype(np.int64),
        assignments=assignments.numpy().astype(np.int64),
        usage=prototype_usage(assignments, int(logits.shape[1])),
        classes=list(dataset.classes),
        images=dataset.with_transform(None),
    )
