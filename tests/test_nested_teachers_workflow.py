"""Nested teacher labels through a real Snakemake run (3 folds, tiny models): a student's fold k trains on
corrected labels, official-row soft labels and generated-row soft labels that no model which saw fold k made,
asserted from the files (each label row names its teacher model) and from what each fold model trained on;
its rows were generated from examples outside fold k; its CV is not flagged."""
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

from workflow_scripts.generated.teacher_labels import held_out_set, saw_fold

COLUMNS = ["fresh", "plot", "rotten"]
CONFIG = movies_config(
    n_train=36, n_test=6,
    task={"type": "multiclass", "text_template": "Review: {text}", "label_column": "category", "metric": "accuracy"},
    folds={"scheme": "stratified", "n_folds": 3, "seed": 0},
    model_defaults={"max_length": 16, "epochs": 1, "batch_size": 12, "merge": False, "resources": {"threads": 1}},
    models={
        "teacher": {"source": "tiny:llama", "kind": "encoder_full", "lr": 1e-3},
        "student": {"source": "tiny:llama", "kind": "encoder_full", "lr": 1e-3, "corrected_by": "teacher",
                    "extra_data": {"official_soft": "results/soft_labels/teacher/official.parquet",
                                   "gen": "results/soft_labels/teacher/tiny-seed0.parquet"},
                    "stages": [{"epochs": 1, "data": ["official", "official_soft", "gen"]}]},
    },
    language_models={"tiny": {"source": "tiny:llama"}},
    generators={"tiny": {"model": "tiny", "fields": ["text"], "format": "text", "nested": True, "n_rows": 2,
                         "template": "Examples:\n{examples}\nWrite one more.", "examples_per_prompt": 2,
                         "max_new_tokens": 8, "batch_size": 2}},
    soft_labels={"teacher": {"datasets": []}},  # nested (the default): built for the student's folds only
    label_correction={"teacher": {"top_percent": 30}},
)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("nested_teachers")
    (workdir / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    run = snakemake(workdir, "results/scores/student.json")
    assert run.returncode == 0, run.stderr[-4000:]
    return workdir / "results"


def fold_of(results: Path) -> dict[str, int]:
    return dict(pl.read_parquet(results / "folds.parquet").select(pl.col("id").cast(pl.String), "fold").iter_rows())


@pytest.mark.slow
def test_no_label_a_student_fold_trains_on_was_made_by_a_teacher_that_saw_that_fold(finished_run):
    results = finished_run
    folds = fold_of(results)
    for k in range(3):
        training = json.loads((results / "models" / "student" / f"fold{k}" / "model" / "training.json").read_text())
        sources = training["summary"]["label_sources"]
        inner = [f"teacher/fold{min(j, k)}+{max(j, k)}" for j in range(3) if j != k]
        # corrected official rows and soft official rows: the inner teachers without fold k and the row's fold;
        # generated rows: the teacher's fold-k model
        assert sources == {"official": sorted(inner), "official_soft": sorted(inner), "gen": [f"teacher/fold{k}"]}
        assert not any(saw_fold(source, k) for names in sources.values() for source in names)

        # the files, row by row: which teacher model made each label
        soft = pl.read_parquet(results / "soft_labels" / "teacher" / f"fold{k}" / "official.parquet")
        assert sorted(soft["id"].cast(pl.String)) == sorted(i for i, f in folds.items() if f != k)
        for row_id, source in soft.select(pl.col("id").cast(pl.String), "label_source").iter_rows():
            assert held_out_set(source.split("/")[1]) == tuple(sorted({k, folds[row_id]}))
        inner_oof = pl.read_parquet(results / "inner_oof" / "teacher" / f"fold{k}.parquet")
        aligned = soft.join(inner_oof.select("id", *[pl.col(c).alias(f"t_{c}") for c in COLUMNS]), on="id")
        for column in COLUMNS:  # the soft targets are the inner teachers' predictions
            np.testing.assert_allclose(aligned[column].to_numpy(), aligned[f"t_{column}"].to_numpy(), atol=1e-6)

        corrected = pl.read_parquet(results / "label_correction" / "teacher" / f"fold{k}.parquet")
        train = pl.read_parquet(results / "data" / "train.parquet")
        assert corrected["id"].to_list() == train["id"].to_list()
        for row_id, source in corrected.select(pl.col("id").cast(pl.String), "label_source").iter_rows():
            if folds[row_id] == k:
                assert source is None  # held out: never scored by a teacher, never changed
            else:
                assert held_out_set(source.split("/")[1]) == tuple(sorted({k, folds[row_id]}))
        changes = pl.read_csv(results / "label_correction" / "teacher" / f"fold{k}.changes.csv",
                              schema_overrides={"id": pl.String})
        assert all(folds[i] != k for i in changes["id"])
        held = corrected.filter(pl.col("id").cast(pl.String).is_in([i for i, f in folds.items() if f == k]))
        assert held["category"].to_list() == train.filter(
            pl.col("id").cast(pl.String).is_in([i for i, f in folds.items() if f == k]))["category"].to_list()

        generated = pl.read_parquet(results / "soft_labels" / "teacher" / f"fold{k}" / "tiny-seed0.parquet")
        assert set(generated["label_source"]) == {f"teacher/fold{k}"}
        rows = pl.read_parquet(results / "generated" / "tiny" / f"fold{k}" / "seed0.parquet")
        assert rows["id"].to_list() == generated["id"].to_list()
        shown = {i for ids in rows["example_ids"] for i in ids.split(",")}
        assert shown and all(folds[i] != k for i in shown)  # prompted without fold k's rows


@pytest.mark.slow
def test_the_nested_student_is_not_flagged_and_its_inner_teachers_exist(finished_run):
    results = finished_run
    folds = fold_of(results)
    for split in ("fold0+1", "fold0+2", "fold1+2"):
        training = json.loads((results / "models" / "teacher" / split / "model" / "training.json").read_text())
        left = [f for f in range(3) if f not in held_out_set(split)]  # the one fold left to train on
        assert training["summary"]["train_rows"]["official"] == sum(f in left for f in folds.values())
    scores = json.loads((results / "scores" / "student.json").read_text())
    assert "cv_optimistic" not in scores and "cv_optimistic_reasons" not in scores  # the leaderboard reads these
