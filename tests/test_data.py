"""Data validation: every bad input names the file and column before training starts."""
from __future__ import annotations

import polars as pl
import pytest

from workflow_scripts.data import prepare_frames, render_texts, template_columns
from workflow_scripts.errors import OoflineError

TASK = {"type": "multiclass", "id_column": "id", "text_template": "Review: {text}", "label_column": "category"}


def test_template_renders_columns_in_order():
    frame = pl.DataFrame({"q": ["2+2?"], "a": ["4"], "e": [None]})
    texts = render_texts(frame, "Q: {q} A: {a} E: {e}", "train.csv")
    assert texts.to_list() == ["Q: 2+2? A: 4 E: "]
    assert template_columns("{q}{a}{q}") == ["q", "a"]


def test_clean_frames_targets_and_spec(movies_demo):
    train, test, _ = movies_demo
    clean_train, clean_test, spec, targets = prepare_frames(train, test, TASK)
    assert clean_train["text"][0].startswith("Review: ")
    assert spec.probability_columns == sorted(train["category"].unique().to_list())
    assert targets.select(spec.probability_columns).sum_horizontal().to_list() == [1.0] * train.height
    assert clean_test.height == test.height and "movie_name" in clean_train.columns


@pytest.mark.parametrize("mutate, expected", [
    (lambda f: f.drop("text"), "column(s) ['text'] used by task.text_template"),
    (lambda f: f.drop("id"), "id column 'id'"),
    (lambda f: f.with_columns(pl.lit("m1").alias("id")), "duplicate ids"),
    (lambda f: f.with_columns(pl.lit("  ").alias("text")).with_columns(pl.lit("").alias("text")), "empty text"),
    (lambda f: f.with_columns(pl.when(pl.col("id") == f["id"][3]).then(None).otherwise(pl.col("category")).alias("category")),
     "missing labels"),
])
def test_bad_training_data_names_the_problem(movies_demo, mutate, expected):
    train, test, _ = movies_demo
    with pytest.raises(OoflineError, match="train.csv") as error:
        prepare_frames(mutate(train), test, TASK, train_source="train.csv")
    assert expected in str(error.value)


def test_empty_text_template_result_is_rejected(movies_demo):
    train, test, _ = movies_demo
    with pytest.raises(OoflineError, match="empty text"):
        prepare_frames(train.with_columns(pl.lit("").alias("text")), test, {**TASK, "text_template": "{text}"})


def test_labelled_test_with_unseen_class_is_rejected(movies_demo):
    train, test, _ = movies_demo
    labelled_test = test.with_columns(pl.lit("mystery").alias("category"))
    with pytest.raises(OoflineError, match="never seen in training"):
        prepare_frames(train, labelled_test, TASK, test_source="test.csv")


def test_multihead_layout(debates_demo):
    train, test, _ = debates_demo
    task = {"type": "multihead", "text_template": "{text}", "heads": [
        {"name": "is_democrat", "type": "binary"}, {"name": "debate", "type": "multiclass"}]}
    _, _, spec, targets = prepare_frames(train, test, task)
    assert spec.probability_columns[0] == "is_democrat"
    assert spec.probability_columns[1:] == [f"debate={d}" for d in sorted(train["debate"].unique().to_list())]
    assert targets.select(spec.probability_columns[1:]).sum_horizontal().to_list() == [1.0] * train.height


def test_binary_label_with_other_values_is_rejected(debates_demo):
    train, test, _ = debates_demo
    task = {"type": "multilabel", "text_template": "{text}", "label_columns": ["is_democrat"]}
    with pytest.raises(OoflineError, match="must hold only 0 and 1"):
        prepare_frames(train.with_columns(pl.lit(2).alias("is_democrat")), test, task)


