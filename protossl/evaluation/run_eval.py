"""Evaluate a trained run or checkpoint on frozen features (``protossl eval``).

Loads the method from a protossl checkpoint, extracts (and caches) the
teacher's frozen features of the train and test splits, runs the requested
protocols and, for a run directory, merges the results into its
``summary.json`` under ``eval`` (written atomically). Every result is a flat
``name -> number`` entry, prefixed by its protocol:

* ``knn``: ``knn_top1@k`` / ``knn_top5@k`` for k in 10, 20, 100, 200;
* ``linear``: ``linear_top1`` / ``linear_top5`` and the chosen ``linear_lr`` /
  ``linear_weight_decay`` / ``linear_val_top1``;
* ``fewshot``: ``fewshot_{n}shot_top1_mean`` / ``_std`` for n in 1, 2, 5, 13;
* ``longtail``: ``longtail_{knn,linear}_{many,medium,few}_top1`` and the number
  of classes per group;
* ``cluster``: ``cluster_nmi`` / ``_ami`` / ``_ari`` / ``_clusters_used`` /
  ``_purity`` of the argmax teacher prototype on the test images.

Example:
    >>> evaluate_run("runs/dino", "digits", None, ["knn"])["results"]  # doctest: +SKIP
    {'knn_top1@10': 0.95, 'knn_top5@10': 0.99, ...}
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from protossl.core.errors import UserError
from protossl.core.files import atomic_write_text
from protossl.core.run_layout import CHECKPOINTS_DIR, RunPaths
from protossl.data import EvalTransform, ImageDataset, load_dataset, parse_data_spec
from protossl.evaluation.cache import FeatureCache, dataset_fingerprint, feature_key, file_digest
from protossl.evaluation.features import FEATURE_KINDS, extract_features, feature_encoder
from protossl.evaluation.fewshot import DEFAULT_DRAWS, DEFAULT_SHOTS
from protossl.evaluation.finite import require_finite_features
from protossl.evaluation.protocols import EVAL_PROTOCOLS, EvalInputs
from protossl.evaluation.released import ReleasedMethod, load_for_evaluation
from protossl.runs.checkpoint import LoadedRun
from protossl.runs.folder import FolderLock

__all__ = ["DEFAULT_KS", "PROTOCOLS", "evaluate_run", "format_results", "parse_protocols"]

PROTOCOLS = tuple(EVAL_PROTOCOLS)  # every registered protocol, in result order
DEFAULT_KS = (10, 20, 100, 200)  # DINO, appendix (k = 20 is its headline number)


def parse_protocols(protocols: str | Sequence[str]) -> list[str]:
    """Comma-separated or listed protocol names, checked, duplicates dropped, order kept.

    Example:
        >>> parse_protocols("knn, linear,knn")
        ['knn', 'linear']
    """
    names = protocols.split(",") if isinstance(protocols, str) else list(protocols)
    chosen = list(dict.fromkeys(n.strip() for n in names if n.strip()))
    unknown = [p for p in chosen if p not in EVAL_PROTOCOLS]
    if unknown or not chosen:
        raise UserError(
            f"unknown protocol(s) {', '.join(unknown) or '(none given)'}; "
            f"use a comma-separated subset of: {', '.join(PROTOCOLS)}"
        )
    return chosen


def _default_cache_dir(run: Path, file: Path) -> Path:
    """``RUN/cache`` for a run (or a checkpoint inside ``RUN/checkpoints``), else beside it."""
    if run.is_dir():
        return run / "cache"
    if file.parent.name == CHECKPOINTS_DIR:
        return file.parent.parent / "cache"
    return file.parent / "cache"


def _read_summary(run: Path) -> dict[str, Any] | None:
    """The run's summary (checked before any work), {} for a run without one, None for a file."""
    if not run.is_dir():
        return None
    path = RunPaths(run).summary
    if not path.is_file():
        return {}
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError:
        summary = None
    if not isinstance(summary, dict):
        raise UserError(
            f"{path} is not a valid JSON object, so eval results cannot be merged into it; "
            "move the file away and run eval again"
        )
    return summary


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown device '{device}'; use auto, cpu or cuda") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA device is available; use cpu")
    return resolved


