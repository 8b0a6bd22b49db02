"""The prior baseline: class shares of the training folds, scored on the held-out fold, and its lift column."""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from workflow_scripts import leaderboard as lb
from workflow_scripts import metrics, prior
from workflow_scripts.errors import run_cli
from workflow_scripts.io import read_json, write_json, write_parquet
from workflow_scripts.labels import Head, LabelSpec

MULTICLASS = LabelSpec("multiclass", (Head("label", "multiclass", "label", ("a", "b", "c")),))


def write_task(tmp_path, spec, targets, folds):
    ids = [f"r{i}" for i in range(len(folds))]
    write_parquet(pl.DataFrame({"id": ids, "fold": folds}), tmp_path / "folds.parquet")
    write_parquet(pl.DataFrame({"id": ids}).hstack(pl.DataFrame(targets, schema=spec.probability_columns)),
                  tmp_path / "targets.parquet")
    write_parquet(pl.DataFrame({"id": ["t0", "t1"], "text": ["x", "y"]}), tmp_path / "test.parquet")
    spec.save(tmp_path / "labels.json")


def run_prior(tmp_path, metric):
    argv = ["--folds", str(tmp_path / "folds.parquet"), "--targets", str(tmp_path / "targets.parquet"),
            "--labels", str(tmp_path / "labels.json"), "--test", str(tmp_path / "test.parquet"), "--metric", metric,
            "--oof-out", str(tmp_path / "oof.parquet"), "--test-out", str(tmp_path / "test_prior.parquet"),
            "--scores-out", str(tmp_path / "prior.json")]
    assert run_cli(prior.main, argv) == 0
    return read_json(tmp_path / "prior.json")


def test_multiclass_prior_matches_a_hand_computation(tmp_path):
    # fold 0: labels a a b ; fold 1: labels a c c
    labels = ["a", "a", "b", "a", "c", "c"]
    targets = np.eye(3, dtype=np.float32)[["abc".index(x) for x in labels]]
    write_task(tmp_path, MULTICLASS, targets, [0, 0, 0, 1, 1, 1])
    scores = run_prior(tmp_path, "accuracy")
    # fold 0 is predicted with fold 1's shares (a 1/3, b 0, c 2/3): argmax c, right on none of a a b
    # fold 1 is predicted with fold 0's shares (a 2/3, b 1/3, c 0): argmax a, right on 1 of a c c
    assert scores["folds"]["0"]["score"] == pytest.approx(0.0)
    assert scores["folds"]["1"]["score"] == pytest.approx(1 / 3)
    assert scores["score"] == pytest.approx(1 / 6)
    # MAP@3 by hand: fold 0 ranks c, a, b -> a at rank 2 (1/2), b at rank 3 (1/3); fold 1 ranks a, b, c -> c rank 3
    assert scores["overall"]["map@3"] == pytest.approx((0.5 + 0.5 + 1 / 3 + 1 + 1 / 3 + 1 / 3) / 6)
    oof = pl.read_parquet(tmp_path / "oof.parquet")
    assert oof.filter(pl.col("fold") == 0).select("a", "b", "c").row(0) == pytest.approx((1 / 3, 0, 2 / 3))
    test = pl.read_parquet(tmp_path / "test_prior.parquet")  # the mean of the two folds' priors
    assert test.select("a", "b", "c").row(1) == pytest.approx((0.5, 1 / 6, 1 / 3))


def test_a_model_on_some_folds_is_compared_with_the_prior_on_its_rows(tmp_path):
    """The same task: a model trained on fold 1 only scores fold 1's rows, where the prior scores 1/3 (not the
    all-folds 1/6); the oof step records that prior and takes the lift from it."""
    from workflow_scripts import oof

    labels = ["a", "a", "b", "a", "c", "c"]
    targets = np.eye(3, dtype=np.float32)[["abc".index(x) for x in labels]]
    write_task(tmp_path, MULTICLASS, targets, [0, 0, 0, 1, 1, 1])
    run_prior(tmp_path, "accuracy")
    assert prior.prior_score_on_rows(MULTICLASS, pl.read_parquet(tmp_path / "folds.parquet"),
                                     str(tmp_path / "targets.parquet"), ["r3", "r4", "r5"], "accuracy") == 1 / 3
    model = np.eye(3, dtype=np.float32)[[2, 2, 2]]  # predicts c on fold 1's rows: 2 of 3 right
    write_parquet(pl.DataFrame({"id": ["r3", "r4", "r5"], "fold": [1, 1, 1]}).hstack(
        pl.DataFrame(model, schema=["a", "b", "c"])), tmp_path / "valid1.parquet")
    write_parquet(pl.DataFrame({"id": ["t0", "t1"]}).hstack(pl.DataFrame(model[:2], schema=["a", "b", "c"])),
                  tmp_path / "test1.parquet")
    assert run_cli(oof.main, [
        "--valid", str(tmp_path / "valid1.parquet"), "--test", str(tmp_path / "test1.parquet"),
        "--folds", str(tmp_path / "folds.parquet"), "--targets", str(tmp_path / "targets.parquet"),
        "--labels", str(tmp_path / "labels.json"), "--metric", "accuracy", "--oof-out", str(tmp_path / "oof1.parquet"),
        "--test-out", str(tmp_path / "t1.parquet"), "--scores-out", str(tmp_path / "one.json"),
        "--prior-scores", str(tmp_path / "prior.json")]) == 0
    scores = read_json(tmp_path / "one.json")
    assert (scores["score"], scores["prior_score"], scores["prior_score_all_folds"]) == pytest.approx((2 / 3, 1 / 3, 1 / 6))
    assert scores["lift_over_prior"] == pytest.approx(1 / 3)


