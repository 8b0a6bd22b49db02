"""Gather per-fold predictions into OOF and fold-averaged test files, and score them per fold and overall."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import numpy as np
import polars as pl

from workflow_scripts.errors import OoflineError, run_cli
from workflow_scripts.io import read_json, read_table, write_json, write_parquet
from workflow_scripts.labels import LabelSpec
from workflow_scripts.metrics import task_scores


def gather_oof(fold_predictions: list[pl.DataFrame], folds: pl.DataFrame) -> pl.DataFrame:
    """One row per training id in the folds file's order; every id must be predicted exactly once."""
    oof = pl.concat(fold_predictions)
    duplicated = oof.filter(pl.col("id").is_duplicated())["id"].unique().to_list()
    if duplicated:
        raise OoflineError(f"ids predicted by more than one fold, e.g. {duplicated[:5]}")
    ordered = folds.select("id").join(oof.drop("fold"), on="id", how="left", maintain_order="left")
    missing = ordered.filter(pl.any_horizontal(pl.all().exclude("id").is_null()))["id"].to_list()
    if missing:
        raise OoflineError(f"{len(missing)} training ids have no out-of-fold prediction, e.g. {missing[:5]}")
    return folds.select("id", "fold").hstack(ordered.drop("id"))


def average_test(test_predictions: list[pl.DataFrame], columns: list[str]) -> pl.DataFrame:
    ids = test_predictions[0]["id"]
    for frame in test_predictions[1:]:
        if not frame["id"].equals(ids):
            raise OoflineError("fold test predictions list different ids")
    mean = np.mean([frame.select(columns).to_numpy() for frame in test_predictions], axis=0).astype(np.float32)
    return pl.DataFrame({"id": ids}).hstack(pl.DataFrame(mean, schema=columns))


def score_oof(oof: pl.DataFrame, targets: pl.DataFrame, spec: LabelSpec, metric: str) -> dict:
    """The task metric per fold and overall (plus the extras metrics.task_scores gives)."""
    aligned = oof.select("id", "fold").join(targets, on="id", how="left", maintain_order="left")
    columns = spec.probability_columns
    probs, truth = oof.select(columns).to_numpy(), aligned.select(columns).to_numpy()
    result = {"metric": metric, "overall": task_scores(spec, probs, truth, metric), "folds": {}}
    fold_values = oof["fold"].to_numpy()
    for fold in sorted(set(fold_values.tolist())):
        rows = fold_values == fold
        result["folds"][str(fold)] = task_scores(spec, probs[rows], truth[rows], metric)
    per_fold = [result["folds"][f]["score"] for f in result["folds"]]
    result["score"] = result["overall"]["score"]
    result["fold_mean"], result["fold_std"] = float(np.mean(per_fold)), float(np.std(per_fold))
    return result


# score.json's `selection` for a select_epoch: best model: its OOF rows come from epochs chosen on their own fold
OPTIMISTIC_SELECTION = "best_epoch_on_valid_fold"
# a fold's OOF score and the held-out score training recorded for its chosen epoch: the same predictions and
# metric code, so only float noise (batch order, precision) may separate them
SELECTION_TOLERANCE = 1e-4


