"""Per-class decision thresholds for binary columns (multilabel labels, binary heads of multihead tasks).

Methods, per binary column:
- `exact`: the threshold maximising OOF F1, found exactly by sorting the scores (every distinct threshold);
  `grid` is accepted as its former name (it never was a grid search);
- `class_balance`: the threshold whose predicted positive rate is closest to a target rate r* (training
  prior by default; or rates from config; or leaderboard-probe F1 of an all-ones submission, r* = F1/(2-F1));
- `hybrid`: `weight * exact + (1 - weight) * class_balance`.
A column with no positive in OOF gets a threshold above every score (it predicts none) and `predicts_none`.
Multiclass heads always use argmax and get no threshold. A column is positive when `probability >= threshold`;
chosen thresholds sit midway between neighbouring distinct scores so they do not sit on an OOF score.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import polars as pl

from workflow_scripts import metrics
from workflow_scripts.errors import OoflineError, run_cli
from workflow_scripts.io import write_json, write_parquet
from workflow_scripts.labels import LabelSpec

METHODS = ("exact", "class_balance", "hybrid")
METHOD_ALIASES = {"grid": "exact"}  # configs written before the rename keep working
CURVE_POINTS = 200


def f1_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """F1 and positive rate at every distinct threshold, exactly, in O(n log n).

    scores: (n,) float; labels: (n,) 0/1. Returns (thresholds, f1, positive_rate), thresholds falling; the
    threshold for a distinct score s is the midpoint between s and the next lower distinct score (the lowest
    distinct score itself for the last), so `scores >= threshold` selects exactly the scores >= s.
    """
    scores = np.asarray(scores)
    if scores.dtype not in (np.float32, np.float64):
        scores = scores.astype(np.float64)
    labels = np.asarray(labels).astype(bool)
    n = scores.shape[0]
    if n == 0:
        raise OoflineError("threshold search needs at least one OOF row")
    # equal scores end up in one run whose end is all that is read, so an unstable sort is fine
    order = np.argsort(scores)[::-1]
    sorted_scores, sorted_labels = scores[order].astype(np.float64), labels[order]
    true_positives = np.cumsum(sorted_labels)
    # last index of each run of equal scores: predicting ">= that score" includes the whole run
    run_end = np.flatnonzero(np.append(sorted_scores[1:] != sorted_scores[:-1], True))
    tp = true_positives[run_end].astype(np.float64)
    predicted_positive = (run_end + 1).astype(np.float64)
    positives = float(true_positives[-1])
    denominator = predicted_positive + positives  # 2tp + fp + fn = (tp + fp) + (tp + fn)
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    distinct = sorted_scores[run_end]
    thresholds = np.append((distinct[:-1] + distinct[1:]) / 2.0, distinct[-1])
    return thresholds, f1, predicted_positive / n


def f1_at(scores: np.ndarray, labels: np.ndarray, threshold: float) -> float:
    """F1 of the positive class when predicting `scores >= threshold`."""
    predicted = np.asarray(scores, dtype=np.float64) >= threshold
    labels = np.asarray(labels).astype(bool)
    return float(metrics.per_label_f1(labels[:, None], predicted[:, None])[0])


def best_f1_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(threshold, F1) maximising F1 exactly; among equal F1 the threshold closest to 0.5 wins."""
    thresholds, f1, _ = f1_curve(scores, labels)
    best = np.flatnonzero(f1 == f1.max())
    chosen = best[np.argmin(np.abs(thresholds[best] - 0.5))]
    return float(thresholds[chosen]), float(f1[chosen])


def class_balance_threshold(scores: np.ndarray, target_rate: float) -> float:
    """Threshold whose predicted positive rate is closest to `target_rate` (ties: the higher threshold)."""
    if not 0.0 <= target_rate <= 1.0:
        raise OoflineError(f"target positive rate must lie in [0, 1], got {target_rate}")
    thresholds, _, rate = f1_curve(scores, np.zeros(len(scores), dtype=bool))
    return float(thresholds[np.argmin(np.abs(rate - target_rate))])


def rate_from_probe_f1(f1: float) -> float:
    """Positive rate implied by the F1 of an all-ones submission: F1 = 2r/(1+r), so r = F1/(2-F1)."""
    if not 0.0 <= f1 <= 1.0:
        raise OoflineError(f"probe F1 must lie in [0, 1], got {f1}")
    return f1 / (2.0 - f1)


