"""A real Snakemake run of the whole classification graph on tiny data, then incremental reruns."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent

TINY_CONFIG = {
    "demo": {"dataset": "movies", "n_train": 90, "n_test": 20, "seed": 0},
    "data": {"train": "results/demo/train.csv", "test": "results/demo/test.csv",
             "sample_submission": "results/demo/sample_submission.csv"},
    "task": {"type": "multiclass", "text_template": "Review: {text}", "label_column": "category", "metric": "map@3"},
    "folds": {"scheme": "stratified_group", "group_column": "movie_name", "n_folds": 2, "seed": 1},
    "model_defaults": {"max_length": 32, "epochs": 1, "batch_size": 8, "resources": {"threads": 1}},
    "models": {
        "qlora": {"source": "tiny:llama", "kind": "decoder_lora", "quantization": "4bit", "r": 4, "alpha": 8, "lr": 2e-3},
        "full": {"source": "tiny:llama", "kind": "encoder_full", "lr": 1e-3},
    },
}


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
               "--cores", "2", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=workdir, timeout=900)


def planned_jobs(result: subprocess.CompletedProcess) -> set[tuple[str, str]]:
    """(rule, wildcards) of every job a dry run would execute."""
    jobs, rule = set(), None
    for line in result.stdout.splitlines():
        match = re.match(r"^(?:localrule|rule) (\w+):", line)
        if match:
            rule = match.group(1)
            jobs.add((rule, ""))
        wildcards = re.match(r"^\s+wildcards: (.*)$", line)
        if wildcards and rule:
            jobs.discard((rule, ""))
            jobs.add((rule, wildcards.group(1)))
    return jobs


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("workflow")
    (workdir / "config.yaml").write_text(yaml.safe_dump(TINY_CONFIG))
    result = snakemake(workdir)
    assert result.returncode == 0, result.stderr[-4000:]
    return workdir


@pytest.mark.slow
def test_run_builds_every_target(finished_run):
    results = finished_run / "results"
    train = pl.read_csv(results / "demo" / "train.csv")
    folds = pl.read_parquet(results / "folds.parquet")
    assert sorted(folds["id"].to_list()) == sorted(train["id"].to_list())
    for model in ("qlora", "full"):
        oof = pl.read_parquet(results / "oof" / f"{model}.parquet")
        assert oof["id"].to_list() == folds["id"].to_list()
        assert oof.columns == ["id", "fold", "fresh", "plot", "rotten"]
        test = pl.read_parquet(results / "test" / f"{model}.parquet")
        assert test.height == 20
        scores = yaml.safe_load((results / "scores" / f"{model}.json").read_text())
        assert scores["metric"] == "map@3" and set(scores["folds"]) == {"0", "1"}
        assert 0 < scores["score"] <= 1
    for fold in (0, 1):
        assert (results / "models" / "qlora" / f"fold{fold}" / "adapter" / "adapter_model.safetensors").exists()
        assert (results / "models" / "qlora" / f"fold{fold}" / "merged" / "model.safetensors").exists()
        assert (results / "models" / "full" / f"fold{fold}" / "model" / "model.safetensors").exists()
    assert not (results / "work").exists() or not any((results / "work").rglob("*.safetensors"))


@pytest.mark.slow
def test_finished_run_has_nothing_to_do(finished_run):
    result = snakemake(finished_run, "-n")
    assert result.returncode == 0
    assert "Nothing to be done" in result.stdout + result.stderr


@pytest.mark.slow
def test_changing_one_learning_rate_reruns_exactly_that_model(finished_run):
    config = yaml.safe_load((finished_run / "config.yaml").read_text())
    config["models"]["qlora"]["lr"] = 1e-3
    (finished_run / "config.yaml").write_text(yaml.safe_dump(config))
    try:
        jobs = planned_jobs(snakemake(finished_run, "-n"))
    finally:
        (finished_run / "config.yaml").write_text(yaml.safe_dump(TINY_CONFIG))
    rules = {rule for rule, _ in jobs}
    assert rules == {"train_adapter", "merge_adapter", "predict_fold", "oof", "all"}, jobs
    assert all("model=qlora" in wildcards for rule, wildcards in jobs if rule != "all")
    assert len([1 for rule, _ in jobs if rule == "train_adapter"]) == 2