def test_constant_binary_label_is_rejected(debates_demo):
    train, test, _ = debates_demo
    task = {"type": "multilabel", "text_template": "{text}", "label_columns": ["is_democrat", "is_question"]}
    assert train["is_democrat"].sum() > 0  # the demo builds real positives
    with pytest.raises(OoflineError, match="binary column 'is_democrat' is always 0"):
        prepare_frames(train.with_columns(pl.lit(0).alias("is_democrat")), test, task)


@pytest.mark.parametrize("task, expected", [
    ({"type": "multiclass", "label_column": "topic"}, "label column 'topic' (config task.label_column) is missing"),
    ({"type": "multilabel", "label_columns": ["category", "topic"]}, "'topic' (config task.label_columns[1])"),
    ({"type": "multihead", "heads": [{"name": "category", "type": "multiclass"}, {"name": "t", "type": "binary", "column": "topic"}]},
     "'topic' (config task.heads[1].column)"),
])
def test_a_missing_label_column_names_the_file_and_the_config_key(movies_demo, task, expected):
    train, test, _ = movies_demo
    with pytest.raises(OoflineError) as error:
        prepare_frames(train, test, {"text_template": "{text}", **task}, train_source="data/train.csv")
    assert str(error.value).startswith("data/train.csv: ") and expected in str(error.value)


def test_label_template_builds_the_label_from_other_columns():
    """MAP's `{Category}:{Misconception}`: blanks and nulls render as NA, and the classes are the rendered labels."""
    task = {"type": "multiclass", "text_template": "{text}", "label_column": "target",
            "label_template": "{Category}:{Misconception}"}
    train = pl.DataFrame({"id": ["a", "b", "c", "d", "e"], "text": ["t1", "t2", "t3", "t4", "t5"],
                          "Category": ["True_Correct", "False_Misconception", "False_Misconception", "True_Neither",
                                       "False_Misconception"],
                          "Misconception": [None, "Incomplete", "Wrong_fraction", "", "Incomplete"]})
    clean, _, spec, targets = prepare_frames(train, None, task)
    assert clean["target"].to_list() == ["True_Correct:NA", "False_Misconception:Incomplete",
                                         "False_Misconception:Wrong_fraction", "True_Neither:NA",
                                         "False_Misconception:Incomplete"]
    assert spec.probability_columns == ["False_Misconception:Incomplete", "False_Misconception:Wrong_fraction",
                                        "True_Correct:NA", "True_Neither:NA"]
    assert targets.select(spec.probability_columns).to_numpy().argmax(axis=1).tolist() == [2, 0, 1, 3, 0]
    with pytest.raises(OoflineError, match=r"column\(s\) \['Misconception'\] used by task.label_template"):
        prepare_frames(train.drop("Misconception"), None, task, train_source="train.csv")


def test_label_columns_glob_matches_training_columns_in_file_order():
    from workflow_scripts.labels import build_label_spec

    train = pl.DataFrame({"id": ["a", "b"], "text": ["x", "y"], "lab_b": [0, 1], "other": [1, 1], "lab_a": [1, 0]})
    spec = build_label_spec({"type": "multilabel", "label_columns": "lab_*"}, train)
    assert spec.probability_columns == ["lab_b", "lab_a"]
    with pytest.raises(OoflineError, match=r"task.label_columns: the pattern 'tag_\*' matches no training column"):
        build_label_spec({"type": "multilabel", "label_columns": "tag_*"}, train)


def test_balanced_movies_demo_has_a_third_of_each_class():
    from workflow_scripts.prepare_demo import build_demo

    train, test, _ = build_demo("movies", n_train=120, n_test=30, seed=0, balanced=True)
    assert train.height == 120 and test.height == 30
    counts = dict(train["category"].value_counts().iter_rows())
    assert set(counts) == {"fresh", "rotten", "plot"} and min(counts.values()) >= 30
    with pytest.raises(OoflineError, match="demo.balanced"):
        build_demo("debates", n_train=20, n_test=5, seed=0, balanced=True)