def _check_keys(values: dict | None, spec: LabelSpec, option: str) -> dict:
    values = dict(values or {})
    unknown = sorted(set(values) - set(spec.binary_columns))
    if unknown:
        raise OoflineError(f"{option}: {unknown[:5]} are not binary columns of the task "
                           f"(expected some of {spec.binary_columns[:10]})")
    for key, value in values.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
            raise OoflineError(f"{option}: value for {key!r} must be a number in [0, 1], got {value!r}")
    return values


def search_thresholds(
    spec: LabelSpec,
    probs: np.ndarray,
    targets: np.ndarray,
    method: str = "hybrid",
    weight: float = 0.5,
    target_rates: dict[str, float] | None = None,
    probe_f1: dict[str, float] | None = None,
    metric: str | None = None,
) -> dict:
    """Thresholds for every binary column plus OOF F1 before (0.5) and after.

    probs, targets: (n_rows, n_columns) in spec column order. Rates: `target_rates` beat `probe_f1`, which beat
    the prior. Returns a JSON-ready dict with `thresholds` ({column: value}) and per-column `classes` details.
    """
    method = METHOD_ALIASES.get(method, method)
    if method not in METHODS:
        raise OoflineError(f"--method {method!r} is unknown (expected one of {', '.join(METHODS)})")
    if not 0.0 <= weight <= 1.0:
        raise OoflineError(f"--weight must lie in [0, 1], got {weight}")
    target_rates = _check_keys(target_rates, spec, "target rates")
    probe_f1 = _check_keys(probe_f1, spec, "probe F1")
    metric = metric or ("mean_f1" if spec.task == "multihead" else "macro_f1")
    columns = spec.probability_columns
    classes, chosen = {}, {}
    for name in spec.binary_columns:
        j = columns.index(name)
        # float64 throughout, as metrics.hard_predictions applies the thresholds
        scores, labels = probs[:, j].astype(np.float64), targets[:, j] > 0.5
        exact, exact_f1 = best_f1_threshold(scores, labels)
        if name in target_rates:
            rate, source = float(target_rates[name]), "config"
        elif name in probe_f1:
            rate, source = rate_from_probe_f1(float(probe_f1[name])), "probe_f1"
        else:
            rate, source = float(labels.mean()), "prior"
        balance = class_balance_threshold(scores, rate)
        hybrid = weight * exact + (1.0 - weight) * balance
        threshold = {"exact": exact, "class_balance": balance, "hybrid": hybrid}[method]
        predicts_none = not labels.any()
        if predicts_none:
            # every threshold scores F1 0 here, and any of them would flag rows the OOF never calls positive
            threshold = float(np.nextafter(max(float(scores.max()), 1.0), np.inf))
        chosen[name] = threshold
        classes[name] = {
            "method": method,
            "threshold": threshold,
            "exact": exact,
            "class_balance": balance,
            "hybrid": hybrid,
            "target_rate": rate,
            "target_rate_source": source,
            "positive_rate_after": float((scores >= threshold).mean()),
            "f1_before": f1_at(scores, labels, 0.5),
            "f1_after": f1_at(scores, labels, threshold),
            "f1_exact": exact_f1,
            "predicts_none": predicts_none,
        }
        if predicts_none:
            classes[name]["note"] = "no positive in OOF: threshold above every score, the column predicts none"
    before = metrics.task_scores(spec, probs, targets, metric)
    after = metrics.task_scores(spec, probs, targets, metric, chosen)
    return {
        "method": method,
        "weight": weight,
        "metric": metric,
        "thresholds": chosen,
        "classes": classes,
        "argmax_heads": [head.name for head in spec.heads if head.type == "multiclass"],
        "oof_score_before": before["score"],
        "oof_score_after": after["score"],
        "n_rows": int(probs.shape[0]),
    }


