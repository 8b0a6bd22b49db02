"""A full-data model's test predictions in place of the fold mean, while CV still comes from the folds."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from movies_workflow import movies_config  # noqa: E402
from test_workflow import snakemake  # noqa: E402

from workflow_scripts.config_check import check_config
from workflow_scripts.errors import OoflineError

REPO = Path(__file__).resolve().parent.parent

CONFIG = movies_config(
    n_train=40, n_test=8,
    task={"type": "multiclass", "text_template": "Review: {text}", "label_column": "category", "metric": "accuracy"},
    folds={"scheme": "stratified", "n_folds": 2, "seed": 0},
    model_defaults={"max_length": 24, "epochs": 1, "batch_size": 8, "resources": {"threads": 1}},
    models={"full_fit": {"source": "tiny:llama", "kind": "encoder_full", "lr": 1e-3, "train_full": True,
                            "test_predictions": "full"}},
)


def test_full_test_predictions_need_a_full_data_model():
    config = yaml.safe_load(yaml.safe_dump(CONFIG))
    config["models"]["full_fit"]["train_full"] = False
    with pytest.raises(OoflineError, match="models.full_fit.test_predictions: 'full' needs models.full_fit.train_full: true"):
        check_config(config, REPO)


@pytest.mark.slow
def test_test_file_is_the_full_data_models_and_the_leaderboard_says_so(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    run = snakemake(tmp_path, "results/test/full_fit.parquet", "results/leaderboard.csv")
    assert run.returncode == 0, run.stderr[-4000:]
    results = tmp_path / "results"
    test = pl.read_parquet(results / "test" / "full_fit.parquet")
    full = pl.read_parquet(results / "predictions" / "full_fit" / "full" / "test.parquet")
    fold0 = pl.read_parquet(results / "predictions" / "full_fit" / "fold0" / "test.parquet")
    columns = ["fresh", "plot", "rotten"]
    assert test.select("id", *columns).equals(full.select("id", *columns).with_columns(pl.col(columns).cast(pl.Float32)))
    assert not test.select(columns).equals(fold0.select(columns).with_columns(pl.col(columns).cast(pl.Float32)))
    scores = json.loads((results / "scores" / "full_fit.json").read_text())
    assert scores["test_predictions"] == "full-data model"
    assert sorted(scores["folds"]) == ["0", "1"]  # the CV is the fold models'
    leaderboard = pl.read_csv(results / "leaderboard.csv")
    row = leaderboard.filter((pl.col("kind") == "model") & (pl.col("name") == "full_fit"))
    assert row["test_predictions"].to_list() == ["full-data model"]
