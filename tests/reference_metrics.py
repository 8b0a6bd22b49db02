"""Metrics written out independently of workflow_scripts.metrics, for tests to recompute scores with."""
from __future__ import annotations


def apk(actual, predicted, k):
    """Average precision at k as Kaggle's ml_metrics writes it."""
    predicted = list(predicted)[:k]
    score, hits = 0.0, 0
    for i, item in enumerate(predicted):
        if item in actual and item not in predicted[:i]:
            hits += 1
            score += hits / (i + 1.0)
    return score / min(len(actual), k) if actual else 0.0
