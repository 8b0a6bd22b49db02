"""The leaderboard gathers model, fold, ensemble and submission scores with LB scores beside them."""
from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from workflow_scripts import leaderboard as lb
from workflow_scripts import metrics
from workflow_scripts.errors import OoflineError, run_cli
from workflow_scripts.io import write_json
from workflow_scripts.labels import Head, LabelSpec


SPEC = LabelSpec("multiclass", (Head("label", "multiclass", "label", ("a", "b", "c")),))


def write_inputs(tmp_path):
    rng = np.random.default_rng(0)
    targets = np.eye(3)[rng.integers(0, 3, 90)]
    folds = np.arange(90) % 3
    paths = {}
    for model in ("deberta", "qwen"):
        scores = metrics.fold_scores(SPEC, rng.random((90, 3)), targets, folds, "map@3")
        scores["model"] = model
        write_json(scores, tmp_path / "scores" / f"{model}.json")
        paths[model] = tmp_path / "scores" / f"{model}.json"
    write_json({"ensemble": "blend", "metric": "map@3", "score": 0.81, "in_sample_score": 0.83, "fold_mean": 0.8,
                "fold_std": 0.01}, tmp_path / "ensembles" / "blend" / "score.json")
    manifest = {"hashed": {"submission": "sub1", "oof_scores": {
        "results/ensembles/blend/score.json": {"metric": "map@3", "score": 0.81, "in_sample_score": 0.83}}},
        "manifest_sha256": "x"}
    write_json(manifest, tmp_path / "submissions" / "sub1" / "manifest.json")
    (tmp_path / "lb_scores.yaml").write_text("sub1: {public: 0.79, private: 0.80}\nold_sub: {public: 0.7}\n")
    return paths


def test_rows_per_model_fold_ensemble_and_submission_with_lb(tmp_path):
    paths = write_inputs(tmp_path)
    board = lb.build_leaderboard(
        [paths["deberta"], paths["qwen"]], [tmp_path / "ensembles" / "blend" / "score.json"],
        [tmp_path / "submissions" / "sub1" / "manifest.json"], lb.load_lb_scores(tmp_path / "lb_scores.yaml"))
    counts = dict(board.group_by("kind").len().iter_rows())
    assert counts == {"model": 2, "fold": 6, "ensemble": 1, "submission": 2}
    deberta = json.loads(paths["deberta"].read_text())
    model = board.filter((pl.col("kind") == "model") & (pl.col("name") == "deberta")).row(0, named=True)
    assert model["cv"] == pytest.approx(deberta["score"]) and model["cv_fold_std"] == pytest.approx(deberta["fold_std"])
    fold1 = board.filter((pl.col("kind") == "fold") & (pl.col("name") == "deberta") & (pl.col("fold") == "1"))
    assert fold1["cv"][0] == pytest.approx(deberta["folds"]["1"]["score"])
    sub1 = board.filter(pl.col("name") == "sub1").row(0, named=True)
    assert (sub1["cv"], sub1["cv_in_sample"], sub1["lb_public"], sub1["lb_private"]) == (0.81, 0.83, 0.79, 0.80)
    old = board.filter(pl.col("name") == "old_sub").row(0, named=True)
    assert old["lb_public"] == 0.7 and old["cv"] is None


def test_cli_writes_csv_and_markdown(tmp_path):
    paths = write_inputs(tmp_path)
    argv = ["--model-scores", str(paths["deberta"]), str(paths["qwen"]),
            "--ensemble-scores", str(tmp_path / "ensembles" / "blend" / "score.json"),
            "--manifests", str(tmp_path / "submissions" / "sub1" / "manifest.json"),
            "--lb-scores", str(tmp_path / "lb_scores.yaml"),
            "--out-csv", str(tmp_path / "leaderboard.csv"), "--out-md", str(tmp_path / "leaderboard.md")]
    assert run_cli(lb.main, argv) == 0
    csv = pl.read_csv(tmp_path / "leaderboard.csv")
    assert csv.height == 11 and {"cv", "lb_public", "lb_private"} <= set(csv.columns)
    markdown = (tmp_path / "leaderboard.md").read_text()
    assert "## Submissions" in markdown and "| sub1 |" in markdown and "0.79000" in markdown
    # no LB file yet: the table still builds, LB columns stay empty
    argv[argv.index("--lb-scores") + 1] = str(tmp_path / "missing.yaml")
    assert run_cli(lb.main, argv) == 0


