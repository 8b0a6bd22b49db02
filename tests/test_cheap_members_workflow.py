"""A real Snakemake run of the cheap members: prior, two tfidf_linear models, a stack, a submission, the leaderboard."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
