"""A real Snakemake run of one model with `folds: [0]` and `train_full: true`: only fold 0 is trained,
predicted and scored, and the full-data model trains on every row."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml
from movies_workflow import hand_map_at_3, movies_config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_workflow import snakemake  # noqa: E402

CONFIG = movies_config(
    n_train=60,
    model_defaults={"max_length": 32, "epochs": 1, "batch_size": 8, "resources": {"threads": 1}},
    models={"one": {"source": "tiny:llama", "kind": "encoder_full", "lr": 1e-3, "folds": [0], "train_full": True}},
)


@pytest.mark.slow
def test_one_fold_and_a_full_data_model(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    result = snakemake(tmp_path, "results/oof/one.parquet", "results/scores/one.json", "results/test/one.parquet",
                       "results/models/one/full/model", "results/leaderboard.csv")
    assert result.returncode == 0, result.stderr[-4000:]
    results = tmp_path / "results"
    folds = pl.read_parquet(results / "folds.parquet").with_columns(pl.col("id").cast(pl.String))
    assert sorted(folds["fold"].unique().to_list()) == [0, 1]
    fold0_ids = sorted(folds.filter(pl.col("fold") == 0)["id"].to_list())

    # OOF and scores cover fold 0's rows only; fold 1 was never trained
    oof = pl.read_parquet(results / "oof" / "one.parquet").with_columns(pl.col("id").cast(pl.String))
    assert sorted(oof["id"].to_list()) == fold0_ids and oof["fold"].unique().to_list() == [0]
    assert not (results / "models" / "one" / "fold1").exists()
    scores = json.loads((results / "scores" / "one.json").read_text())
    assert list(scores["folds"]) == ["0"]
    train = pl.read_csv(results / "demo" / "train.csv").select(pl.col("id").cast(pl.String), "category")
    labels = oof.select("id").join(train, on="id", how="left")["category"]
    assert scores["score"] == pytest.approx(hand_map_at_3(oof, labels), abs=1e-9)
    assert pl.read_parquet(results / "test" / "one.parquet").height == 20

    # compared with the prior on the same rows: fold 0's rows predicted with the class shares of fold 1's rows
    fold1 = folds.filter(pl.col("fold") == 1).join(train, on="id", how="left")["category"]
    shares = {c: (fold1 == c).mean() for c in ("fresh", "plot", "rotten")}
    prior_rows = oof.select("id").with_columns(pl.lit(v).alias(c) for c, v in shares.items())
    prior_on_fold0 = hand_map_at_3(prior_rows, labels)
    assert scores["prior_score"] == pytest.approx(prior_on_fold0, abs=1e-6)
    assert scores["lift_over_prior"] == pytest.approx(scores["score"] - prior_on_fold0, abs=1e-6)
    all_folds_prior = json.loads((results / "scores" / "prior.json").read_text())["score"]
    assert scores["prior_score_all_folds"] == all_folds_prior != pytest.approx(prior_on_fold0)
    row = pl.read_csv(results / "leaderboard.csv").filter(pl.col("kind") == "model").row(0, named=True)
    assert row["lift_over_prior"] == pytest.approx(scores["score"] - prior_on_fold0, abs=1e-6)

    # the fold model trains on the rows outside fold 0, the full-data model on all 60
    def official_rows(split):
        training = json.loads((results / "models" / "one" / split / "model" / "training.json").read_text())
        return training["summary"]["train_rows"]["official"]

    assert official_rows("fold0") == 60 - len(fold0_ids)
    assert official_rows("full") == 60