def test_bad_lb_scores_name_the_entry(tmp_path):
    (tmp_path / "lb.yaml").write_text("sub1: {public: 0.7, privat: 0.8}\n")
    with pytest.raises(OoflineError, match=r"'sub1'.*privat"):
        lb.load_lb_scores(tmp_path / "lb.yaml")
    (tmp_path / "lb.yaml").write_text("sub1: {public: high}\n")
    with pytest.raises(OoflineError, match="sub1.public"):
        lb.load_lb_scores(tmp_path / "lb.yaml")


def test_a_thresholded_submission_shows_its_thresholded_cv(tmp_path, monkeypatch):
    """submission (with --thresholds, as the rule runs it) -> manifest -> leaderboard: cv_thresholded is filled."""
    from workflow_scripts import submission as sub

    monkeypatch.chdir(tmp_path)
    spec = LabelSpec("multilabel", (Head("sad", "binary", "sad"), Head("fear", "binary", "fear")))
    pl.DataFrame({"id": ["t0", "t1"], "sad": [0.2, 0.9], "fear": [0.6, 0.1]}).write_parquet("test.parquet")
    spec.save("labels.json")
    write_json({"metric": "macro_f1", "score": 0.61}, "score.json")
    write_json({"metric": "macro_f1", "thresholds": {"sad": 0.4, "fear": 0.5}, "oof_score_before": 0.61,
                "oof_score_after": 0.67, "oof_score_after_nested": 0.65}, "thresholds.json")
    assert run_cli(sub.main, ["--test", "test.parquet", "--labels", "labels.json", "--format", "labels",
                              "--thresholds", "thresholds.json", "--scores", "score.json", "--name", "tuned",
                              "--out", "tuned/submission.csv", "--manifest-out", "tuned/manifest.json"]) == 0
    row = lb.build_leaderboard(manifests=["tuned/manifest.json"]).row(0, named=True)
    assert (row["cv"], row["cv_thresholded"], row["cv_thresholded_nested"]) == (0.61, 0.67, 0.65)


def test_a_best_epoch_model_and_what_is_built_on_it_are_flagged_optimistic(tmp_path):
    paths = write_inputs(tmp_path)
    optimistic = json.loads(paths["qwen"].read_text())
    plain = {"score": 0.5, "folds": {fold: {"score": 0.4} for fold in optimistic["folds"]}}
    optimistic.update(selection="best_epoch_on_valid_fold", cv_optimistic=True, plain=plain)
    write_json(optimistic, paths["qwen"])
    write_json({"ensemble": "pair", "metric": "map@3", "score": 0.8, "members": ["qwen", "deberta"]},
               tmp_path / "ensembles" / "pair" / "score.json")
    write_json({"ensemble": "outer", "metric": "map@3", "score": 0.8, "members": ["pair"]},
               tmp_path / "ensembles" / "outer" / "score.json")
    manifest = {"hashed": {"submission": "sub2", "config": {"models": {"qwen": {"select_epoch": "best"}}},
                           "oof_scores": {}}}
    write_json(manifest, tmp_path / "submissions" / "sub2" / "manifest.json")
    board = lb.build_leaderboard(
        list(paths.values()),
        [tmp_path / "ensembles" / name / "score.json" for name in ("blend", "outer", "pair")],
        [tmp_path / "submissions" / name / "manifest.json" for name in ("sub1", "sub2")])
    flagged = board.filter(pl.col("cv_optimistic") == True)  # noqa: E712
    assert sorted(set(flagged.select("kind", "name").iter_rows())) == [
        ("ensemble", "outer"), ("ensemble", "pair"), ("fold", "qwen"), ("model", "qwen"), ("submission", "sub2")]
    prior = tmp_path / "scores" / "prior.json"
    write_json({"metric": "map@3", "score": 0.55}, prior)
    board = lb.build_leaderboard(
        list(paths.values()),
        [tmp_path / "ensembles" / name / "score.json" for name in ("blend", "outer", "pair")],
        [tmp_path / "submissions" / name / "manifest.json" for name in ("sub1", "sub2")], prior_scores=prior)
    model = board.filter((pl.col("kind") == "model") & (pl.col("name") == "qwen")).row(0, named=True)
    assert model["cv_plain"] == 0.5
    # its optimistic CV would beat the prior; its plain CV, the one the lift is taken from, does not
    assert model["cv"] > 0.55 and model["lift_over_prior"] == pytest.approx(-0.05) and model["beats_prior"] is False
    assert board.filter(pl.col("kind") == "fold").filter(pl.col("name") == "qwen")["cv_plain"].to_list() == [0.4] * 3
    markdown = lb.to_markdown(board)
    assert "**Optimistic CV**" in markdown
    assert "model qwen, ensemble outer, ensemble pair, submission sub2" in markdown
    # a board without such models shows neither the note nor the columns
    honest = lb.to_markdown(lb.build_leaderboard([paths["deberta"]]))
    assert "Optimistic" not in honest and "cv_plain" not in honest


