"""Competition metrics, shared by every step that scores predictions (one definition each).

Conventions used throughout:
- a binary column is predicted positive when `probability >= threshold` (0.5 unless given);
- a multiclass head predicts its argmax (ties go to the lower class index);
- an F1 with no true and no predicted positives is 0 (sklearn's `zero_division=0`).
"""
from __future__ import annotations

import math
import re
from typing import Collection, Hashable, Sequence

import numpy as np

from workflow_scripts.errors import OoflineError
from workflow_scripts.labels import LabelSpec

LOG_LOSS_EPS = 1e-15


def _check_k(k: int) -> int:
    if int(k) != k or k < 1:
        raise OoflineError(f"k must be a positive integer, got {k!r}")
    return int(k)


def _check_lengths(actual: Sequence, predicted: Sequence) -> None:
    if len(actual) != len(predicted):
        raise OoflineError(f"actual has {len(actual)} rows but predicted has {len(predicted)}")


def average_precision_at_k(actual: Collection[Hashable], predicted: Sequence[Hashable], k: int) -> float:
    """Kaggle's AP@k for one row; a repeated prediction earns nothing, an empty `actual` scores 0."""
    relevant = set(actual)
    if not relevant:
        return 0.0
    score, hits, seen = 0.0, 0, set()
    for position, item in enumerate(list(predicted)[:k]):
        if item in relevant and item not in seen:
            hits += 1
            score += hits / (position + 1)
        seen.add(item)
    return score / min(len(relevant), k)


def map_at_k(actual: Sequence[Collection[Hashable]], predicted: Sequence[Sequence[Hashable]], k: int) -> float:
    """Kaggle's MAP@k: mean over rows of AP@k (one true label: 1, 1/2, 1/3 for a hit at rank 1, 2, 3)."""
    k = _check_k(k)
    _check_lengths(actual, predicted)
    if len(actual) == 0:
        return 0.0
    return float(np.mean([average_precision_at_k(a, p, k) for a, p in zip(actual, predicted)]))


def recall_at_k(actual: Sequence[Collection[Hashable]], predicted: Sequence[Sequence[Hashable]], k: int) -> float:
    """Mean over rows of |relevant in the top k| / |relevant|; rows with no relevant item are skipped."""
    k = _check_k(k)
    _check_lengths(actual, predicted)
    recalls = []
    for a, p in zip(actual, predicted):
        relevant = set(a)
        if relevant:
            recalls.append(len(relevant & set(list(p)[:k])) / len(relevant))
    return float(np.mean(recalls)) if recalls else 0.0


def _check_probs(probs: np.ndarray, name: str = "probs") -> np.ndarray:
    probs = np.asarray(probs)
    if probs.ndim != 2:
        raise OoflineError(f"{name} must be a 2-d (n_rows, n_classes) array, got shape {probs.shape}")
    return probs


def true_class_rank(probs: np.ndarray, true_index: np.ndarray) -> np.ndarray:
    """0-based rank of the true class in each row when sorted by falling probability (ties: lower index first).

    probs: (n_rows, n_classes); true_index: (n_rows,) int. Returns (n_rows,) int64. Vectorised, no sort.
    """
    probs = _check_probs(probs)
    true_index = np.asarray(true_index, dtype=np.int64)
    if true_index.shape != (probs.shape[0],):
        raise OoflineError(f"true_index must have shape ({probs.shape[0]},), got {true_index.shape}")
    if true_index.size and (true_index.min() < 0 or true_index.max() >= probs.shape[1]):
        raise OoflineError(f"true_index must lie in [0, {probs.shape[1]}), got values outside it")
    true_prob = probs[np.arange(probs.shape[0]), true_index][:, None]
    above = (probs > true_prob).sum(axis=1)
    # Ties broken like a stable sort: an equal class with a lower index ranks first.
    tied_before = ((probs == true_prob) & (np.arange(probs.shape[1])[None, :] < true_index[:, None])).sum(axis=1)
    return (above + tied_before).astype(np.int64)


