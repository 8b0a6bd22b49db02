"""A real Snakemake run of the cheap members: prior, two tfidf_linear models, a stack, a submission, the leaderboard."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from movies_workflow import movies_config

REPO = Path(__file__).resolve().parent.parent

CONFIG = movies_config(
    n_train=120, n_test=20,
    demo={"dataset": "movies", "n_train": 120, "n_test": 20, "seed": 0, "balanced": True},
    models={
        "words": {"kind": "tfidf_linear", "word_ngrams": [1, 2], "min_df": 1},
        "chars": {"kind": "tfidf_linear", "word_ngrams": None, "char_ngrams": [2, 4], "C": 2.0},
    },
    ensembles={"stacked": {"members": ["words", "chars"], "method": "stack"}},
    submissions={"stacked_top3": {"source": "stacked", "format": "top_k", "top_k": 3,
                                  "prediction_columns": ["category"]}},
)


@pytest.mark.slow
def test_cheap_members_build_prior_oof_stack_and_leaderboard(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path),
               "--cores", "2"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    results = tmp_path / "results"
    folds = pl.read_parquet(results / "folds.parquet")
    for model in ("words", "chars"):
        oof = pl.read_parquet(results / "oof" / f"{model}.parquet")
        assert oof["id"].to_list() == folds["id"].to_list()
        for fold in (0, 1):
            saved = sorted(p.name for p in (results / "models" / model / f"fold{fold}" / "linear").iterdir()
                           if not p.name.startswith("."))  # snakemake marks directory outputs
            assert saved == ["heads.json", "heads.safetensors", "idf.safetensors", "vocabulary.json"]
        scores = json.loads((results / "scores" / f"{model}.json").read_text())
        assert scores["lift_over_prior"] == pytest.approx(scores["score"] - scores["prior_score"])
    prior = json.loads((results / "scores" / "prior.json").read_text())
    stack = json.loads((results / "ensembles" / "stacked" / "score.json").read_text())
    assert stack["method"] == "stack" and stack["score"] == stack["out_of_sample_score"]
    board = pl.read_csv(results / "leaderboard.csv")
    assert board.filter(pl.col("kind") == "prior")["cv"][0] == pytest.approx(prior["score"], abs=1e-6)
    submission_row = board.filter(pl.col("kind") == "submission").row(0, named=True)
    assert submission_row["lift_over_prior"] == pytest.approx(stack["score"] - prior["score"], abs=1e-5)
    # the cheap members learn on the balanced movies demo: above the prior on MAP@3
    assert board.filter(pl.col("kind") == "model")["beats_prior"].to_list() == [True, True]
    assert len(pl.read_csv(results / "submissions" / "stacked_top3" / "submission.csv")) == 20
    # no CPU-only job asked for a GPU
    assert "gpu=1" not in result.stderr


@pytest.mark.slow
def test_binary_task_written_as_multiclass_stack_and_submission_predict_both_classes(tmp_path, movies_demo):
    """fresh / rotten only, `type: multiclass`: every head is scikit-learn's one binary model. The members, the
    stack and its argmax submission must predict both classes, as scikit-learn's predict_proba does."""
    train, test, _ = movies_demo
    two_classes = pl.col("category").is_in(["fresh", "rotten"])
    (tmp_path / "data").mkdir()
    train.filter(two_classes).write_csv(tmp_path / "data" / "train.csv")
    test.drop("category", strict=False).write_csv(tmp_path / "data" / "test.csv")
    config = movies_config(
        models=CONFIG["models"], ensembles=CONFIG["ensembles"],
        submissions={"stacked": {"source": "stacked", "format": "argmax", "prediction_columns": ["category"]}})
    config.pop("demo")
    config["data"] = {"train": "data/train.csv", "test": "data/test.csv"}
    config["task"]["metric"] = "accuracy"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path),
               "--cores", "2", "results/submissions/stacked/submission.csv", "results/leaderboard.csv"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    results = tmp_path / "results"
    targets = pl.read_parquet(results / "targets.parquet")
    board = pl.read_csv(results / "leaderboard.csv")
    stack_oof = pl.read_parquet(results / "ensembles" / "stacked" / "oof.parquet")
    for name, oof in [("stacked", stack_oof)] + [(m, pl.read_parquet(results / "oof" / f"{m}.parquet"))
                                                 for m in ("words", "chars")]:
        probabilities = oof.select("fresh", "rotten").to_numpy()
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
        assert set(probabilities.argmax(axis=1).tolist()) == {0, 1}, name
        aligned = oof.select("id").join(targets, on="id", how="left", maintain_order="left")
        accuracy = float((probabilities.argmax(1) == aligned.select("fresh", "rotten").to_numpy().argmax(1)).mean())
        cv = board.filter((pl.col("name") == name) & pl.col("kind").is_in(["model", "ensemble"]))["cv"][0]
        assert cv == pytest.approx(accuracy, abs=1e-6), name
    # the submission is the stack's test argmax, row for row, and holds both classes
    stack_test = pl.read_parquet(results / "ensembles" / "stacked" / "test.parquet")
    submission = pl.read_csv(results / "submissions" / "stacked" / "submission.csv", infer_schema=False)
    expected = dict(zip(stack_test["id"].cast(pl.String).to_list(),
                        np.array(["fresh", "rotten"])[stack_test.select("fresh", "rotten").to_numpy().argmax(1)]))
    assert dict(zip(submission["id"].to_list(), submission["category"].to_list())) == expected
    assert set(submission["category"].to_list()) == {"fresh", "rotten"}
