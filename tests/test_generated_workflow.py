"""A real Snakemake run of the generated-data graph on tiny models: generation, soft labels, a staged
student, label correction, answers and votes; one more generator seed builds only that seed's data."""
from __future__ import annotations

import copy
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
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
    "label_correction": {"teacher": {"top_percent": 10, "nested": False}},  # 2 folds: no inner teachers
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
    # every raw row is accounted for: unparsed (as the generator reported), removed as a duplicate, or kept
    raw_report = json.loads((results / "generated" / "tiny" / "raw" / "seed0.json").read_text())
    assert (dedup_report["input_rows"], dedup_report["unparsed"]) == (raw_report["attempts"], raw_report["failed"])
    assert dedup_report["kept"] == generated.height
    assert dedup_report["unparsed"] + sum(dedup_report["removed"].values()) + dedup_report["kept"] == raw_report["attempts"]
    soft = pl.read_parquet(results / "soft_labels" / "teacher" / "tiny-seed0.parquet")
    assert soft["id"].to_list() == generated["id"].to_list()
    assert (soft.select(["fresh", "plot", "rotten"]).sum_horizontal() - 1).abs().max() < 1e-5
    training = json.loads((results / "models" / "student" / "fold0" / "adapter" / "training.json").read_text())
    assert training["summary"]["train_rows"]["gen"] == generated.height


@pytest.mark.slow
def test_label_correction_and_votes(finished_run):
    results = finished_run / "results"
    changes = pl.read_csv(results / "label_correction" / "teacher.changes.csv", schema_overrides={"id": pl.String})
    # by hand: the 6 rows (10% of 60) with the highest cross-entropy of the teacher's OOF against the label,
    # each relabelled to the teacher's top class unless that is its label already
    classes = ["fresh", "plot", "rotten"]
    train = pl.read_parquet(results / "data" / "train.parquet").select(pl.col("id").cast(pl.String), "category")
    oof = pl.read_parquet(results / "oof" / "teacher.parquet").with_columns(pl.col("id").cast(pl.String))
    rows = train.join(oof, on="id", how="left")
    probs = np.clip(rows.select(classes).to_numpy(), 1e-7, 1 - 1e-7)
    label_index = np.array([classes.index(label) for label in rows["category"]])
    losses = -np.log(probs[np.arange(len(rows)), label_index])
    worst = sorted(range(len(rows)), key=lambda i: (-losses[i], rows["id"][i]))[:6]
    expected = {(rows["id"][i], rows["category"][i], classes[int(probs[i].argmax())]) for i in worst
                if classes[int(probs[i].argmax())] != rows["category"][i]}
    assert set(zip(changes["id"], changes["old"], changes["new"])) == expected
    summary = json.loads((results / "label_correction" / "teacher.json").read_text())
    assert (summary["selected_rows"], summary["changed_rows"]) == (6, len(expected))
    assert (results / "models" / "corrected" / "fold1" / "model" / "training.json").exists()
    score = json.loads((results / "votes" / "both" / "score.json").read_text())
    # majority by hand: the most frequent answer per problem over both prompts' samples, scored on the dev set
    samples = pl.concat([pl.read_parquet(results / "answers" / "tiny" / f"{prompt}.parquet").select("id", "answer")
                         for prompt in ("cot_boxed", "direct")])
    gold = dict(pl.read_parquet(results / "data" / "math_problems.parquet").select("id", "answer").iter_rows())
    votes = pl.read_parquet(results / "votes" / "both" / "votes.parquet").filter(pl.col("strategy") == "majority")
    assert sorted(votes["id"].to_list()) == sorted(gold)
    correct = answered = 0
    for row_id, voted in votes.select("id", "answer").iter_rows():
        counts = Counter(str(a).strip() for a in samples.filter(pl.col("id") == row_id)["answer"] if a is not None)
        top = max(counts.values(), default=0)
        assert voted in ({a for a, n in counts.items() if n == top} or {None})  # a tie may go either way
        answered += voted is not None
        correct += voted is not None and voted == str(gold[row_id]).strip()
    assert score["strategies"]["majority"] == {"accuracy": correct / len(gold), "correct": correct, "n": len(gold),
                                               "n_answered": answered}


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
