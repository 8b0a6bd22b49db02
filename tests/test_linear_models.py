"""tfidf_linear: per-fold OOF equals an independent scikit-learn run on the same folds; nothing is pickled."""
from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from workflow_scripts import linear_models
from workflow_scripts.errors import OoflineError, run_cli
from workflow_scripts.io import write_parquet
from workflow_scripts.labels import Head, LabelSpec

WORDS = {"a": ["apple", "pear", "plum"], "b": ["car", "bus", "train"], "c": ["red", "blue", "green"]}


def make_task(tmp_path, spec, labels_of_row, n_rows=90, n_test=12, seed=0):
    """Rows whose words carry their labels (plus noise); clean train/test, targets, folds, labels files."""
    rng = np.random.default_rng(seed)
    noise = ["the", "a", "of", "and", "it", "is", "was", "very"]
    texts, targets = [], []
    for i in range(n_rows + n_test):
        target, cues = labels_of_row(rng)
        words = list(rng.choice(noise, 6)) + [rng.choice(WORDS[c]) for c in cues]
        if rng.random() < 0.2:  # some rows carry a wrong cue, so probabilities are not all near 0/1
            words.append(rng.choice(sum(WORDS.values(), [])))
        rng.shuffle(words)
        texts.append(" ".join(words))
        targets.append(target)
    ids = [f"r{i}" for i in range(n_rows + n_test)]
    train = pl.DataFrame({"id": ids[:n_rows], "text": texts[:n_rows]})
    test = pl.DataFrame({"id": ids[n_rows:], "text": texts[n_rows:]})
    write_parquet(train, tmp_path / "train.parquet")
    write_parquet(test, tmp_path / "test.parquet")
    matrix = np.array(targets[:n_rows], dtype=np.float32)
    write_parquet(train.select("id").hstack(pl.DataFrame(matrix, schema=spec.probability_columns)),
                  tmp_path / "targets.parquet")
    folds = np.arange(n_rows) % 3
    write_parquet(pl.DataFrame({"id": ids[:n_rows], "fold": folds}), tmp_path / "folds.parquet")
    spec.save(tmp_path / "labels.json")
    return train, test, matrix, folds


def run_fold(tmp_path, fold, model_config):
    folder = tmp_path / f"fold{fold}"
    argv = ["--train", str(tmp_path / "train.parquet"), "--test", str(tmp_path / "test.parquet"),
            "--folds", str(tmp_path / "folds.parquet"), "--targets", str(tmp_path / "targets.parquet"),
            "--labels", str(tmp_path / "labels.json"), "--fold", str(fold),
            "--model-config", json.dumps(model_config), "--model-out", str(folder / "linear"),
            "--valid-out", str(folder / "valid.parquet"), "--test-out", str(folder / "test.parquet")]
    assert run_cli(linear_models.main, argv) == 0
    return pl.read_parquet(folder / "valid.parquet"), pl.read_parquet(folder / "test.parquet"), folder / "linear"


def sklearn_features(train_texts, other_texts, word, char, min_df=1):
    from scipy.sparse import hstack
    from sklearn.feature_extraction.text import TfidfVectorizer

    blocks_train, blocks_other = [], []
    for analyzer, ngrams in (("word", word), ("char_wb", char)):
        if ngrams:
            vectorizer = TfidfVectorizer(analyzer=analyzer, ngram_range=tuple(ngrams), min_df=min_df, sublinear_tf=True)
            blocks_train.append(vectorizer.fit_transform(train_texts))
            blocks_other.append(vectorizer.transform(other_texts))
    return hstack(blocks_train).tocsr(), hstack(blocks_other).tocsr()


def test_multiclass_oof_equals_independent_sklearn(tmp_path):
    spec = LabelSpec("multiclass", (Head("label", "multiclass", "label", ("a", "b", "c")),))

    def row(rng):
        k = int(rng.integers(0, 3))
        return np.eye(3)[k], ["abc"[k]]

    train, test, _, folds = make_task(tmp_path, spec, row)
    config = {"kind": "tfidf_linear", "word_ngrams": [1, 2], "char_ngrams": [2, 4], "min_df": 1, "C": 2.0, "seed": 3}
    from sklearn.linear_model import LogisticRegression

    texts = np.array(train["text"].to_list(), dtype=object)
    classes = np.array(pl.read_parquet(tmp_path / "targets.parquet").select("a", "b", "c").to_numpy().argmax(axis=1))
    for fold in range(3):
        valid, test_frame, folder = run_fold(tmp_path, fold, config)
        held = folds == fold
        x_train, x_valid = sklearn_features(list(texts[~held]), list(texts[held]), [1, 2], [2, 4])
        _, x_test = sklearn_features(list(texts[~held]), test["text"].to_list(), [1, 2], [2, 4])
        reference = LogisticRegression(C=2.0, max_iter=1000, random_state=3).fit(x_train, classes[~held])
        assert valid["id"].to_list() == train["id"].filter(pl.Series(held)).to_list()
        np.testing.assert_allclose(valid.select("a", "b", "c").to_numpy(), reference.predict_proba(x_valid), atol=1e-4)
        np.testing.assert_allclose(test_frame.select("a", "b", "c").to_numpy(), reference.predict_proba(x_test),
                                   atol=1e-4)
        # it learned: the held-out accuracy is far above the 1/3 of guessing
        assert (valid.select("a", "b", "c").to_numpy().argmax(axis=1) == classes[held]).mean() > 0.7
        saved = sorted(path.name for path in folder.iterdir())
        assert saved == ["heads.json", "heads.safetensors", "idf.safetensors", "vocabulary.json"]