def nested_threshold_score(spec: LabelSpec, probs: np.ndarray, targets: np.ndarray, folds: np.ndarray,
                           refit: Callable[[np.ndarray], np.ndarray] | None = None, **options) -> dict:
    """Out-of-fold check of the tuning: thresholds searched on folds != f and applied to fold f.

    `refit(rows)` gives the probabilities of `rows` (a boolean mask over all rows) rebuilt from those rows alone:
    for a `search` or `stack` ensemble the OOF of its other folds was fitted with fold f's labels, so the
    thresholds for fold f are searched on the ensemble refitted without fold f (its own nested OOF there), while
    fold f keeps its OOF rows (already fitted without it). Without `refit` the OOF rows are used as they are.
    Returns {"score": task metric over all rows with each fold's own thresholds, "folds": {f: score},
    "thresholds": {f: {column: threshold}}}; compare it with `oof_score_after`, which tunes and scores on the same
    rows.
    """
    folds = np.asarray(folds)
    fold_values = sorted(set(folds.tolist()))
    if len(fold_values) < 2:
        return {"score": None, "folds": {}}
    if refit is not None and len(fold_values) < 3:
        return {"score": None, "folds": {}, "note": "a refitted ensemble needs 3 folds: 2 left to refit on"}
    predicted = np.zeros(probs.shape, dtype=np.int8)
    per_fold, per_fold_thresholds = {}, {}
    for fold in fold_values:
        held_out = folds == fold
        inner_probs = refit(~held_out) if refit is not None else probs[~held_out]
        inner = search_thresholds(spec, inner_probs, targets[~held_out], **options)
        predicted[held_out] = metrics.hard_predictions(spec, probs[held_out], inner["thresholds"])
        per_fold[str(fold)] = metrics.task_scores(spec, probs[held_out], targets[held_out], inner["metric"],
                                                  inner["thresholds"])["score"]
        per_fold_thresholds[str(fold)] = inner["thresholds"]
    # score the assembled predictions: hard 0/1 columns scored at threshold 0.5 give the same F1s
    metric = options.get("metric") or ("mean_f1" if spec.task == "multihead" else "macro_f1")
    binary = [spec.probability_columns.index(c) for c in spec.binary_columns]
    assembled = probs.astype(np.float64).copy()
    assembled[:, binary] = predicted[:, binary]
    return {"score": metrics.task_scores(spec, assembled, targets, metric)["score"], "folds": per_fold,
            "thresholds": per_fold_thresholds}


def ensemble_refit(spec: LabelSpec, ids: pl.Series, member_oof: Sequence[str], targets: np.ndarray, settings: dict,
                   metric: str | None) -> Callable[[np.ndarray], np.ndarray]:
    """refit(rows): the ensemble's nested OOF rebuilt from `rows` alone (a mask over `ids`), in `ids` order.

    targets: (len(ids), n_columns) 0/1 aligned with `ids`; settings: the ensemble's names, weights, method, blend,
    member_top_k and C as the ensemble step got them."""
    from workflow_scripts.ensemble import build_ensemble

    names = list(settings["names"])
    if len(member_oof) != len(names):
        raise OoflineError(f"--member-oof: {len(member_oof)} files for the {len(names)} members in --refit")
    frames = {name: metrics.read_predictions(path, spec, require_fold=True) for name, path in zip(names, member_oof)}
    for name, path in zip(names, member_oof):
        if frames[name].height != len(ids) or not frames[name]["id"].is_in(ids.implode()).all():
            raise OoflineError(f"{path}: member {name!r} lists other ids than the ensemble OOF it refits")
    metric = metric or ("mean_f1" if spec.task == "multihead" else "macro_f1")

    def refit(rows: np.ndarray) -> np.ndarray:
        kept = pl.DataFrame({"id": ids.filter(pl.Series(rows))})
        subset = {name: kept.join(frame, on="id", how="left", maintain_order="left") for name, frame in frames.items()}
        rebuilt, _, _, _ = build_ensemble(spec, names, subset, None, targets[rows], metric, settings["method"],
                                          settings.get("weights"), settings.get("blend", "mean"),
                                          settings.get("member_top_k"), stack_c=float(settings.get("C", 1.0)))
        return kept.join(rebuilt, on="id", how="left", maintain_order="left").select(
            spec.probability_columns).to_numpy()

    return refit


def threshold_curves(spec: LabelSpec, probs: np.ndarray, targets: np.ndarray, result: dict) -> pl.DataFrame:
    """F1 and positive rate vs threshold per binary column, <= 200 points each, for plots.

    Columns: column, threshold, f1, positive_rate, kind ("curve" or the method whose threshold the point marks).
    """
    rows = []
    marks = METHODS
    grid_points = np.linspace(0.0, 1.0, CURVE_POINTS - len(marks))
    columns = spec.probability_columns
    for name in spec.binary_columns:
        j = columns.index(name)
        scores = np.sort(probs[:, j].astype(np.float64))
        labels = (targets[:, j] > 0.5)[np.argsort(probs[:, j].astype(np.float64), kind="stable")]
        positives_from = np.append(np.cumsum(labels[::-1])[::-1], 0)  # positives among sorted[i:]
        points = [(float(t), "curve") for t in grid_points] + [(result["classes"][name][m], m) for m in marks]
        thresholds = np.array([t for t, _ in points])
        start = np.searchsorted(scores, thresholds, side="left")
        predicted = len(scores) - start
        tp = positives_from[start].astype(np.float64)
        denominator = predicted + positives_from[0]
        f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
        for (threshold, kind), value, count in zip(points, f1, predicted):
            rows.append((name, threshold, float(value), count / len(scores), kind))
    schema = {"column": pl.String, "threshold": pl.Float64, "f1": pl.Float64, "positive_rate": pl.Float64,
              "kind": pl.String}
    return pl.DataFrame(rows, schema=schema, orient="row").sort(["column", "threshold", "kind"])


