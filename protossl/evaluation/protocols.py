"""Evaluation protocols, registered by name: what ``protossl eval --protocols`` runs.

Each protocol is a function from an :class:`EvalInputs` (frozen features of the train and
test splits, the teacher's prototype logits, options) to a flat dict of metrics, with two
flags saying which inputs it needs, so that the runner extracts only those. A new
protocol is one function registered with :func:`register_protocol`; the runner is not
edited.

Protocols (DINO's evaluation, Caron et al., ICCV 2021, appendix; few-shot as in MSN,
Assran et al., ECCV 2022; long-tail groups as in Govindarajan et al.):

* ``knn``: weighted k-nearest-neighbour classification (cosine, T = 0.07).
* ``linear``: a linear probe on frozen features (lr / weight decay picked on a split of
  the train split, never on the test split).
* ``fewshot``: logistic regression on n labelled images per class, averaged over draws.
* ``longtail``: kNN and linear accuracy by class-frequency group (many / medium / few).
* ``cluster``: the teacher's argmax prototype as a clustering of the test images.

Example:
    >>> sorted(EVAL_PROTOCOLS)
    ['cluster', 'fewshot', 'knn', 'linear', 'longtail']
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from protossl.core.registry import Registry
from protossl.evaluation.clustering import argmax_clusters, cluster_metrics
from protossl.evaluation.fewshot import few_shot_accuracy
from protossl.evaluation.knn import knn_accuracy, knn_classify
from protossl.evaluation.linear import LinearProbe, linear_probe
from protossl.evaluation.longtail import group_accuracy

__all__ = ["EVAL_PROTOCOLS", "EvalInputs", "Protocol", "register_protocol"]

LONGTAIL_K = 20


@dataclass
class EvalInputs:
    """What the protocols read; features are ``None`` where no chosen protocol needs them.

    The linear probe is trained at most once per evaluation and shared (``linear`` and
    ``longtail`` both use it).
    """

    train: tuple[torch.Tensor, torch.Tensor, list[int]] | None
    test: tuple[torch.Tensor, torch.Tensor] | None
    logits: tuple[torch.Tensor, torch.Tensor] | None
    num_classes: int
    options: dict[str, Any]
    _probe: LinearProbe | None = field(default=None, repr=False)

    def features(self) -> tuple[torch.Tensor, torch.Tensor, list[int], torch.Tensor, torch.Tensor]:
        """``(train_x, train_y, class_counts, test_x, test_y)``."""
        assert self.train is not None and self.test is not None
        return (*self.train, *self.test)

    def probe(self) -> LinearProbe:
        """The linear probe on these features (trained on first use; test labels unseen)."""
        if self._probe is None:
            train_x, train_y, _, test_x, _ = self.features()
            self._probe = linear_probe(
                train_x, train_y, test_x, self.num_classes, epochs=self.options["epochs"]
            )
        return self._probe


@dataclass(frozen=True)
class Protocol:
    """A registered protocol: its function and the inputs it needs."""

    run: Callable[[EvalInputs], dict[str, Any]]
    needs_features: bool = True
    needs_logits: bool = False


# Registration order is the order results appear in (and are printed).
EVAL_PROTOCOLS: Registry[Protocol] = Registry("protocol")


def register_protocol(
    name: str, *, needs_features: bool = True, needs_logits: bool = False
) -> Callable[[Callable[[EvalInputs], dict[str, Any]]], Callable[[EvalInputs], dict[str, Any]]]:
    """Function decorator: make ``fn(inputs) -> metrics`` an evaluation protocol."""

    def decorator(
        fn: Callable[[EvalInputs], dict[str, Any]],
    ) -> Callable[[EvalInputs], dict[str, Any]]:
        EVAL_PROTOCOLS.add(name, Protocol(fn, needs_features, needs_logits))
        return fn

    return decorator


@register_protocol("knn")
def _knn(inputs: EvalInputs) -> dict[str, Any]:
    train_x, train_y, _, test_x, test_y = inputs.features()
    return knn_accuracy(
        train_x, train_y, test_x, test_y, inputs.num_classes, ks=inputs.options["ks"]
    )


@register_protocol("linear")
def _linear(inputs: EvalInputs) -> dict[str, Any]:
    probe, test_y = inputs.probe(), inputs.features()[4]
    hits = probe.ranked == test_y[:, None]
    out: dict[str, Any] = {"linear_top1": int(hits[:, 0].sum()) / len(test_y)}
    if probe.ranked.shape[1] >= 5:
        out["linear_top5"] = int(hits.any(dim=1).sum()) / len(test_y)
    out.update(
        linear_lr=probe.lr,
        linear_weight_decay=probe.weight_decay,
        linear_val_top1=probe.val_top1,
    )
    return out


@register_protocol("fewshot")
def _fewshot(inputs: EvalInputs) -> dict[str, Any]:
    train_x, train_y, _, test_x, test_y = inputs.features()
    return few_shot_accuracy(
        train_x,
        train_y,
        test_x,
        test_y,
        inputs.num_classes,
        shots=inputs.options["shots"],
        draws=inputs.options["draws"],
    )


@register_protocol("longtail")
def _longtail(inputs: EvalInputs) -> dict[str, Any]:
    train_x, train_y, counts, test_x, test_y = inputs.features()
    knn_pred = knn_classify(train_x, train_y, test_x, inputs.num_classes, ks=(LONGTAIL_K,))
    results = group_accuracy(knn_pred[LONGTAIL_K][:, 0], test_y, counts, "longtail_knn_")
    results.update(group_accuracy(inputs.probe().ranked[:, 0], test_y, counts, "longtail_linear_"))
    nonzero = [c for c in counts if c > 0]
    results["longtail_imbalance"] = max(nonzero) / min(nonzero)
    return results


@register_protocol("cluster", needs_features=False, needs_logits=True)
def _cluster(inputs: EvalInputs) -> dict[str, Any]:
    assert inputs.logits is not None
    scores, labels = inputs.logits
    metrics = cluster_metrics(argmax_clusters(scores), labels)
    results: dict[str, Any] = {f"cluster_{k}": v for k, v in metrics.items()}
    results["cluster_num_prototypes"] = int(scores.shape[1])
    return results
