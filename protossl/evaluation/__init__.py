"""Evaluation protocols for frozen self-supervised features."""

from protossl.evaluation.knn import knn_accuracy, knn_predict

__all__ = ["knn_accuracy", "knn_predict"]
