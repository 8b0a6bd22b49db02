"""Soft labels on the official rows (CDC: the teacher "soft-labelled all the other data"): out-of-fold teacher
probabilities, and a student never trains on the soft rows of the fold it is scored on."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from movies_workflow import movies_config  # noqa: E402
from test_workflow import snakemake  # noqa: E402

from workflow_scripts.train import without_held_out_rows



def test_extra_rows_of_the_held_out_fold_are_dropped_and_other_rows_kept():
    extra = pl.DataFrame({"id": ["007", "8", "gen-1", "009"], "text": ["a", "b", "c", "d"]})
    kept = without_held_out_rows(extra, pl.Series(["007", "8", "009", "010"]), {"007", "010"})
    assert kept["id"].to_list() == ["007", "gen-1"]  # 8 and 009 are official rows of the held-out fold


CONFIG = movies_config(
    n_train=48, n_test=8,
    task={"type": "multiclass", "text_template": "Review: {text}", "label_column": "category", "metric": "accuracy"},
    folds={"scheme": "stratified", "n_folds": 2, "seed": 0},
    model_defaults={"max_length": 24, "epochs": 1, "batch_size": 8, "merge": False, "resources": {"threads": 1}},
    models={
        "teacher": {"source": "tiny:llama", "kind": "encoder_full", "lr": 1e-3},
        "student": {"source": "tiny:llama", "kind": "encoder_full", "lr": 1e-3,
                    "extra_data": {"official_soft": "results/soft_labels/teacher/official.parquet"},
                    "stages": [{"epochs": 1, "data": ["official_soft"]}, {"epochs": 1, "data": ["official"]}]},
    },
    soft_labels={"teacher": {"official": True, "datasets": []}},
)


@pytest.mark.slow
def test_student_trains_on_out_of_fold_soft_labels_of_its_own_training_rows_only(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    run = snakemake(tmp_path, "results/soft_labels/teacher/official.parquet",
                          "results/models/student/fold0/model")
    assert run.returncode == 0, run.stderr[-4000:]
    results = tmp_path / "results"
    soft = pl.read_parquet(results / "soft_labels" / "teacher" / "official.parquet")
    oof = pl.read_parquet(results / "oof" / "teacher.parquet")
    columns = ["fresh", "plot", "rotten"]
    aligned = soft.join(oof.select("id", *[pl.col(c).alias(f"oof_{c}") for c in columns]), on="id")
    assert aligned.height == soft.height == 48
    for column in columns:  # the soft targets are exactly the teacher's out-of-fold probabilities
        np.testing.assert_allclose(aligned[column].to_numpy(), aligned[f"oof_{column}"].to_numpy(), atol=1e-6)

    folds = pl.read_parquet(results / "folds.parquet")
    training = json.loads((results / "models" / "student" / "fold0" / "model" / "training.json").read_text())
    n_training_rows = folds.filter(pl.col("fold") != 0).height
    assert training["summary"]["train_rows"]["official"] == n_training_rows
    assert training["summary"]["train_rows"]["official_soft"] == n_training_rows  # not 48: fold 0 is held out
