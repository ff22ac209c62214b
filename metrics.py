"""The accuracies of a set of predictions, shared by train.py (each split's result) and
evaluate.py (the tables), without evaluate.py's statistics and plotting."""

from __future__ import annotations

import numpy as np


def recall_metrics(
    labels: np.ndarray, preds: np.ndarray, num_classes: int
) -> tuple[float, float, list[float]]:
    """(WAR = accuracy, UAR = mean recall over the classes present in `labels`, per-class recall
    with NaN for absent classes)."""
    labels, preds = np.asarray(labels), np.asarray(preds)
    recall = []
    for c in range(num_classes):
        mask = labels == c
        recall.append(float((preds[mask] == c).mean()) if mask.any() else float("nan"))
    return float((labels == preds).mean()), float(np.nanmean(recall)), recall