class _Extractor:
    """Cached feature extraction for one loaded method."""

    def __init__(
        self,
        loaded: LoadedRun,
        cache: FeatureCache,
        device: torch.device,
        batch_size: int,
        progress: bool,
    ) -> None:
        self.loaded = loaded
        self.cache = cache
        self.device = device
        self.batch_size = batch_size
        self.progress = progress
        self._checkpoint_digest: str | None = None

    def __call__(
        self, dataset: ImageDataset, spec: str, split: str, kind: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self._checkpoint_digest is None and self.cache.directory is not None:
            self._checkpoint_digest = file_digest(self.loaded.file)
        key = feature_key(
            self._checkpoint_digest or "",
            spec,
            split,
            repr(dataset.transform),
            dataset_fingerprint(dataset),
            kind,
        )
        meta = {"checkpoint": str(self.loaded.file), "spec": spec, "split": split, "kind": kind}
        out = self.cache.get_or_compute(key, lambda: self._compute(dataset, split, kind), meta)
        # Checked after the cache too: an entry written before this check existed counts.
        label = "prototype logits" if kind == "logits" else f"{kind} features"
        require_finite_features(out[0], f"{label} of the {split} split", dataset.files)
        return out

    def _compute(
        self, dataset: ImageDataset, split: str, kind: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        method = self.loaded.method.to(self.device)
        return extract_features(
            feature_encoder(method, kind),
            dataset,
            batch_size=self.batch_size,
            progress=self.progress,
            description=f"{kind} features ({split})",
            device=self.device,
        )


def _run_protocols(
    protocols: list[str],
    train: tuple[torch.Tensor, torch.Tensor, list[int]] | None,
    test: tuple[torch.Tensor, torch.Tensor] | None,
    logits: tuple[torch.Tensor, torch.Tensor] | None,
    num_classes: int,
    options: dict[str, Any],
) -> dict[str, Any]:
    inputs = EvalInputs(train, test, logits, num_classes, options)
    results: dict[str, Any] = {}
    for name, protocol in EVAL_PROTOCOLS.items():  # registration order: a stable output
        if name not in protocols:
            continue
        if (protocol.needs_features and (train is None or test is None)) or (
            protocol.needs_logits and logits is None
        ):
            continue
        results.update(protocol.run(inputs))
    # NaN is not JSON; a metric that could not be computed is null.
    return {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v)
        for k, v in results.items()
    }


def evaluate_run(
    run: str | Path,
    data: str,
    test_data: str | None,
    protocols: str | Sequence[str] = ("knn",),
    *,
    features: str = "backbone",
    cache: bool = True,
    cache_dir: str | Path | None = None,
    device: str = "cpu",
    batch_size: int = 256,
    progress: bool = False,
    image_size: int | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    linear_epochs: int = 100,
    shots: Sequence[int] = DEFAULT_SHOTS,
    draws: int = DEFAULT_DRAWS,
) -> dict[str, Any]:
    """Run the requested protocols; a run directory also gets them in its summary.json.

    Args:
        run: A run directory (its ``checkpoints/last.pt``) or a checkpoint file.
        data: Data spec whose *train* split is the labelled pool (kNN bank, probe data).
        test_data: Data spec whose *test* split is evaluated (default: ``data``).
        protocols: Subset of :data:`PROTOCOLS`, as a list or comma-separated string.
        features: ``backbone`` or ``bottleneck`` (the head's unit-norm embedding).
        cache: Whether to read and write the feature cache.
        cache_dir: Cache directory (default ``RUN/cache``).
        device: ``cpu``, ``cuda`` or ``auto`` for the forward passes.
        batch_size: Images per forward pass.
        progress: Show progress bars (stderr).
        image_size: Evaluation image size (default: the run's training size; for a
            released backbone its native size).
        ks, linear_epochs, shots, draws: Protocol settings (see docs/evaluation.md).

    Returns:
        ``{"checkpoint", "data", "test_data", "features", "protocols", "results",
        "cache"}`` with ``results`` a flat dict of numbers (None where undefined).

    Raises:
        UserError: Unknown protocol or feature kind, missing or unknown checkpoint,
            bad data spec, mismatched classes, invalid summary.json.
    """
    chosen = parse_protocols(protocols)
    if features not in FEATURE_KINDS:
        raise UserError(f"unknown --features '{features}'; use one of: {', '.join(FEATURE_KINDS)}")
    if batch_size < 1:
        raise UserError(f"batch size must be >= 1 (got {batch_size})")
    if image_size is not None and image_size < 1:
        raise UserError(f"image size must be >= 1 (got {image_size})")
    run_path = Path(run)
    loaded = load_for_evaluation(run_path, image_size)
    if isinstance(loaded.method, ReleasedMethod):
        needs_logits = [p for p in chosen if EVAL_PROTOCOLS[p].needs_logits]
        if needs_logits or features != "backbone":
            raise UserError(
                f"{loaded.file} is a released backbone without protossl's head: "
                f"{', '.join(needs_logits) or '--features ' + features} cannot run on it; "
                "use --features backbone and the protocols knn, linear, fewshot, longtail"
            )
    summary = _read_summary(run_path)
    # Recording into a run's summary.json makes this process a writer of the run folder.
    with FolderLock(run_path) if summary is not None else contextlib.nullcontext():
        target = torch.device(_resolve_device(device))
        # Everything that can fail on user input is checked before any file is written.
        transform = EvalTransform(loaded.cfg.data.image_size)
        train_spec = str(parse_data_spec(data))
        test_spec = str(parse_data_spec(test_data or data))
        need_train = any(EVAL_PROTOCOLS[p].needs_features for p in chosen)
        train_set = load_dataset(train_spec, "train", transform=transform) if need_train else None
        test_set = load_dataset(test_spec, "test", transform=transform)
        if train_set is not None and train_set.classes != test_set.classes:
            raise UserError(
                f"the train data ({len(train_set.classes)} classes) and the test data "
                f"({len(test_set.classes)} classes) have different class lists; give --test-data "
                "with the same class folders"
            )
        num_classes = len(test_set.classes)
        directory = None
        if cache:
            directory = Path(cache_dir) if cache_dir else _default_cache_dir(run_path, loaded.file)
        feature_cache = FeatureCache(directory)
        extract = _Extractor(loaded, feature_cache, target, batch_size, progress)

        train = test = logits = None
        if train_set is not None:
            train_x, train_y = extract(train_set, train_spec, "train", features)
            train = (train_x, train_y, train_set.class_counts())
            test = extract(test_set, test_spec, "test", features)
        if any(EVAL_PROTOCOLS[p].needs_logits for p in chosen):
            logits = extract(test_set, test_spec, "test", "logits")
        options = {"ks": tuple(ks), "epochs": linear_epochs, "shots": tuple(shots), "draws": draws}
        results = _run_protocols(chosen, train, test, logits, num_classes, options)

        output: dict[str, Any] = {
            "checkpoint": str(loaded.file),
            "data": data,
            "test_data": test_data,
            "features": features,
            "protocols": chosen,
            "results": results,
            "cache": {
                "dir": str(directory) if directory else None,
                "hits": feature_cache.hits,
                "misses": feature_cache.misses,
            },
        }
        if summary is not None:
            _write_summary(RunPaths(run_path).summary, summary, output)
        return output


def _write_summary(path: Path, summary: dict[str, Any], output: dict[str, Any]) -> None:
    """Merge the results into ``summary["eval"]`` (latest value of each metric wins) and
    keep every evaluation's full record under ``summary["eval"]["runs"][label]``, where the
    label names the features and data, so results on different data never overwrite."""
    section = summary.setdefault("eval", {})
    if not isinstance(section, dict):
        section = summary["eval"] = {}
    section.update(output["results"])
    label = f"{output['features']}|{output['data']}|{output['test_data'] or output['data']}"
    record = section.setdefault("runs", {}).setdefault(label, {})
    record.update(output["results"])
    atomic_write_text(path, json.dumps(summary, indent=2) + "\n")


def format_results(output: dict[str, Any]) -> str:
    """A two-column table (metric, value) grouped by protocol, for people."""
    rows = [f"{output['checkpoint']}  features={output['features']}  data={output['data']}"]
    if output.get("test_data"):
        rows[0] += f"  test={output['test_data']}"
    width = max((len(k) for k in output["results"]), default=10)
    previous = None
    for key, value in output["results"].items():
        protocol = key.split("_")[0]
        if protocol != previous:
            rows.append("-" * (width + 12))
            previous = protocol
        if value is None:
            text = "-"
        elif isinstance(value, bool | int):
            text = str(value)
        elif key.endswith(("_lr", "_weight_decay")):
            text = f"{value:g}"
        else:
            text = f"{value:.4f}"
        rows.append(f"{key:<{width}}  {text:>10}")
    cache = output["cache"]
    if cache["dir"]:
        rows.append(
            f"feature cache {cache['dir']}: {cache['hits']} hit(s), {cache['misses']} miss(es)"
        )
    return "\n".join(rows)
