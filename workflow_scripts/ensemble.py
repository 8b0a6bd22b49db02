"""Blend several models' OOF and test predictions: weighted mean, rank mean, or weights searched on OOF.

`search` picks weights by coordinate ascent over the simplex to maximise the task metric. So the reported
score does not flatter the search, weights are also chosen with nested cross-validation: for each fold f,
weights are searched on the other folds and scored on f; score.json reports that out-of-sample score
(`score`, `out_of_sample_score`, and `overall`, `folds`, `fold_mean` of the same nested blend) beside the
in-sample numbers of the final weights (`in_sample_score` and the `in_sample` block).
The written test file uses the final weights (searched on all OOF rows); the written OOF is the nested blend
(each fold's rows with the weights searched without them), so whatever reads it downstream stays out of fold.
A search or stack over a searched or stacked ensemble is refused by config validation: its own folds would see
values fitted with those folds' labels. Thresholds on a search or stack refit it without each outer fold for their
nested score (thresholds.ensemble_refit calls build_ensemble on the other folds' rows).

`stack` fits a level-2 logistic regression per head (linear_heads) on the members' OOF log-probabilities. Its
OOF file is out of fold: each fold's rows are predicted by a level-2 model fitted on the other folds only,
and that is the score (`score`, `out_of_sample_score`); `in_sample_score` is the level-2 model fitted on
all OOF rows, scored on them. Test predictions come from that all-rows model.
"""
from __future__ import annotations

import argparse
import re
from typing import Callable, Sequence

import numpy as np
import polars as pl

from workflow_scripts import metrics
from workflow_scripts.errors import OoflineError, run_cli
from workflow_scripts.io import write_json, write_parquet
from workflow_scripts.labels import LabelSpec

METHODS = ("mean", "rank", "search", "stack")
BLENDS = ("mean", "rank")


# ---------------------------------------------------------------------------------------------- config

def check_ensemble_config(name: str, config: dict, known_models: Sequence[str]) -> dict:
    """Validate one `ensembles:` entry; returns {members: [...], weights: [...], method, blend, member_top_k}.

    `members` is a list of model names (equal weights) or a mapping model -> weight.
    """
    where = f"ensembles.{name}"
    if not isinstance(config, dict):
        raise OoflineError(f"{where}: expected a mapping with 'members'")
    unknown_keys = sorted(set(config) - {"members", "method", "blend", "member_top_k", "top_k", "metric", "C"})
    if unknown_keys:
        raise OoflineError(f"{where}: unknown keys {unknown_keys} (expected members, method, blend, member_top_k, "
                           f"top_k, metric, C)")
    members = config.get("members")
    if isinstance(members, dict):
        names, weights = list(members), list(members.values())
    elif isinstance(members, list):
        names, weights = list(members), [1.0] * len(members)
    else:
        raise OoflineError(f"{where}.members: expected a list of model names or a mapping model -> weight")
    if not names:
        raise OoflineError(f"{where}.members: is empty")
    missing = [member for member in names if member not in set(known_models)]
    if missing:
        raise OoflineError(f"{where}.members: unknown model(s) {missing} (known: {sorted(known_models)})")
    check_weights(names, weights, where + ".members")
    method = config.get("method", "mean")
    if method not in METHODS:
        raise OoflineError(f"{where}.method: {method!r} is unknown (expected one of {', '.join(METHODS)})")
    blend = config.get("blend", "mean")
    if blend not in BLENDS:
        raise OoflineError(f"{where}.blend: {blend!r} is unknown (expected mean or rank)")
    # a key its method does not read would be a silent no-op (and, as a rule param, a rerun for nothing)
    if "blend" in config and method not in ("search", "stack"):
        raise OoflineError(f"{where}.blend: a key of search and stack ensembles (this one's method is {method})")
    if "C" in config and method != "stack":
        raise OoflineError(f"{where}.C: a key of stack ensembles (this one's method is {method})")
    top_k = config.get("member_top_k")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise OoflineError(f"{where}.member_top_k: expected a positive integer, got {top_k!r}")
    return {"members": names, "weights": [float(w) for w in weights], "method": method, "blend": blend,
            "member_top_k": top_k}


