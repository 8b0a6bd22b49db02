"""Soft labels on the official rows (CDC: the teacher "soft-labelled all the other data") through today's cheap
chain (nested: false, 2 folds): a student never trains on the soft rows of the fold it is scored on, its labels
came from teacher fold models that saw that fold and its CV says so (cv_optimistic); and `label_correction`
with `action: drop` under `select_epoch: best` still scores every official row of the held-out fold."""
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

from workflow_scripts.generated.teacher_labels import saw_fold
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
        "student": {"source": "tiny:llama", "kind": "encoder_full", "lr": 1e-3, "select_epoch": "best",
                    "corrected_by": "teacher",
                    "extra_data": {"official_soft": "results/soft_labels/teacher/official.parquet"},
                    "stages": [{"epochs": 1, "data": ["official_soft"]}, {"epochs": 1, "data": ["official"]}]},
    },
    soft_labels={"teacher": {"official": True, "datasets": [], "nested": False}},
    label_correction={"teacher": {"top_percent": 30, "action": "drop", "nested": False}},
)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("official_soft")
    (workdir / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    run = snakemake(workdir, "results/leaderboard.csv")
    assert run.returncode == 0, run.stderr[-4000:]
    return workdir / "results"


@pytest.mark.slow
def test_student_trains_on_out_of_fold_soft_labels_of_its_own_training_rows_only(finished_run):
    results = finished_run
    soft = pl.read_parquet(results / "soft_labels" / "teacher" / "official.parquet")
    oof = pl.read_parquet(results / "oof" / "teacher.parquet")
    columns = ["fresh", "plot", "rotten"]
    aligned = soft.join(oof.select("id", "fold", *[pl.col(c).alias(f"oof_{c}") for c in columns]), on="id")
    assert aligned.height == soft.height == 48
    for column in columns:  # the soft targets are exactly the teacher's out-of-fold probabilities
        np.testing.assert_allclose(aligned[column].to_numpy(), aligned[f"oof_{column}"].to_numpy(), atol=1e-6)
    # each row names the fold model that made its label: the one that held its fold out
    assert aligned["label_source"].to_list() == [f"teacher/fold{f}" for f in aligned["fold"]]

    folds = pl.read_parquet(results / "folds.parquet")
    dropped = set(pl.read_csv(results / "label_correction" / "teacher.changes.csv")["id"].cast(pl.String))
    assert dropped and len(dropped) == int(48 * 0.3)
    for fold in (0, 1):
        training = json.loads((results / "models" / "student" / f"fold{fold}" / "model" / "training.json").read_text())
        training_ids = set(folds.filter(pl.col("fold") != fold)["id"].cast(pl.String))
        held_out_ids = set(folds.filter(pl.col("fold") == fold)["id"].cast(pl.String))
        assert dropped & held_out_ids, "no dropped row in the held-out fold: the checks below could not fail"
        # hard labels: the training folds minus the dropped rows; soft labels: every training-fold row, and no
        # row of the held-out fold, dropped from the corrected file or not
        assert training["summary"]["train_rows"]["official"] == len(training_ids - dropped)
        assert training["summary"]["train_rows"]["official_soft"] == len(training_ids)
        # select_epoch: best picked the epoch on every official row of the held-out fold, dropped ones included
        assert training["summary"]["epoch_selection"]["held_out_rows"] == len(held_out_ids)
        # the cheap chain: the soft labels of the training rows were made by the other fold's teacher, which
        # trained on this held-out fold
        sources = training["summary"]["label_sources"]
        assert sources["official_soft"] == [f"teacher/fold{1 - fold}"] and saw_fold(sources["official_soft"][0], fold)


@pytest.mark.slow
def test_drop_with_best_epoch_scores_every_row_and_the_cheap_chain_is_flagged(finished_run):
    results = finished_run
    oof = pl.read_parquet(results / "oof" / "student.parquet")
    assert oof.height == 48  # the dropped rows were scored in their held-out fold
    scores = json.loads((results / "scores" / "student.json").read_text())
    assert scores["cv_optimistic"] is True and scores["selection"] == "best_epoch_on_valid_fold"
    reasons = scores["cv_optimistic_reasons"]
    assert any(r.startswith("corrected_by: teacher is not nested") for r in reasons)
    assert any(r.startswith("extra_data.official_soft: soft labels of official rows from teacher is not nested")
               for r in reasons)
    assert json.loads((results / "scores" / "teacher.json").read_text()).get("cv_optimistic") is None
    board = pl.read_csv(results / "leaderboard.csv")
    student = board.filter((pl.col("kind") == "model") & (pl.col("name") == "student")).row(0, named=True)
    assert student["cv_optimistic"] is True and "corrected_by: teacher is not nested" in student["cv_optimistic_reason"]
    teacher = board.filter((pl.col("kind") == "model") & (pl.col("name") == "teacher")).row(0, named=True)
    assert teacher["cv_optimistic"] is None and teacher["cv_optimistic_reason"] is None
