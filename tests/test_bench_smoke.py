"""Tiny runs of the classification-core benchmarks (bench/dag.py, train_padding.py, predict_sorting.py), so they keep working."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def load_bench(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def minilm_dir(tmp_path_factory) -> str:
    from workflow_scripts.prepare_model import materialise

    return str(materialise("packaged:minilm", tmp_path_factory.mktemp("minilm") / "base"))


@pytest.mark.slow
def test_train_padding_times_every_variant_on_the_same_number_of_samples(minilm_dir):
    lines = []
    result = load_bench("train_padding").run(rows=24, batches=2, batch_size=4, max_length=64, repeats=1,
                                             model_dir=minilm_dir, log=lines.append)
    assert set(result["medians"]) == {"pad_to_max", "random_dynamic", "grouped_dynamic"}
    assert all(rate > 0 for rate in result["medians"].values())
    tokens = result["epoch_tokens"]  # per epoch, padding included: grouping pads least, padding to 64 most
    assert tokens["grouped_dynamic"] <= tokens["random_dynamic"] < tokens["pad_to_max"] == 24 * 64
    assert sum("samples/s" in line for line in lines) == 3


@pytest.mark.slow
def test_predict_sorting_gives_identical_predictions_in_the_original_order(minilm_dir):
    result = load_bench("predict_sorting").run(rows=20, batch_size=8, max_length=64, repeats=1,
                                               model_dir=minilm_dir, log=lambda line: None)
    assert result["max_abs_difference"] <= 1e-5
    assert set(result["medians"]) == {"unsorted_pad_to_max", "unsorted_dynamic", "sorted_dynamic"}


@pytest.mark.slow
def test_dag_dry_run_counts_the_jobs_of_the_generated_config(tmp_path):
    result = load_bench("dag").run(n_models=2, n_folds=2, repeats=1, min_jobs=0, noop=False, root=tmp_path,
                                   log=lambda line: None)
    # at least: per model and fold one training, one merge and one prediction job
    assert result["dry_run_jobs"] >= 2 * 2 * 3
    assert result["dry_run_s"] > 0 and result["dry_run_cpu_s"] > 0


def test_cpu_baseline_tasks_are_what_a_user_brings_and_the_plain_baseline_is_out_of_fold():
    """bench/cpu_baseline.py: the multilabel task has several true labels per row, and the plain TF-IDF + LR
    baseline predicts a fold from the other folds only (checked by hand) and from the partition alone."""
    import numpy as np
    import polars as pl

    from workflow_scripts.labels import build_label_spec

    bench = load_bench("cpu_baseline")
    train, test, overlay = bench.multilabel_task(120, 10)
    labels = [c for c in train.columns if c.startswith("lab_")]
    assert len(labels) >= 8 and not set(labels) & set(test.columns)
    assert (train.select(labels).sum_horizontal() > 1).all()  # party or moderator, speaker and debate at least
    spec = build_label_spec(overlay["task"], train)
    targets = spec.targets(train)
    folds = pl.DataFrame({"id": train["id"], "fold": np.arange(train.height) % 3})
    oof = bench.plain_tfidf_oof(train, folds, spec, targets, "{text}")
    assert oof.shape == targets.shape
    # fold 0's rows are predicted by a model fitted on folds 1 and 2 only, by hand with scikit-learn
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    held = (folds["fold"] == 0).to_numpy()
    texts = train["text"].to_list()
    vectorizer = TfidfVectorizer().fit([t for t, h in zip(texts, held) if not h])
    by_hand = OneVsRestClassifier(LogisticRegression(max_iter=1000)).fit(
        vectorizer.transform([t for t, h in zip(texts, held) if not h]), targets[~held])
    np.testing.assert_allclose(oof[held], by_hand.predict_proba(vectorizer.transform([t for t, h in zip(texts, held) if h])),
                               atol=1e-9)
    moved = folds.with_columns(pl.when(pl.col("fold") == 0).then(1).when(pl.col("fold") == 1).then(0)
                               .otherwise(pl.col("fold")).alias("fold"))
    # swapping fold labels 0 and 1 leaves every row's training set the same: identical OOF
    np.testing.assert_allclose(bench.plain_tfidf_oof(train, moved, spec, targets, "{text}"), oof)


def test_dag_sweep_config_is_a_valid_sweep_of_the_size_it_says(tmp_path):
    """bench/dag.py --sweep times dry runs of this config: 2 ranks x n learning rates of a GPU LoRA model, and
    every pair of the first 8 variants at two Top@k values (56 ensembles), both picked nested."""
    from workflow_scripts.config_check import checked_config_and_sweeps

    (tmp_path / "results" / "demo").mkdir(parents=True)
    config, sweeps = checked_config_and_sweeps(load_bench("dag").sweep_config(6), tmp_path)
    assert len(sweeps["qwen"].variants) == 12 and len(sweeps["pairs"].variants) == 56
    assert all(model["resources"]["gpu"] == 1 for model in config["models"].values())