def check_weights(names: Sequence[str], weights: Sequence[float], where: str = "--weights") -> np.ndarray:
    """Weights must be finite, non-negative, not all zero, one per member; returns them normalised to sum 1."""
    if len(weights) != len(names):
        raise OoflineError(f"{where}: {len(weights)} weights for {len(names)} members")
    values = []
    for name, weight in zip(names, weights):
        if isinstance(weight, bool) or not isinstance(weight, (int, float, np.floating)) or not np.isfinite(weight):
            raise OoflineError(f"{where}: weight of {name!r} must be a finite number, got {weight!r}")
        if weight < 0:
            raise OoflineError(f"{where}: weight of {name!r} is negative ({weight}); weights must be >= 0")
        values.append(float(weight))
    total = sum(values)
    if total <= 0:
        raise OoflineError(f"{where}: all weights are zero; at least one member needs a positive weight")
    return np.asarray(values, dtype=np.float64) / total


# ---------------------------------------------------------------------------------------------- members


def aligned_test_members(test_frames, names, columns, blend, member_top_k, spec):
    """(test ids, prepared member arrays) in member order, or (None, None) without test predictions."""
    if test_frames is None:
        return None, None
    missing = [name for name in names if name not in test_frames]
    if missing:
        raise OoflineError(f"test predictions missing for members {missing}")
    test_keys, test_members = align_members({n: test_frames[n] for n in names}, columns, "test")
    return test_keys, prepare(test_members, blend, member_top_k, spec)

def align_members(frames: dict[str, pl.DataFrame], columns: list[str], kind: str) -> tuple[pl.DataFrame, list[np.ndarray]]:
    """Check members list the same ids (and folds); return (id[/fold] frame, per-member (n, c) float32 arrays).

    Rows follow the first member's order.
    """
    names = list(frames)
    first = frames[names[0]]
    keys = ["id", "fold"] if kind == "oof" else ["id"]
    base = first.select([k for k in keys if k in first.columns])
    arrays = []
    for name in names:
        frame = frames[name]
        if frame.height != first.height or not frame["id"].sort().equals(first["id"].sort()):
            extra = frame.join(first, on="id", how="anti").height
            lacking = first.join(frame, on="id", how="anti").height
            raise OoflineError(
                f"{kind} predictions of member {name!r} list different ids than {names[0]!r} "
                f"({lacking} of its ids missing, {extra} extra)"
            )
        aligned = base.select("id").join(frame, on="id", how="left", maintain_order="left")
        if "fold" in base.columns:
            if "fold" not in aligned.columns:
                raise OoflineError(f"oof predictions of member {name!r} have no 'fold' column")
            if not aligned["fold"].equals(base["fold"]):
                raise OoflineError(f"oof predictions of member {name!r} put some ids in different folds than {names[0]!r}")
        arrays.append(aligned.select(columns).to_numpy().astype(np.float32))
    return base, arrays


def keep_top_k(probs: np.ndarray, k: int) -> np.ndarray:
    """Zero all but each row's k largest probabilities (the MAP write-up's per-model Top@k). (n, c)."""
    top = metrics.top_k_indices(probs, k)
    out = np.zeros_like(probs)
    rows = np.arange(probs.shape[0])[:, None]
    out[rows, top] = probs[rows, top]
    return out


def column_ranks(probs: np.ndarray) -> np.ndarray:
    """Per-column average ranks scaled to [0, 1] (ties share a rank). (n, c) float32."""
    n = probs.shape[0]
    if n <= 1:
        return np.full(probs.shape, 0.5, dtype=np.float32)
    # imported here: config validation imports this module on every snakemake start, scipy.stats costs ~1 s
    from scipy.stats import rankdata

    return ((rankdata(probs, axis=0, method="average") - 1.0) / (n - 1.0)).astype(np.float32)


def prepare(arrays: list[np.ndarray], blend: str, member_top_k: int | None, spec: LabelSpec) -> list[np.ndarray]:
    if member_top_k is not None:
        if spec.task != "multiclass":
            raise OoflineError("member_top_k applies to multiclass tasks only")
        arrays = [keep_top_k(a, member_top_k) for a in arrays]
    if blend == "rank":
        arrays = [column_ranks(a) for a in arrays]
    return arrays


