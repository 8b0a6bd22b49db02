"""A real Snakemake run of the generated-data graph on tiny models: generation, soft labels, a staged
student, label correction, answers and votes; one more generator seed builds only that seed's data."""
from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_workflow import planned_jobs, snakemake  # noqa: E402

CONFIG = {
    "demo": {"dataset": "movies", "n_train": 60, "n_test": 12, "seed": 0},
    "data": {"train": "results/demo/train.csv", "test": "results/demo/test.csv",
             "sample_submission": "results/demo/sample_submission.csv"},
    "task": {"type": "multiclass", "text_template": "Review: {text}", "label_column": "category", "metric": "map@3"},
    "folds": {"scheme": "stratified", "n_folds": 2, "seed": 0},
    "model_defaults": {"max_length": 32, "epochs": 1, "batch_size": 8, "resources": {"threads": 1}},
    "models": {
        "teacher": {"source": "tiny:llama", "kind": "encoder_full", "lr": 1e-3},
        "student": {"source": "tiny:llama", "kind": "decoder_lora", "lr": 2e-3,
                    "extra_data": {"gen": "results/soft_labels/teacher/tiny-seed0.parquet"},
                    "stages": [{"epochs": 1, "data": ["official", "gen"]}, {"epochs": 1, "data": ["official"]}]},
        "corrected": {"source": "tiny:llama", "kind": "encoder_full", "lr": 1e-3, "corrected_by": "teacher"},
    },
    "language_models": {"tiny": {"source": "tiny:llama"}},
    "generators": {"tiny": {"model": "tiny", "fields": ["text"], "format": "text", "template": "Examples:\n{examples}\nWrite one more.",
                            "n_rows": 4, "seeds": [0], "examples_per_prompt": 2, "max_new_tokens": 16, "batch_size": 4}},
    "soft_labels": {"teacher": {"datasets": ["tiny-seed0"]}},
    "label_correction": {"teacher": {"top_percent": 10}},
    "answers": {"n_problems": 3, "samples": 2, "max_new_tokens": 12, "answer_regex": "(\\d+)"},
    "votes": {"both": {"answers": ["tiny/cot_boxed", "tiny/direct"]}},
}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("generated")
    (workdir / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    result = snakemake(workdir)
    assert result.returncode == 0, result.stderr[-4000:]
    return workdir


@pytest.mark.slow
def test_generated_rows_soft_labels_and_staged_student(finished_run):
    results = finished_run / "results"
    generated = pl.read_parquet(results / "generated" / "tiny" / "seed0.parquet")
    assert generated.height >= 1 and generated["text"].str.len_chars().min() > 0
    dedup_report = json.loads((results / "generated" / "tiny" / "seed0.dedup.json").read_text())
    assert dedup_report  # counts of exact and near duplicates removed
    soft = pl.read_parquet(results / "soft_labels" / "teacher" / "tiny-seed0.parquet")
    assert soft["id"].to_list() == generated["id"].to_list()
    assert (soft.select(["fresh", "plot", "rotten"]).sum_horizontal() - 1).abs().max() < 1e-5
    training = json.loads((results / "models" / "student" / "fold0" / "adapter" / "training.json").read_text())
    assert training["summary"]["train_rows"]["gen"] == generated.height


@pytest.mark.slow
def test_label_correction_and_votes(finished_run):
    results = finished_run / "results"
    changes = pl.read_csv(results / "label_correction" / "teacher.changes.csv")
    assert changes.height <= 6  # 10% of 60 rows
    assert (results / "models" / "corrected" / "fold1" / "model" / "training.json").exists()
    score = json.loads((results / "votes" / "both" / "score.json").read_text())
    assert "majority" in json.dumps(score)


@pytest.mark.slow
def test_one_more_seed_builds_only_that_seed(finished_run):
    config = copy.deepcopy(CONFIG)
    config["generators"]["tiny"]["seeds"] = [0, 1]
    config["soft_labels"]["teacher"]["datasets"] = ["tiny-seed0", "tiny-seed1"]
    (finished_run / "config.yaml").write_text(yaml.safe_dump(config))
    try:
        jobs = planned_jobs(snakemake(finished_run, "-n"))
    finally:
        (finished_run / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    assert {rule for rule, _ in jobs} == {"generate_rows", "deduplicate_rows", "teacher_predictions", "soft_labels", "all"}, jobs
    assert all("seed=1" in w or "tiny-seed1" in w for rule, w in jobs if rule != "all")