def _json_option(value: str | None, option: str) -> dict | None:
    """An option given as inline JSON (starting with '{') or as a path to a JSON/YAML file."""
    if value is None or value == "":
        return None
    text = value
    if not value.lstrip().startswith("{"):
        path = Path(value)
        if not path.exists():
            raise OoflineError(f"{option}: file not found: {path} (give a JSON object or a JSON file)")
        text = path.read_text()
        if path.suffix in {".yaml", ".yml"}:
            import yaml

            payload = yaml.safe_load(text)
            return payload or None
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as error:
        raise OoflineError(f"{option}: not valid JSON ({error})") from error
    if not isinstance(payload, dict):
        raise OoflineError(f"{option}: expected a JSON object mapping column -> value")
    return payload or None


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--oof", required=True, help="OOF predictions parquet: id, fold, probability columns")
    parser.add_argument("--labels", required=True, help="label spec JSON")
    parser.add_argument("--targets", required=True, help="targets parquet: id + probability columns as 0/1")
    parser.add_argument("--method", default="hybrid", choices=METHODS + tuple(METHOD_ALIASES))
    parser.add_argument("--weight", type=float, default=0.5, help="hybrid: weight of the exact threshold")
    parser.add_argument("--target-rates", default=None, help="JSON object or file: column -> positive rate")
    parser.add_argument("--probe-f1", default=None, help="JSON object or file: column -> all-ones LB probe F1")
    parser.add_argument("--metric", default=None, help="task metric for the before/after score (default macro_f1 "
                        "or mean_f1 for multihead)")
    parser.add_argument("--refit", default=None, help="JSON: the search/stack ensemble --oof comes from "
                        "(names, weights, method, blend, member_top_k, C), rebuilt without each outer fold")
    parser.add_argument("--member-oof", nargs="*", default=[], help="with --refit: the members' OOF parquets")
    parser.add_argument("--out", required=True, help="thresholds JSON")
    parser.add_argument("--curves-out", default=None, help="F1-vs-threshold points parquet (for plots)")
    args = parser.parse_args(argv)

    spec = LabelSpec.load(args.labels)
    oof = metrics.read_predictions(args.oof, spec)
    probs = oof.select(spec.probability_columns).to_numpy()
    targets = metrics.aligned_targets(oof, args.targets, spec)
    print(f"thresholds: {len(spec.binary_columns)} binary columns, {oof.height} OOF rows, method {args.method}",
          flush=True)
    options = dict(method=args.method, weight=args.weight,
                   target_rates=_json_option(args.target_rates, "--target-rates"),
                   probe_f1=_json_option(args.probe_f1, "--probe-f1"), metric=args.metric)
    result = search_thresholds(spec, probs, targets, **options)
    refit = None
    if args.refit:
        refit_settings = _json_option(args.refit, "--refit")
        refit = ensemble_refit(spec, oof["id"], args.member_oof, targets, refit_settings, args.metric)
        result["nested_refit"] = (f"{refit_settings['method']} ensemble refitted on the other folds for each "
                                  f"outer fold, thresholds searched on its nested OOF there")
    if "fold" in oof.columns:
        nested = nested_threshold_score(spec, probs, targets, oof["fold"].to_numpy(), refit, **options)
        result["oof_score_after_nested"], result["nested_folds"] = nested["score"], nested["folds"]
        result["nested_thresholds"] = nested.get("thresholds", {})
        if nested.get("note"):
            result["nested_note"] = nested["note"]
    write_json(result, args.out)
    if args.curves_out:
        write_parquet(threshold_curves(spec, probs, targets, result), args.curves_out)
    nested_text = (f", {result['oof_score_after_nested']:.5f} with thresholds tuned on the other folds"
                   if result.get("oof_score_after_nested") is not None else "")
    print(f"thresholds: OOF {result['metric']} {result['oof_score_before']:.5f} at 0.5 -> "
          f"{result['oof_score_after']:.5f} tuned in-sample{nested_text}; wrote {args.out}", flush=True)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
