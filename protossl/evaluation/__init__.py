"""Evaluation protocols for frozen self-supervised features.

kNN (DINO), linear probe, few-shot logistic regression (MSN), accuracy by
class frequency (long-tailed data) and clustering metrics of the teacher's
prototypes; :func:`evaluate_run` runs any subset on a trained run
(``protossl eval``). See docs/evaluation.md.
"""

from protossl.evaluation.clustering import cluster_metrics
from protossl.evaluation.fewshot import few_shot_accuracy
from protossl.evaluation.knn import knn_accuracy, knn_classify, knn_predict, knn_search
from protossl.evaluation.linear import linear_probe
from protossl.evaluation.longtail import group_accuracy

__all__ = [
    "cluster_metrics",
    "few_shot_accuracy",
    "group_accuracy",
    "knn_accuracy",
    "knn_classify",
    "knn_predict",
    "knn_search",
    "linear_probe",
]