def selected_epoch_scores(trained_dirs: Sequence[str | Path], folds: pl.DataFrame, targets: pl.DataFrame,
                          spec: LabelSpec, metric: str, oof_scores: dict) -> dict:
    """score.json's fields for a `select_epoch: best` model: the plain CV (its fold models' last-epoch
    predictions, scored as the OOF is) and each fold's epoch history and choice.

    oof_scores: score_oof of the model's OOF (the chosen epochs' predictions), its optimistic CV."""
    from workflow_scripts.train import LAST_EPOCH_VALID

    last_epoch_frames, epochs = [], {}
    for directory in trained_dirs:
        directory = Path(directory)
        selection = read_json(directory / "training.json")["summary"].get("epoch_selection")
        if not selection:
            raise OoflineError(f"{directory}: training.json records no epoch selection (trained with select_epoch: last; "
                               "rerun its training)")
        last_epoch_frames.append(read_table(directory / LAST_EPOCH_VALID))
        fold = str(selection["fold"])
        by_epoch = {entry["epoch"]: entry["score"] for entry in selection["history"]}
        epochs[fold] = {"chosen_epoch": selection["chosen_epoch"], "last_epoch": selection["last_epoch"],
                        "chosen_epoch_score_in_training": by_epoch[selection["chosen_epoch"]],
                        "history": selection["history"]}
    plain = score_oof(gather_oof(last_epoch_frames, folds), targets, spec, metric)
    for fold, record in epochs.items():
        record["oof_score"] = oof_scores["folds"][fold]["score"]
        if abs(record["oof_score"] - record["chosen_epoch_score_in_training"]) > SELECTION_TOLERANCE:
            print(f"WARNING: fold {fold}: the OOF predictions score {record['oof_score']:.6f}, training scored the chosen "
                  f"epoch {record['chosen_epoch_score_in_training']:.6f} on the same rows", flush=True)
    return {
        "selection": OPTIMISTIC_SELECTION,
        "cv_optimistic": True,
        "note": ("each fold's OOF predictions come from the epoch that scored best on that fold's own labels, so "
                 "score is optimistic; plain.score is the CV of the last epoch's weights (select_epoch: last)"),
        "plain": {"selection": "last_epoch", **plain},
        "epochs": dict(sorted(epochs.items(), key=lambda item: int(item[0]))),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--valid", nargs="+", required=True, help="per-fold held-out prediction parquets")
    parser.add_argument("--test", nargs="+", required=True, help="per-fold test prediction parquets")
    parser.add_argument("--folds", required=True)
    parser.add_argument("--targets", required=True)
    parser.add_argument("--labels", required=True)
    parser.add_argument("--metric", required=True)
    parser.add_argument("--oof-out", required=True)
    parser.add_argument("--test-out", required=True)
    parser.add_argument("--scores-out", required=True)
    parser.add_argument("--name", default="")
    parser.add_argument("--prior-scores", default=None, help="results/scores/prior.json: adds the lift over the prior")
    parser.add_argument("--test-source", choices=("folds", "full"), default="folds",
                        help="folds: --test holds the fold models' test predictions (averaged); full: the full-data model's")
    parser.add_argument("--trained", nargs="+", default=None,
                        help="select_epoch best: the fold model folders (epoch history, last-epoch held-out predictions)")
    parser.add_argument("--cv-optimistic-reason", nargs="+", default=None,
                        help="why the fold models may have learnt from labels of the folds they are scored on "
                             "(teacher-made labels that are not nested): score.json flags the CV cv_optimistic")
    args = parser.parse_args(argv)
    spec = LabelSpec.load(args.labels)
    all_folds = read_table(args.folds)
    folds = all_folds
    valid_frames = [read_table(path) for path in args.valid]
    trained_folds = sorted({int(f) for frame in valid_frames for f in frame["fold"].unique().to_list()})
    # a model trained on a subset of folds still gets an OOF file over the rows those folds hold out
    folds = folds.filter(pl.col("fold").is_in(trained_folds))
    oof = gather_oof(valid_frames, folds)
    test = average_test([read_table(path) for path in args.test], spec.probability_columns)
    scores = score_oof(oof, read_table(args.targets), spec, args.metric)
    scores["model"] = args.name
    if args.trained:
        scores.update(selected_epoch_scores(args.trained, folds, read_table(args.targets), spec, args.metric, scores))
    if args.cv_optimistic_reason:
        scores["cv_optimistic"] = True
        scores["cv_optimistic_reasons"] = list(args.cv_optimistic_reason)
    if args.prior_scores:
        from workflow_scripts.prior import lift_over_prior, prior_score_on_rows

        # the prior on this model's OOF rows: a model trained on some folds is compared on the rows it scores
        scores["prior_score"] = prior_score_on_rows(spec, all_folds, args.targets, oof["id"], args.metric)
        if oof.height != all_folds.height:
            scores["prior_score_all_folds"] = read_json(args.prior_scores)["score"]
        # an optimistic CV would flatter the comparison: a best-epoch model is measured by its plain CV
        honest = scores["plain"]["score"] if args.trained else scores["score"]
        scores["lift_over_prior"] = lift_over_prior(honest, scores["prior_score"], args.metric)
    if args.test_source == "full" and len(args.test) != 1:
        raise OoflineError("--test-source full takes the full-data model's one test prediction file")
    scores["test_predictions"] = ("full-data model" if args.test_source == "full"
                                  else f"mean of {len(args.test)} fold models")
    write_parquet(oof, args.oof_out)
    write_parquet(test, args.test_out)
    write_json(scores, args.scores_out)
    per_fold = ", ".join(f"{fold_scores['score']:.5f}" for fold_scores in scores["folds"].values())
    print(f"{args.name} CV {args.metric}: {scores['score']:.5f} (folds {per_fold})", flush=True)
    if args.trained:
        chosen = ", ".join(f"fold {fold}: epoch {record['chosen_epoch']}/{record['last_epoch']}"
                           for fold, record in scores["epochs"].items())
        print(f"{args.name}: that CV is OPTIMISTIC (epochs picked on the folds they score: {chosen}); "
              f"plain CV of the last epoch {scores['plain']['score']:.5f}", flush=True)
    for reason in args.cv_optimistic_reason or []:
        print(f"{args.name}: that CV is OPTIMISTIC: {reason}", flush=True)
    if args.prior_scores:
        print(f"{args.name}: lift over the prior {scores['lift_over_prior']:+.5f} (prior {scores['prior_score']:.5f})",
              flush=True)
        if scores["lift_over_prior"] <= 0:
            print(f"WARNING: {args.name} does not beat the prior baseline on {args.metric}: it learned nothing usable",
                  flush=True)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