def test_multihead_prior_is_per_head_rates(tmp_path):
    spec = LabelSpec("multihead", (Head("flag", "binary", "flag"), Head("kind", "multiclass", "kind", ("x", "y"))))
    # columns: flag, kind=x, kind=y
    targets = np.array([[1, 1, 0], [1, 0, 1], [0, 1, 0], [0, 1, 0], [1, 0, 1], [1, 0, 1]], dtype=np.float32)
    write_task(tmp_path, spec, targets, [0, 0, 0, 1, 1, 1])
    scores = run_prior(tmp_path, "mean_f1")
    oof = pl.read_parquet(tmp_path / "oof.parquet")
    # fold 1 rows get fold 0's flag rate 2/3 and kind shares (2/3, 1/3)
    assert oof.filter(pl.col("fold") == 1).row(0)[2:] == pytest.approx((2 / 3, 2 / 3, 1 / 3))
    # fold 0 rows get fold 1's flag rate 2/3 (-> flag 1 for all) and kind shares (1/3, 2/3) (-> y for all)
    # flag F1 over all rows: all predicted 1, 4 positives of 6 -> 2*4/(2*4+2) = 0.8
    assert scores["overall"]["f1/flag"] == pytest.approx(0.8)
    # kind macro F1: fold 0 predicts y (truth x y x), fold 1 predicts x (truth x y y): tp x=1, y=1
    truth = [0, 1, 0, 0, 1, 1]
    predicted = [1, 1, 1, 0, 0, 0]
    assert scores["overall"]["f1/kind"] == pytest.approx(metrics.multiclass_macro_f1(np.array(truth), np.array(predicted)))
    assert scores["score"] == pytest.approx((0.8 + scores["overall"]["f1/kind"]) / 2)


def test_a_model_that_only_predicts_the_prior_is_flagged(tmp_path):
    rng = np.random.default_rng(0)
    index = rng.integers(0, 3, 90)
    targets = np.eye(3, dtype=np.float32)[index]
    write_task(tmp_path, MULTICLASS, targets, (np.arange(90) % 3).tolist())
    prior_scores = run_prior(tmp_path, "map@3")
    write_json(dict(prior_scores, model="prior_copy"), tmp_path / "scores" / "prior_copy.json")
    learned = targets * 0.7 + 0.1  # ranks the true class first on every row
    good = metrics.fold_scores(MULTICLASS, learned, targets, np.arange(90) % 3, "map@3")
    write_json(dict(good, model="good"), tmp_path / "scores" / "good.json")
    argv = ["--model-scores", str(tmp_path / "scores" / "prior_copy.json"), str(tmp_path / "scores" / "good.json"),
            "--prior-scores", str(tmp_path / "prior.json"),
            "--out-csv", str(tmp_path / "leaderboard.csv"), "--out-md", str(tmp_path / "leaderboard.md")]
    assert run_cli(lb.main, argv) == 0
    board = pl.read_csv(tmp_path / "leaderboard.csv")
    rows = {r["name"]: r for r in board.filter(pl.col("kind").is_in(["model", "prior"])).iter_rows(named=True)}
    assert rows["prior"]["cv"] == pytest.approx(prior_scores["score"])
    assert rows["good"]["lift_over_prior"] == pytest.approx(1.0 - prior_scores["score"], abs=1e-5)
    assert rows["good"]["beats_prior"] is True and rows["prior_copy"]["beats_prior"] is False
    markdown = (tmp_path / "leaderboard.md").read_text()
    assert "Not better than the prior baseline" in markdown and "model prior_copy" in markdown
    assert "model good" not in markdown.split("## ")[0]


def test_lift_follows_the_metric_direction():
    assert prior.lift_over_prior(0.7, 0.5, "accuracy") == pytest.approx(0.2)
    assert prior.lift_over_prior(0.7, 0.9, "log_loss") == pytest.approx(0.2)