def test_lift_uses_the_same_cv_and_the_same_rows_prior_for_a_model_and_its_submission(tmp_path):
    """A best-epoch model trained on one fold: its row and its submission's row take the lift from the plain CV,
    against the prior on the rows it scores (its score.json's prior_score), not the all-folds prior."""
    from workflow_scripts.submission import summarise_scores

    score_file = tmp_path / "scores" / "qwen.json"
    write_json({"model": "qwen", "metric": "map@3", "score": 0.7, "folds": {"0": {"score": 0.7}},
                "selection": "best_epoch_on_valid_fold", "cv_optimistic": True,
                "plain": {"score": 0.6, "folds": {"0": {"score": 0.6}}}, "prior_score": 0.45}, score_file)
    write_json({"ensemble": "solo", "metric": "map@3", "score": 0.65, "members": ["qwen"], "prior_score": 0.45},
               tmp_path / "ensembles" / "solo" / "score.json")
    manifest = {"hashed": {"submission": "qwen_sub", "config": {"models": {"qwen": {"select_epoch": "best"}}},
                           "oof_scores": summarise_scores([score_file])}}
    write_json(manifest, tmp_path / "submissions" / "qwen_sub" / "manifest.json")
    prior = tmp_path / "scores" / "prior.json"
    write_json({"metric": "map@3", "score": 0.5}, prior)  # all folds: other rows than qwen's
    board = lb.build_leaderboard([score_file], [tmp_path / "ensembles" / "solo" / "score.json"],
                                 [tmp_path / "submissions" / "qwen_sub" / "manifest.json"], prior_scores=prior)
    lifts = {(kind, name): lift for kind, name, lift in board.select("kind", "name", "lift_over_prior").iter_rows()}
    assert lifts[("model", "qwen")] == pytest.approx(0.6 - 0.45)
    assert lifts[("submission", "qwen_sub")] == pytest.approx(0.6 - 0.45)
    assert lifts[("ensemble", "solo")] == pytest.approx(0.65 - 0.45)
    assert lifts[("prior", "prior")] is None and "_prior_on_rows" not in board.columns


def test_a_student_of_teacher_labels_that_saw_its_folds_and_what_is_built_on_it_are_flagged_with_the_reason(tmp_path):
    paths = write_inputs(tmp_path)
    student = json.loads(paths["qwen"].read_text())
    reason = "corrected_by: deberta is not nested (label_correction.deberta.nested: false): ..."
    student.update(cv_optimistic=True, cv_optimistic_reasons=[reason])  # as oof --cv-optimistic-reason writes it
    write_json(student, paths["qwen"])
    write_json({"ensemble": "pair", "metric": "map@3", "score": 0.8, "members": ["qwen", "deberta"]},
               tmp_path / "ensembles" / "pair" / "score.json")
    # the submission's config names the student (no select_epoch): flagged because the board flags the model
    manifest = {"hashed": {"submission": "sub2", "config": {"models": {"qwen": {}, "deberta": {}}}, "oof_scores": {}}}
    write_json(manifest, tmp_path / "submissions" / "sub2" / "manifest.json")
    board = lb.build_leaderboard(list(paths.values()), [tmp_path / "ensembles" / "pair" / "score.json"],
                                 [tmp_path / "submissions" / name / "manifest.json" for name in ("sub1", "sub2")])
    flagged = board.filter(pl.col("cv_optimistic") == True)  # noqa: E712
    assert sorted(set(flagged.select("kind", "name").iter_rows())) == [
        ("ensemble", "pair"), ("fold", "qwen"), ("model", "qwen"), ("submission", "sub2")]
    reasons = dict(flagged.filter(pl.col("kind") != "fold").select("name", "cv_optimistic_reason").iter_rows())
    assert reasons == {"qwen": reason, "pair": "over optimistic members: qwen", "sub2": "from optimistic models: qwen"}
    assert board.filter(pl.col("name") == "qwen")["cv_plain"].null_count() == 4  # no plain CV to fall back on
    assert "model qwen, ensemble pair, submission sub2" in lb.to_markdown(board)