def blend_arrays(arrays: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    """Weighted mean of member arrays (weights normalised to sum 1), accumulated in float64. (n, c) float32."""
    weights = np.asarray(weights, dtype=np.float64)
    weights = weights / weights.sum()
    total = np.zeros(arrays[0].shape, dtype=np.float64)
    for weight, array in zip(weights, arrays):
        if weight:
            total += weight * array
    return total.astype(np.float32)


# ---------------------------------------------------------------------------------------------- search

class _LinearBlend:
    """Running sum_m w_m * X_m, updated one member at a time (a trial costs one axpy, not a full re-blend).

    trial() writes into a spare buffer; commit() swaps it in, so the search loop allocates nothing.
    """

    def __init__(self, parts: list[np.ndarray], weights: np.ndarray):
        self.parts = parts
        self.current = np.zeros(parts[0].shape, dtype=np.float32)
        for weight, part in zip(weights, parts):
            if weight:
                self.current += np.float32(weight) * part
        self.spare = np.empty_like(self.current)

    def trial(self, member: int, delta: float) -> np.ndarray:
        np.multiply(self.parts[member], np.float32(delta), out=self.spare)
        self.spare += self.current
        return self.spare

    def commit(self) -> None:
        self.current, self.spare = self.spare, self.current


def _rank_objective_factory(k: int, members: list[np.ndarray], true_index: np.ndarray):
    """Exact MAP@k (accuracy: k = 1) objectives on the (row, class) pairs whose order can change with the weights.

    Under convex weights a class beats the true class always if it does so in every member, never if it does
    so in no member; only the pairs in between are kept (rows whose always-ahead classes already push the true
    class out of the top k are constant too). Blended values that tie exactly count as not ahead, unless every
    member ties (then the lower class index ranks first, as in metrics.true_class_rank).
    The pairs are found once; returns make(rows) -> (parts, score_fn) for a row subset, or None when the pairs
    are not much fewer than the full matrix.
    """
    n_rows, n_classes = members[0].shape
    index = np.arange(n_rows)
    true_values = [m[index, true_index] for m in members]
    most_ahead = least_ahead = None
    for member, true_value in zip(members, true_values):
        ahead = member - true_value[:, None]
        most_ahead = ahead if most_ahead is None else np.maximum(most_ahead, ahead, out=most_ahead)
        least_ahead = ahead.copy() if least_ahead is None else np.minimum(least_ahead, ahead, out=least_ahead)
    most_ahead[index, true_index] = -1.0  # the true class never competes with itself
    least_ahead[index, true_index] = -1.0
    always_tied_before = (most_ahead == 0) & (least_ahead == 0) & (np.arange(n_classes)[None, :] < true_index[:, None])
    base_rank = (least_ahead > 0).sum(axis=1) + always_tied_before.sum(axis=1)
    contested = (most_ahead > 0) & (least_ahead <= 0) & (base_rank < k)[:, None]
    del most_ahead, least_ahead, always_tied_before
    if contested.sum() > 0.5 * contested.size:
        return None
    all_pair_rows, pair_cols = np.nonzero(contested)  # row-major: the pairs of a row are contiguous
    del contested
    all_parts = [m[all_pair_rows, pair_cols] - tv[all_pair_rows] for m, tv in zip(members, true_values)]
    value_of_rank = np.where(np.arange(n_classes + 1) < k, 1.0 / (np.arange(n_classes + 1) + 1.0), 0.0)

    def make(rows: np.ndarray):
        selected = rows[all_pair_rows]
        pair_rows = all_pair_rows[selected]
        parts = [np.ascontiguousarray(p[selected]) for p in all_parts]
        live_rows, starts = np.unique(pair_rows, return_index=True)
        constant_rows = rows.copy()
        constant_rows[live_rows] = False
        constant_total = float(value_of_rank[np.minimum(base_rank[constant_rows], n_classes)].sum())
        live_base = base_rank[live_rows]
        n_selected = max(int(rows.sum()), 1)
        is_ahead = np.empty(pair_rows.size, dtype=bool)
        row_ends = np.append(starts[1:] - 1, pair_rows.size - 1)

        def score(diff: np.ndarray, total_weight: float) -> float:
            if live_rows.size == 0:
                return constant_total / n_selected
            np.greater(diff, 0, out=is_ahead)
            # pairs ahead per live row: a running count read at each row's last pair (faster than reduceat)
            ahead = np.cumsum(is_ahead.view(np.uint8), dtype=np.int32)[row_ends]
            ahead[1:] -= ahead[:-1].copy()
            return (constant_total + float(value_of_rank[np.minimum(live_base + ahead, n_classes)].sum())) / n_selected

        return parts, score

    return make


def objective_factory(spec: LabelSpec, metric: str, members: list[np.ndarray], targets: np.ndarray):
    """make(rows) -> (parts, score_fn): the metric to maximise on a row subset, score_fn(blend_sum, total_weight).

    MAP@k and accuracy of multiclass tasks use the compact pair objective; other metrics re-score the blend.
    """
    match = re.match(r"^map@(\d+)$", metric)
    if spec.task == "multiclass" and (match or metric == "accuracy"):
        k = int(match.group(1)) if match else 1
        true_index = targets.argmax(axis=1)
        compact = _rank_objective_factory(k, members, true_index)
        if compact is not None:
            return compact

        def make_dense(rows: np.ndarray):
            true_rows = true_index[rows]
            return [m[rows] for m in members], lambda blend, total: metrics.map_at_k_from_probabilities(blend, true_rows, k)

        return make_dense
    direction = metrics.metric_direction(metric)

    def make_generic(rows: np.ndarray):
        target_rows = targets[rows]

        def generic(blend: np.ndarray, total_weight: float) -> float:
            return direction * metrics.task_scores(spec, blend / total_weight, target_rows, metric)["score"]

        return [m[rows] for m in members], generic

    return make_generic


def coordinate_ascent(parts: list[np.ndarray], score_fn: Callable[[np.ndarray, float], float],
                      initial: np.ndarray, max_sweeps: int = 3, steps: Sequence[float] = (1.0, 0.5, 0.25, 0.125),
                      min_gain: float = 1e-5) -> tuple[np.ndarray, float, int]:
    """Maximise score_fn over non-negative weights by moving one weight at a time.

    Steps are multiples of 1/n_members, halved whenever a sweep finds no gain above `min_gain` (smaller gains
    are mostly noise of the OOF rows). Returns (weights summing to 1, best score, evaluations).
    Deterministic: members are tried in order, +step before -step.
    """
    weights = np.asarray(initial, dtype=np.float64) / np.sum(initial)
    blend = _LinearBlend(parts, weights)
    best = score_fn(blend.current, float(weights.sum()))
    evaluations, base = 1, 1.0 / len(parts)
    for step in steps:
        for _ in range(max_sweeps):
            improved = False
            for member in range(len(parts)):
                for delta in (step * base, -step * base):
                    new_weight = max(0.0, weights[member] + delta)
                    change = new_weight - weights[member]
                    total = float(weights.sum() + change)
                    if change == 0.0 or total <= 1e-12:
                        continue
                    trial = blend.trial(member, change)
                    value = score_fn(trial, total)
                    evaluations += 1
                    if value > best + min_gain:
                        blend.commit()
                        best, weights[member] = value, new_weight
                        improved = True
                        break
            if not improved:
                break
    return weights / weights.sum(), best, evaluations


def search_weights(spec: LabelSpec, metric: str, members: list[np.ndarray], targets: np.ndarray,
                   rows: np.ndarray | None = None, initial: np.ndarray | None = None, make=None
                   ) -> tuple[np.ndarray, int]:
    """Weights (summing to 1) maximising the task metric on `rows` of the OOF members. Returns (weights, evals).

    members: list of (n_rows, n_columns) float32; targets: (n_rows, n_columns) 0/1; `make` from objective_factory.
    """
    rows = np.ones(targets.shape[0], dtype=bool) if rows is None else rows
    initial = np.ones(len(members)) if initial is None else initial
    make = make or objective_factory(spec, metric, members, targets)
    parts, score_fn = make(rows)
    weights, _, evaluations = coordinate_ascent(parts, score_fn, initial)
    return weights, evaluations


def nested_search(spec: LabelSpec, metric: str, members: list[np.ndarray], targets: np.ndarray, folds: np.ndarray,
                  initial: np.ndarray | None = None, log: Callable[[str], None] = lambda line: None, make=None) -> dict:
    """For each fold f: weights searched on the other folds, scored on f. Returns per-fold weights and scores."""
    fold_values = sorted(set(np.asarray(folds).tolist()))
    if len(fold_values) < 2:
        raise OoflineError("nested weight search needs OOF rows from at least 2 folds")
    make = make or objective_factory(spec, metric, members, targets)
    out_of_sample = np.zeros(targets.shape, dtype=np.float32)
    weights_per_fold, score_per_fold = {}, {}
    for fold in fold_values:
        held_out = folds == fold
        weights, evaluations = search_weights(spec, metric, members, targets, ~held_out, initial, make)
        out_of_sample[held_out] = blend_arrays([m[held_out] for m in members], weights)
        weights_per_fold[str(fold)] = weights.tolist()
        score_per_fold[str(fold)] = metrics.task_scores(spec, out_of_sample[held_out], targets[held_out], metric)["score"]
        log(f"ensemble: nested fold {fold}: {evaluations} evaluations, held-out {metric} {score_per_fold[str(fold)]:.5f}")
    overall = metrics.task_scores(spec, out_of_sample, targets, metric)["score"]
    return {"score": overall, "folds": score_per_fold, "weights": weights_per_fold,
            "fold_mean": float(np.mean(list(score_per_fold.values()))),
            "fold_std": float(np.std(list(score_per_fold.values()))), "blend": out_of_sample}


STACK_FLOOR = 1e-6


def stack_features(members: list[np.ndarray]) -> np.ndarray:
    """The level-2 inputs: log of every member's probability columns side by side, (n_rows, n_members * n_columns).

    Logs, not probabilities: a level-2 logistic regression on log-probabilities can reproduce a member
    (and sharpen or blend it) with small coefficients, where raw probabilities in [0, 1] need large ones.
    """
    return np.log(np.clip(np.concatenate(members, axis=1).astype(np.float64), STACK_FLOOR, 1.0))


def nested_stack(spec: LabelSpec, members: list[np.ndarray], targets: np.ndarray, folds: np.ndarray, c: float,
                 seed: int = 0, log: Callable[[str], None] = lambda line: None) -> np.ndarray:
    """Out-of-fold level-2 probabilities: fold f's rows predicted by heads fitted on the other folds only."""
    from workflow_scripts.linear_heads import fit_heads, predict_heads

    fold_values = sorted(set(np.asarray(folds).tolist()))
    if len(fold_values) < 2:
        raise OoflineError("stacking needs OOF rows from at least 2 folds")
    features = stack_features(members)
    out_of_fold = np.zeros(targets.shape, dtype=np.float32)
    for fold in fold_values:
        held_out = folds == fold
        heads = fit_heads(spec, features[~held_out], targets[~held_out], c=c, seed=seed)
        out_of_fold[held_out] = predict_heads(spec, heads, features[held_out])
        log(f"ensemble: stack fold {fold}: level 2 fitted on {int((~held_out).sum())} rows of the other folds")
    return out_of_fold


def build_stack(spec: LabelSpec, names: list[str], oof_members: list[np.ndarray], test_members: list[np.ndarray] | None,
                targets: np.ndarray, folds: np.ndarray, metric: str, c: float = 1.0,
                log: Callable[[str], None] = lambda line: None) -> tuple[np.ndarray, np.ndarray | None, dict, dict]:
    """(out-of-fold OOF probabilities, test probabilities, weights record, score record) of a stack."""
    from workflow_scripts.linear_heads import fit_heads, predict_heads

    out_of_fold = nested_stack(spec, oof_members, targets, folds, c, log=log)
    final = fit_heads(spec, stack_features(oof_members), targets, c=c, seed=0)
    in_sample = metrics.fold_scores(spec, predict_heads(spec, final, stack_features(oof_members)), targets, folds,
                                    metric)
    nested = metrics.fold_scores(spec, out_of_fold, targets, folds, metric)
    score = dict(nested)
    score.update({
        "method": "stack", "members": names, "C": c,
        "scores_of": "out-of-fold level 2 (each fold's rows predicted by a level 2 fitted on the other folds)",
        "in_sample": {key: in_sample[key] for key in ("score", "overall", "folds", "fold_mean", "fold_std")},
        "member_scores": {n: metrics.task_scores(spec, m, targets, metric)["score"] for n, m in zip(names, oof_members)},
        "in_sample_score": in_sample["score"], "out_of_sample_score": nested["score"],
        "in_sample_fold_mean": in_sample["fold_mean"], "in_sample_fold_std": in_sample["fold_std"],
        "nested": {"score": nested["score"], "folds": {f: v["score"] for f, v in nested["folds"].items()},
                   "fold_mean": nested["fold_mean"], "fold_std": nested["fold_std"]},
    })
    # level-2 coefficients per head: which member's which column it leans on
    inputs = [f"{name}:{column}" for name in names for column in spec.probability_columns]
    weight_record = {
        "method": "stack", "members": names, "C": c, "inputs": inputs,
        "heads": {head.name: {"classes": [head.columns(spec.task)[k] for k in fitted.classes] if head.type != "binary"
                              else [head.name],
                              "coef": fitted.coef.tolist() if fitted.coef is not None else None,
                              "intercept": fitted.intercept.tolist() if fitted.intercept is not None else None,
                              "constant": fitted.constant}
                  for (head, _), fitted in zip(spec.head_slices(), final)},
    }
    # from the record, as a Kaggle package predicts: what weights.json says is what the test file holds
    test = predict_heads(spec, stack_heads(spec, weight_record), stack_features(test_members)) \
        if test_members is not None else None
    return out_of_fold, test, weight_record, score


def stack_heads(spec: LabelSpec, weight_record: dict) -> list:
    """The level-2 heads a stack's weights.json records, as linear_heads.FittedHead (float32 as fitted)."""
    from workflow_scripts.linear_heads import FittedHead

    heads = []
    for head, _ in spec.head_slices():
        saved = weight_record["heads"].get(head.name)
        if saved is None:
            raise OoflineError(f"stack weights record: no level-2 head {head.name!r} (heads: {sorted(weight_record['heads'])})")
        if head.type == "binary":
            classes = [0, 1] if saved["coef"] is not None else [int(saved["constant"][0])]
        else:
            names = head.columns(spec.task)
            classes = [names.index(name) for name in saved["classes"]]
        coef = np.asarray(saved["coef"], dtype=np.float32) if saved["coef"] is not None else None
        intercept = np.asarray(saved["intercept"], dtype=np.float32) if saved["intercept"] is not None else None
        heads.append(FittedHead(head.name, head.type, classes, coef, intercept, saved["constant"]))
    return heads


def ensemble_test_predictions(spec: LabelSpec, weight_record: dict, members: list[np.ndarray]) -> np.ndarray:
    """An ensemble's test probabilities (n_rows, n_columns) float32 from its weights.json record and its members'
    test probabilities (in the record's member order): the workflow's test file and a Kaggle package both
    come from here."""
    if len(members) != len(weight_record["members"]):
        raise OoflineError(f"ensemble weights record lists {len(weight_record['members'])} members, "
                           f"{len(members)} test predictions given")
    prepared = prepare(members, weight_record["blend"], weight_record.get("member_top_k"), spec)
    if weight_record["method"] == "stack":
        from workflow_scripts.linear_heads import predict_heads

        return predict_heads(spec, stack_heads(spec, weight_record), stack_features(prepared))
    weights = np.asarray([weight_record["weights"][name] for name in weight_record["members"]], dtype=np.float64)
    return blend_arrays(prepared, weights)


# ---------------------------------------------------------------------------------------------- core

def build_ensemble(
    spec: LabelSpec,
    names: list[str],
    oof_frames: dict[str, pl.DataFrame],
    test_frames: dict[str, pl.DataFrame] | None,
    targets: np.ndarray,
    metric: str,
    method: str = "mean",
    weights: Sequence[float] | None = None,
    blend: str = "mean",
    member_top_k: int | None = None,
    log: Callable[[str], None] = lambda line: None,
    stack_c: float = 1.0,
) -> tuple[pl.DataFrame, pl.DataFrame | None, dict, dict]:
    """Blend members; returns (oof frame, test frame or None, weights record, score record).

    targets: (n_oof_rows, n_columns) 0/1 in the first member's row order. method `rank` is `mean` over ranks.
    """
    if method not in METHODS:
        raise OoflineError(f"--method {method!r} is unknown (expected one of {', '.join(METHODS)})")
    if len(set(names)) != len(names):
        raise OoflineError(f"--names lists a member twice: {names}")
    metrics.check_metric(spec, metric)
    given = check_weights(names, list(weights) if weights is not None else [1.0] * len(names))
    blend = "rank" if method == "rank" else blend
    columns = spec.probability_columns
    oof_keys, oof_members = align_members(oof_frames, columns, "oof")
    if "fold" not in oof_keys.columns:
        raise OoflineError(f"oof predictions of member {names[0]!r} have no 'fold' column")
    folds = oof_keys["fold"].to_numpy()
    oof_members = prepare(oof_members, blend, member_top_k, spec)
    member_scores = {name: metrics.task_scores(spec, m, targets, metric)["score"] for name, m in zip(names, oof_members)}
    if method == "stack":
        oof_stack, _, weight_record, score = build_stack(spec, names, oof_members, None, targets, folds, metric,
                                                         stack_c, log)
        score["blend"] = blend
        weight_record.update({"blend": blend, "member_top_k": member_top_k})
        test_out = None
        if test_frames is not None:
            test_keys, test_members = aligned_test_members(test_frames, names, columns, "mean", None, spec)
            test_out = test_keys.select("id").hstack(
                pl.DataFrame(ensemble_test_predictions(spec, weight_record, test_members), schema=columns))
        return oof_keys.hstack(pl.DataFrame(oof_stack, schema=columns)), test_out, weight_record, score

    nested = None
    final = given
    if method == "search":
        make = objective_factory(spec, metric, oof_members, targets)
        nested = nested_search(spec, metric, oof_members, targets, folds, given, log, make)
        nested_blend = nested.pop("blend")
        final, evaluations = search_weights(spec, metric, oof_members, targets, initial=given, make=make)
        log(f"ensemble: final search on all folds: {evaluations} evaluations")
    oof_blend = blend_arrays(oof_members, final)
    in_sample = metrics.fold_scores(spec, oof_blend, targets, folds, metric)
    # the top-level blocks (score, overall, folds, fold_mean) all describe one set of predictions, the OOF file
    # written: for a search that is the nested blend; the final weights' in-sample numbers sit under `in_sample`
    score = dict(metrics.fold_scores(spec, nested_blend, targets, folds, metric) if nested else in_sample)
    score.update({
        "method": method,
        "blend": blend,
        "members": names,
        "weights": dict(zip(names, final.tolist())),
        "member_scores": member_scores,
        "in_sample_score": in_sample["score"],
        # weights fixed by the user were not fitted on these rows, so in-sample is out-of-sample for them
        "out_of_sample_score": score["score"],
        "nested": nested,
        "scores_of": "nested blend (each fold's weights searched on the other folds)" if nested else "the blend",
    })
    score["in_sample_fold_mean"], score["in_sample_fold_std"] = in_sample["fold_mean"], in_sample["fold_std"]
    if nested:
        score["in_sample"] = {key: in_sample[key] for key in ("score", "overall", "folds", "fold_mean", "fold_std")}
    weight_record = {
        "method": method,
        "blend": blend,
        "member_top_k": member_top_k,
        "members": names,
        "given_weights": dict(zip(names, given.tolist())),
        "weights": dict(zip(names, final.tolist())),
        "nested_weights": ({fold: dict(zip(names, w)) for fold, w in nested["weights"].items()} if nested else None),
    }
    # what downstream steps read must be out of fold: a searched ensemble's rows carry their own fold's nested
    # weights (fitted without that fold's labels), never the final weights fitted on every row
    oof_out = oof_keys.hstack(pl.DataFrame(nested_blend if nested else oof_blend, schema=columns))
    test_out = None
    if test_frames is not None:
        test_keys, test_members = aligned_test_members(test_frames, names, columns, "mean", None, spec)
        test_out = test_keys.select("id").hstack(
            pl.DataFrame(ensemble_test_predictions(spec, weight_record, test_members), schema=columns))
    return oof_out, test_out, weight_record, score


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", nargs="+", required=True, help="member names, in the order of --oof/--test")
    parser.add_argument("--oof", nargs="+", required=True, help="member OOF parquets (id, fold, probability columns)")
    parser.add_argument("--test", nargs="*", default=None, help="member test parquets (id, probability columns)")
    parser.add_argument("--weights", nargs="*", type=float, default=None, help="member weights (default equal)")
    parser.add_argument("--method", default="mean", choices=METHODS)
    parser.add_argument("--blend", default="mean", choices=BLENDS, help="search: blend probabilities or ranks")
    parser.add_argument("--member-top-k", type=int, default=None, help="keep each member's top k classes per row")
    parser.add_argument("--stack-c", type=float, default=1.0, help="stack: level-2 logistic regression C")
    parser.add_argument("--labels", required=True, help="label spec JSON")
    parser.add_argument("--targets", required=True, help="targets parquet: id + probability columns as 0/1")
    parser.add_argument("--metric", required=True)
    parser.add_argument("--folds", default=None, help="folds parquet: records the prior's score on the OOF rows")
    parser.add_argument("--name", default="", help="ensemble name, recorded in score.json")
    parser.add_argument("--oof-out", required=True)
    parser.add_argument("--test-out", default=None)
    parser.add_argument("--weights-out", required=True)
    parser.add_argument("--score-out", required=True)
    args = parser.parse_args(argv)

    if len(args.oof) != len(args.names):
        raise OoflineError(f"--oof: {len(args.oof)} files for {len(args.names)} --names")
    if args.test is not None and len(args.test) != len(args.names):
        raise OoflineError(f"--test: {len(args.test)} files for {len(args.names)} --names")
    if bool(args.test) != bool(args.test_out):
        raise OoflineError("--test and --test-out go together")
    spec = LabelSpec.load(args.labels)
    oof_frames = {name: metrics.read_predictions(path, spec, require_fold=True) for name, path in zip(args.names, args.oof)}
    test_frames = ({name: metrics.read_predictions(path, spec) for name, path in zip(args.names, args.test)}
                   if args.test else None)
    targets = metrics.aligned_targets(oof_frames[args.names[0]], args.targets, spec)
    print(f"ensemble {args.name}: {len(args.names)} members, {targets.shape[0]} OOF rows, method {args.method}",
          flush=True)
    oof, test, weights, score = build_ensemble(
        spec, args.names, oof_frames, test_frames, targets, args.metric, args.method, args.weights, args.blend,
        args.member_top_k, log=lambda line: print(line, flush=True), stack_c=args.stack_c,
    )
    score["ensemble"] = args.name
    if args.folds:  # members over some folds only: compared with the prior on the same rows
        from workflow_scripts.io import read_table
        from workflow_scripts.prior import prior_score_on_rows

        score["prior_score"] = prior_score_on_rows(spec, read_table(args.folds), args.targets, oof["id"], args.metric)
    write_parquet(oof, args.oof_out)
    if test is not None:
        write_parquet(test, args.test_out)
    write_json(weights, args.weights_out)
    write_json(score, args.score_out)
    print(f"ensemble {args.name}: {args.metric} in-sample {score['in_sample_score']:.5f}, "
          f"out-of-sample {score['out_of_sample_score']:.5f}"
          + ("; weights " + ", ".join(f"{n}={w:.3f}" for n, w in score["weights"].items()) if "weights" in score else ""),
          flush=True)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
