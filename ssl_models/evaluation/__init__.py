"""Evaluation on frozen features: kNN and linear probe."""

from ssl_models.evaluation.features import FlatPixels, extract_features
from ssl_models.evaluation.knn import knn_predict, knn_top1
from ssl_models.evaluation.linear import linear_probe

__all__ = ["FlatPixels", "extract_features", "knn_predict", "knn_top1", "linear_probe"]
