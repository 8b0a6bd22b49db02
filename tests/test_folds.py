"""Folds: every id in exactly one fold, groups never split, deterministic bytes."""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from workflow_scripts.data import prepare_frames
from workflow_scripts.errors import OoflineError
from workflow_scripts.folds import assign_folds, main as folds_main

TASK = {"type": "multiclass", "text_template": "{text}", "label_column": "category"}


@pytest.fixture(scope="module")
def prepared(movies_demo):
    train, test, _ = movies_demo
    clean, _, spec, targets = prepare_frames(train, test, TASK)
    return clean, spec, targets.select(spec.probability_columns).to_numpy()


@pytest.mark.parametrize("scheme", ["stratified", "group", "stratified_group", "random", "multilabel_stratified"])
def test_each_id_in_exactly_one_fold(prepared, scheme):
    clean, spec, targets = prepared
    folds = assign_folds(clean["id"].to_list(), targets, spec, scheme, 3, 42, clean["movie_name"].to_list())
    assert folds["id"].to_list() == clean["id"].to_list()
    assert sorted(folds["fold"].unique().to_list()) == [0, 1, 2]
    if "group" in scheme:
        per_group = pl.DataFrame({"g": clean["movie_name"], "f": folds["fold"]}).group_by("g").agg(pl.col("f").n_unique())
        assert per_group["f"].max() == 1


def test_stratified_keeps_class_shares(prepared):
    clean, spec, targets = prepared
    folds = assign_folds(clean["id"].to_list(), targets, spec, "stratified", 3, 42)["fold"].to_numpy()
    for fold in range(3):
        shares = targets[folds == fold].mean(axis=0)
        assert np.abs(shares - targets.mean(axis=0)).max() < 0.06


def test_multilabel_stratified_balances_every_label(debates_demo):
    from workflow_scripts.labels import LabelSpec

    train = debates_demo[0]
    task = {"type": "multilabel", "text_template": "{text}", "label_columns": ["is_democrat", "is_republican", "is_question"]}
    clean, _, spec, targets = prepare_frames(train, None, task)
    matrix = targets.select(spec.probability_columns).to_numpy()
    folds = assign_folds(clean["id"].to_list(), matrix, spec, "multilabel_stratified", 4, 42)["fold"].to_numpy()
    for fold in range(4):
        assert np.abs(matrix[folds == fold].mean(axis=0) - matrix.mean(axis=0)).max() < 0.05


def test_same_config_gives_byte_identical_file(tmp_path, prepared):
    clean, spec, targets = prepared
    clean.write_parquet(tmp_path / "train.parquet")
    pl.DataFrame({"id": clean["id"]}).hstack(pl.DataFrame(targets, schema=spec.probability_columns)).write_parquet(tmp_path / "t.parquet")
    spec.save(tmp_path / "labels.json")
    outputs = []
    for run in range(2):
        out = tmp_path / f"folds{run}.parquet"
        folds_main(["--train", str(tmp_path / "train.parquet"), "--targets", str(tmp_path / "t.parquet"),
                    "--labels", str(tmp_path / "labels.json"), "--scheme", "stratified_group", "--n-folds", "3",
                    "--seed", "7", "--group-column", "movie_name", "--out", str(out)])
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]


def test_bad_fold_settings(prepared):
    clean, spec, targets = prepared
    with pytest.raises(OoflineError, match="folds.n_folds"):
        assign_folds(clean["id"].to_list(), targets, spec, "stratified", 1, 0)
    with pytest.raises(OoflineError, match="needs folds.group_column"):
        assign_folds(clean["id"].to_list(), targets, spec, "group", 3, 0)
    with pytest.raises(OoflineError, match="fewer than folds.n_folds"):
        assign_folds(clean["id"].to_list(), targets, spec, "group", 3, 0, ["a", "b"] * (len(clean) // 2))