def map_at_k_from_probabilities(probs: np.ndarray, true_index: np.ndarray, k: int) -> float:
    """MAP@k of ranking classes by probability, one true class per row. probs: (n, c); true_index: (n,)."""
    k = _check_k(k)
    rank = true_class_rank(probs, true_index)
    if rank.size == 0:
        return 0.0
    return float(np.where(rank < k, 1.0 / (rank + 1.0), 0.0).mean())


def top_k_indices(probs: np.ndarray, k: int) -> np.ndarray:
    """Class indices of the k most probable classes per row, most probable first (ties: lower index). (n, k)."""
    probs = _check_probs(probs)
    k = min(_check_k(k), probs.shape[1])
    if k == probs.shape[1]:
        return np.argsort(-probs, axis=1, kind="stable")
    # argpartition keeps this O(n*c); a tie at the k-th place is resolved by a stable sort of a wider slice.
    candidates = np.argpartition(-probs, k - 1, axis=1)[:, :k]
    kth_value = np.take_along_axis(probs, candidates, axis=1).min(axis=1)
    has_boundary_tie = (probs == kth_value[:, None]).sum(axis=1) > (
        np.take_along_axis(probs, candidates, axis=1) == kth_value[:, None]
    ).sum(axis=1)
    candidates = np.sort(candidates, axis=1)  # index order, so the stable sort below breaks ties by index
    order = np.argsort(-np.take_along_axis(probs, candidates, axis=1), axis=1, kind="stable")
    result = np.take_along_axis(candidates, order, axis=1)
    if has_boundary_tie.any():
        rows = np.flatnonzero(has_boundary_tie)
        result[rows] = np.argsort(-probs[rows], axis=1, kind="stable")[:, :k]
    return result


