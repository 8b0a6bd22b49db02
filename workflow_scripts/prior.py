"""The prior baseline: per fold, class priors / label rates of the training folds, scored on the held-out fold.

A model that does not beat this row learned nothing a user can use; every leaderboard row shows its lift
over it. Writes the same files as a model (OOF, test, scores), so it can be read like one.
"""
from __future__ import annotations

import argparse
from typing import Sequence

import numpy as np
import polars as pl

from workflow_scripts.errors import OoflineError, run_cli
from workflow_scripts.io import read_table, write_json, write_parquet
from workflow_scripts.labels import LabelSpec
from workflow_scripts.metrics import aligned_targets, fold_scores, metric_direction, task_scores

PRIOR_NAME = "prior"


def prior_probabilities(targets: np.ndarray) -> np.ndarray:
    """Column means of 0/1 targets: class shares per multiclass head, positive rates per binary head.

    targets: (n_rows, n_columns) 0/1 -> (n_columns,) float32.
    """
    if targets.shape[0] == 0:
        raise OoflineError("prior: no training rows to take class shares from")
    return targets.mean(axis=0).astype(np.float32)


def prior_predictions(targets: np.ndarray, folds: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """(OOF probabilities, per-fold prior vectors): each fold gets the prior of the other folds' rows."""
    oof = np.zeros(targets.shape, dtype=np.float32)
    per_fold = []
    for fold in sorted(set(folds.tolist())):
        held_out = folds == fold
        prior = prior_probabilities(targets[~held_out])
        oof[held_out] = prior
        per_fold.append(prior)
    return oof, per_fold


def lift_over_prior(score: float, prior_score: float, metric: str) -> float:
    """How much better than the prior a score is, in the metric's better direction (positive = better)."""
    return metric_direction(metric) * (float(score) - float(prior_score))


def prior_score_on_rows(spec: LabelSpec, folds: pl.DataFrame, targets_path: str, ids: Sequence, metric: str) -> float:
    """The prior's score on the rows `ids` only (each predicted, as in prior.json, with the class shares of the
    other folds of the whole folds file): what a model or ensemble over a subset of folds is compared with."""
    targets = aligned_targets(folds, targets_path, spec)
    oof, _ = prior_predictions(targets, folds["fold"].to_numpy())
    rows = folds["id"].is_in(pl.Series(list(ids)).cast(folds["id"].dtype).implode()).to_numpy()
    if not rows.any():
        raise OoflineError("prior: none of the scored ids is in the folds file")
    return task_scores(spec, oof[rows], targets[rows], metric)["score"]


def prior_files(spec: LabelSpec, folds: pl.DataFrame, targets_path: str, test_ids: list, metric: str
                ) -> tuple[pl.DataFrame, pl.DataFrame, dict]:
    """(OOF frame, test frame, scores record) of the prior baseline, in the layout of a model's files."""
    targets = aligned_targets(folds, targets_path, spec)
    fold_values = folds["fold"].to_numpy()
    if len(set(fold_values.tolist())) < 2:
        raise OoflineError("prior: the folds file needs at least 2 folds")
    oof, per_fold = prior_predictions(targets, fold_values)
    columns = spec.probability_columns
    oof_frame = folds.select("id", "fold").hstack(pl.DataFrame(oof, schema=columns))
    # test rows get the fold-averaged prior, as a model's test file is the mean of its fold models
    test_prior = np.mean(per_fold, axis=0).astype(np.float32)
    test_frame = pl.DataFrame({"id": test_ids}).hstack(
        pl.DataFrame(np.tile(test_prior, (len(test_ids), 1)), schema=columns))
    scores = fold_scores(spec, oof, targets, fold_values, metric)
    scores["model"] = PRIOR_NAME
    return oof_frame, test_frame, scores


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", required=True)
    parser.add_argument("--targets", required=True)
    parser.add_argument("--labels", required=True)
    parser.add_argument("--test", required=True, help="clean test data (its ids)")
    parser.add_argument("--metric", required=True)
    parser.add_argument("--oof-out", required=True)
    parser.add_argument("--test-out", required=True)
    parser.add_argument("--scores-out", required=True)
    args = parser.parse_args(argv)
    spec = LabelSpec.load(args.labels)
    oof, test, scores = prior_files(spec, read_table(args.folds), args.targets,
                                    read_table(args.test)["id"].to_list(), args.metric)
    write_parquet(oof, args.oof_out)
    write_parquet(test, args.test_out)
    write_json(scores, args.scores_out)
    per_fold = ", ".join(f"{value['score']:.5f}" for value in scores["folds"].values())
    print(f"prior CV {args.metric}: {scores['score']:.5f} (folds {per_fold})", flush=True)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