def test_multilabel_is_one_vs_rest_like_sklearn(tmp_path):
    spec = LabelSpec("multilabel", tuple(Head(name, "binary", name) for name in ("a", "b", "c")))

    def row(rng):
        on = rng.random(3) < 0.4
        return on.astype(float), [c for c, flag in zip("abc", on) if flag]

    train, test, matrix, folds = make_task(tmp_path, spec, row, n_rows=120)
    config = {"kind": "tfidf_linear", "word_ngrams": [1, 1], "char_ngrams": None, "C": 4.0, "seed": 0}
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    texts = np.array(train["text"].to_list(), dtype=object)
    for fold in range(3):
        valid, _, _ = run_fold(tmp_path, fold, config)
        held = folds == fold
        x_train, x_valid = sklearn_features(list(texts[~held]), list(texts[held]), [1, 1], None)
        reference = OneVsRestClassifier(LogisticRegression(C=4.0, max_iter=1000, random_state=0))
        reference.fit(x_train, matrix[~held].astype(int))
        np.testing.assert_allclose(valid.select("a", "b", "c").to_numpy(), reference.predict_proba(x_valid), atol=1e-4)


def test_settings_need_an_analyzer():
    with pytest.raises(OoflineError, match="word_ngrams or char_ngrams"):
        linear_models.tfidf_settings({"word_ngrams": None, "char_ngrams": None})


def two_class_multiclass_row(rng):
    k = int(rng.integers(0, 2))
    return np.eye(2)[k], ["ab"[k]]


def multihead_row(rng):
    """A 2-class multiclass head `pair` (cue a or b) and a 3-class head `colour` (cue c, or none)."""
    pair = int(rng.integers(0, 2))
    colour = int(rng.integers(0, 3))
    return np.concatenate([np.eye(2)[pair], np.eye(3)[colour]]), ["ab"[pair]] + (["c"] if colour == 2 else [])


TWO_CLASS_TASKS = {
    "binary_as_multiclass": (LabelSpec("multiclass", (Head("label", "multiclass", "label", ("no", "yes")),)),
                             two_class_multiclass_row),
    "multihead_2_and_3_classes": (LabelSpec("multihead", (Head("pair", "multiclass", "pair", ("a", "b")),
                                                          Head("colour", "multiclass", "colour", ("x", "y", "z")))),
                                  multihead_row),
}


def sklearn_head_probabilities(spec, matrix, train_rows, x_train, x_other):
    """scikit-learn's own predict_proba per head, placed in the head's columns (a class the rows lack: 0)."""
    from sklearn.linear_model import LogisticRegression

    expected = np.zeros((x_other.shape[0], matrix.shape[1]))
    for head, columns in spec.head_slices():
        labels = matrix[train_rows][:, columns].argmax(axis=1)
        reference = LogisticRegression(C=2.0, max_iter=1000, random_state=3).fit(x_train, labels)
        expected[:, [columns.start + k for k in reference.classes_]] = reference.predict_proba(x_other)
    return expected


@pytest.mark.parametrize("task", sorted(TWO_CLASS_TASKS))
def test_two_class_heads_and_folds_missing_a_class_equal_sklearn(tmp_path, task):
    """A 2-class multiclass head is one binary model in scikit-learn (coef_ has one row): both columns right."""
    spec, row = TWO_CLASS_TASKS[task]
    train, test, matrix, folds = make_task(tmp_path, spec, row)
    if spec.task == "multihead":
        # every `colour=z` row in fold 0: fold 0's model trains on two of the head's three classes
        folds = np.where(matrix[:, 4] == 1, 0, np.where(np.arange(len(folds)) % 2 == 0, 1, 2))
        write_parquet(pl.DataFrame({"id": train["id"], "fold": folds}), tmp_path / "folds.parquet")
    config = {"kind": "tfidf_linear", "word_ngrams": [1, 1], "char_ngrams": None, "min_df": 1, "C": 2.0, "seed": 3}
    texts = np.array(train["text"].to_list(), dtype=object)
    columns = spec.probability_columns
    for fold in range(3):
        valid, test_frame, _ = run_fold(tmp_path, fold, config)
        held = folds == fold
        x_train, x_valid = sklearn_features(list(texts[~held]), list(texts[held]), [1, 1], None)
        _, x_test = sklearn_features(list(texts[~held]), test["text"].to_list(), [1, 1], None)
        np.testing.assert_allclose(valid.select(columns).to_numpy(),
                                   sklearn_head_probabilities(spec, matrix, ~held, x_train, x_valid), atol=1e-4)
        np.testing.assert_allclose(test_frame.select(columns).to_numpy(),
                                   sklearn_head_probabilities(spec, matrix, ~held, x_train, x_test), atol=1e-4)
        # the 2-class head learned: both classes predicted, well above guessing
        pair = valid.select(columns[:2]).to_numpy()
        assert set(pair.argmax(axis=1).tolist()) == {0, 1}
        assert (pair.argmax(axis=1) == matrix[held][:, :2].argmax(axis=1)).mean() > 0.75
    if spec.task == "multihead":  # fold 0 never saw `colour=z`: it gets probability 0 there, the rest sums to 1
        valid, _, _ = run_fold(tmp_path, 0, config)
        assert (valid["colour=z"] == 0).all()
        np.testing.assert_allclose(valid.select("colour=x", "colour=y").to_numpy().sum(axis=1), 1.0, atol=1e-6)