def _binary_matrices(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.ndim == 1:
        y_true, y_pred = y_true[:, None], y_pred[:, None] if y_pred.ndim == 1 else y_pred
    if y_true.shape != y_pred.shape or y_true.ndim != 2:
        raise OoflineError(f"y_true {y_true.shape} and y_pred {y_pred.shape} must be the same (n_rows, n_labels) shape")
    return y_true.astype(bool), y_pred.astype(bool)


def _f1_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    tp, fp, fn = (np.asarray(x, dtype=np.float64) for x in (tp, fp, fn))
    denominator = 2 * tp + fp + fn
    return np.divide(2 * tp, denominator, out=np.zeros_like(denominator), where=denominator > 0)


def per_label_f1(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """F1 of the positive class for each label. y_true, y_pred: (n_rows, n_labels) 0/1. Returns (n_labels,)."""
    y_true, y_pred = _binary_matrices(y_true, y_pred)
    tp = (y_true & y_pred).sum(axis=0)
    fp = (~y_true & y_pred).sum(axis=0)
    fn = (y_true & ~y_pred).sum(axis=0)
    return _f1_from_counts(tp, fp, fn)


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Unweighted mean of per-label F1 (sklearn `f1_score(average="macro")` on indicator matrices)."""
    return float(per_label_f1(y_true, y_pred).mean())


def micro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """F1 of true/false positives pooled over all labels (sklearn `average="micro"`)."""
    y_true, y_pred = _binary_matrices(y_true, y_pred)
    tp = (y_true & y_pred).sum()
    fp = (~y_true & y_pred).sum()
    fn = (y_true & ~y_pred).sum()
    return float(_f1_from_counts(tp, fp, fn))


def accuracy(true_index: np.ndarray, predicted_index: np.ndarray) -> float:
    """Fraction of rows whose predicted class equals the true class (or whose label rows match exactly)."""
    true_index, predicted_index = np.asarray(true_index), np.asarray(predicted_index)
    if true_index.shape != predicted_index.shape:
        raise OoflineError(f"accuracy: true {true_index.shape} and predicted {predicted_index.shape} shapes differ")
    if true_index.size == 0:
        return 0.0
    equal = true_index == predicted_index
    if equal.ndim == 2:  # multilabel: subset accuracy
        equal = equal.all(axis=1)
    return float(equal.mean())


def log_loss(true_index: np.ndarray, probs: np.ndarray, eps: float = LOG_LOSS_EPS) -> float:
    """Multiclass log loss; rows are renormalised to sum 1 and clipped to [eps, 1 - eps]. probs: (n, c)."""
    probs = _check_probs(np.asarray(probs, dtype=np.float64))
    true_index = np.asarray(true_index, dtype=np.int64)
    if probs.shape[0] == 0:
        return 0.0
    if probs.shape[1] == 1:  # a binary column: probability of the positive class
        probs = np.concatenate([1.0 - probs, probs], axis=1)
    totals = probs.sum(axis=1, keepdims=True)
    probs = np.divide(probs, totals, out=np.full_like(probs, 1.0 / probs.shape[1]), where=totals > 0)
    picked = np.clip(probs[np.arange(probs.shape[0]), true_index], eps, 1 - eps)
    return float(-np.log(picked).mean())


def multiclass_macro_f1(true_index: np.ndarray, predicted_index: np.ndarray) -> float:
    """Macro F1 over the classes present in the truth or the predictions (sklearn's default label set)."""
    true_index, predicted_index = np.asarray(true_index), np.asarray(predicted_index)
    classes = np.union1d(true_index, predicted_index)
    if classes.size == 0:
        return 0.0
    truth = true_index[:, None] == classes[None, :]
    predicted = predicted_index[:, None] == classes[None, :]
    return macro_f1(truth, predicted)


def _head_thresholds(spec: LabelSpec, thresholds: dict[str, float] | None) -> dict[str, float]:
    thresholds = dict(thresholds or {})
    unknown = sorted(set(thresholds) - set(spec.binary_columns))
    if unknown:
        raise OoflineError(f"thresholds name columns that are not binary columns of the task: {unknown[:5]}")
    return thresholds


def hard_predictions(spec: LabelSpec, probs: np.ndarray, thresholds: dict[str, float] | None = None) -> np.ndarray:
    """0/1 predictions in the spec's column layout: binary columns thresholded, multiclass heads one-hot argmax.

    probs: (n_rows, n_columns); thresholds: {binary column: threshold}, 0.5 where absent. Returns (n, c) int8.
    """
    probs = _check_probs(probs)
    thresholds = _head_thresholds(spec, thresholds)
    out = np.zeros(probs.shape, dtype=np.int8)
    for head, columns in spec.head_slices():
        block = probs[:, columns]
        if head.type == "binary":
            # float64 like the threshold search: a float32 compare can round a midpoint onto a score
            out[:, columns] = (block.astype(np.float64) >= float(thresholds.get(head.name, 0.5))).astype(np.int8)
        else:
            chosen = block.argmax(axis=1)
            one_hot = np.zeros(block.shape, dtype=np.int8)
            one_hot[np.arange(probs.shape[0]), chosen] = 1
            out[:, columns] = one_hot
    return out


_MAP_PATTERN = re.compile(r"^map@(\d+)$")
METRIC_NAMES = ("map@K", "accuracy", "log_loss", "macro_f1", "micro_f1", "mean_f1")


def metric_direction(metric: str) -> int:
    """+1 when a larger value is better, -1 for losses."""
    return -1 if metric == "log_loss" else 1


def best_index(scores: Sequence[float], direction: int = 1) -> int | None:
    """Index of the best score (direction +1: highest, -1: lowest); ties go to the earliest, NaN never wins.
    None when every score is NaN (or there are none). Picks epochs and checkpoints by validation score."""
    finite = [(direction * score, -index) for index, score in enumerate(scores) if not math.isnan(score)]
    return -max(finite)[1] if finite else None


def check_metric(spec: LabelSpec, metric: str) -> None:
    """Raise an OoflineError when `metric` is unknown or does not apply to the task."""
    if _MAP_PATTERN.match(metric):
        if spec.task != "multiclass":
            raise OoflineError(f"metric {metric!r} needs a multiclass task, but the task is {spec.task}")
        if int(_MAP_PATTERN.match(metric).group(1)) < 1:
            raise OoflineError(f"metric {metric!r}: k must be at least 1")
        return
    if metric not in METRIC_NAMES:
        raise OoflineError(f"unknown metric {metric!r} (expected one of map@K, accuracy, log_loss, macro_f1, micro_f1, mean_f1)")


def task_scores(
    spec: LabelSpec,
    probs: np.ndarray,
    targets: np.ndarray,
    metric: str,
    thresholds: dict[str, float] | None = None,
) -> dict:
    """Score predictions with the task metric plus extras.

    probs, targets: (n_rows, n_columns) in `spec.probability_columns` order; targets are 0/1 (one-hot per
    multiclass head). Returns {"metric": name, "score": value, <metric name>: value, <extras>...}, where
    extras include accuracy, log_loss, macro/micro F1 and per-head F1 (`f1/<head>`).
    `macro_f1` and `mean_f1` both mean the mean over heads of each head's F1 (binary head: positive-class F1
    at its threshold; multiclass head: macro F1 over classes with argmax), which for multilabel is sklearn's
    macro F1 and for multiclass sklearn's macro F1 over classes.
    """
    check_metric(spec, metric)
    probs = _check_probs(probs, "probabilities")
    targets = _check_probs(targets, "targets")
    n_columns = len(spec.probability_columns)
    if probs.shape[1] != n_columns or targets.shape != probs.shape:
        raise OoflineError(
            f"probabilities {probs.shape} and targets {targets.shape} must both be (n_rows, {n_columns}) "
            f"in the label spec's column order"
        )
    predicted = hard_predictions(spec, probs, thresholds)
    truth = targets > 0.5
    head_f1, head_loss, head_accuracy = {}, {}, {}
    for head, columns in spec.head_slices():
        if head.type == "binary":
            t, p = truth[:, columns], predicted[:, columns].astype(bool)
            head_f1[head.name] = float(per_label_f1(t, p)[0])
            head_loss[head.name] = log_loss(t[:, 0].astype(np.int64), probs[:, columns])
            head_accuracy[head.name] = accuracy(t[:, 0], p[:, 0])
        else:
            true_index = targets[:, columns].argmax(axis=1)
            predicted_index = probs[:, columns].argmax(axis=1)
            head_f1[head.name] = multiclass_macro_f1(true_index, predicted_index)
            head_loss[head.name] = log_loss(true_index, probs[:, columns])
            head_accuracy[head.name] = accuracy(true_index, predicted_index)

    mean_head_f1 = float(np.mean(list(head_f1.values()))) if head_f1 else 0.0
    scores: dict = {
        "n_rows": int(probs.shape[0]),
        "mean_f1": mean_head_f1,
        "macro_f1": mean_head_f1,
        "micro_f1": micro_f1(truth, predicted.astype(bool)),
        "log_loss": float(np.mean(list(head_loss.values()))),
    }
    if spec.task == "multiclass":
        head, columns = spec.head_slices()[0]
        true_index = targets[:, columns].argmax(axis=1)
        scores["accuracy"] = head_accuracy[head.name]
        scores["map@3"] = map_at_k_from_probabilities(probs[:, columns], true_index, 3)
        match = _MAP_PATTERN.match(metric)
        if match:
            scores[metric] = map_at_k_from_probabilities(probs[:, columns], true_index, int(match.group(1)))
    else:
        scores["accuracy"] = accuracy(truth, predicted.astype(bool)) if spec.task == "multilabel" else float(
            np.mean(list(head_accuracy.values()))
        )
        for name, value in head_f1.items():
            scores[f"f1/{name}"] = value
    scores["metric"] = metric
    scores["score"] = scores[metric]
    return scores


def read_predictions(path, spec: LabelSpec, require_fold: bool = False):
    """Read an OOF/test prediction file: `id` (+ `fold`) and the spec's probability columns, unique ids.

    Returns the polars frame with the columns in spec order (id, [fold,] probability columns).
    """
    import polars as pl

    from workflow_scripts.io import read_table

    frame = read_table(path)
    needed = ["id"] + (["fold"] if require_fold else []) + spec.probability_columns
    missing = [column for column in needed if column not in frame.columns]
    if missing:
        raise OoflineError(f"{path}: missing columns {missing[:5]} (expected id{', fold' if require_fold else ''} "
                           f"and the label spec's probability columns)")
    if frame["id"].n_unique() != frame.height:
        raise OoflineError(f"{path}: column 'id' has duplicate values")
    probabilities = frame.select(spec.probability_columns)
    if any(probabilities[c].null_count() for c in spec.probability_columns):
        raise OoflineError(f"{path}: probability columns contain missing values")
    keep = ["id"] + (["fold"] if "fold" in frame.columns else [])
    return frame.select(keep + spec.probability_columns).with_columns(
        [pl.col(c).cast(pl.Float32) for c in spec.probability_columns]
    )


def aligned_targets(predictions, targets_path, spec: LabelSpec) -> np.ndarray:
    """0/1 targets (n_rows, n_columns) for the rows of `predictions`, matched on `id`, from a targets file.

    The targets file holds `id` plus the spec's probability columns as 0/1 (one-hot per multiclass head).
    """
    import polars as pl

    from workflow_scripts.io import read_table

    targets = read_table(targets_path)
    missing = [column for column in ["id"] + spec.probability_columns if column not in targets.columns]
    if missing:
        raise OoflineError(f"{targets_path}: missing target columns {missing[:5]}")
    if targets["id"].n_unique() != targets.height:
        raise OoflineError(f"{targets_path}: column 'id' has duplicate values")
    ids = predictions.select(pl.col("id").cast(targets["id"].dtype, strict=False))
    joined = ids.join(targets.select(["id"] + spec.probability_columns), on="id", how="left", maintain_order="left")
    unmatched = joined.filter(pl.col(spec.probability_columns[0]).is_null())["id"].to_list()
    if unmatched:
        raise OoflineError(f"{targets_path}: {len(unmatched)} prediction ids have no target row, e.g. {unmatched[:3]}")
    return joined.select(spec.probability_columns).to_numpy().astype(np.float32)


def fold_scores(spec: LabelSpec, probs: np.ndarray, targets: np.ndarray, folds: np.ndarray, metric: str,
                thresholds: dict[str, float] | None = None) -> dict:
    """The task metric overall and per fold, in the layout of results/scores/{model}.json.

    Returns {"metric", "score", "overall": task_scores(...), "folds": {fold: task_scores(...)}, "fold_mean",
    "fold_std"}. probs, targets: (n_rows, n_columns); folds: (n_rows,) int.
    """
    folds = np.asarray(folds)
    result = {"metric": metric, "overall": task_scores(spec, probs, targets, metric, thresholds), "folds": {}}
    for fold in sorted(set(folds.tolist())):
        rows = folds == fold
        result["folds"][str(fold)] = task_scores(spec, probs[rows], targets[rows], metric, thresholds)
    per_fold = [value["score"] for value in result["folds"].values()]
    result["score"] = result["overall"]["score"]
    result["fold_mean"] = float(np.mean(per_fold)) if per_fold else result["score"]
    result["fold_std"] = float(np.std(per_fold)) if per_fold else 0.0
    return result
