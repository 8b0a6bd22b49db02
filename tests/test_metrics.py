"""Every metric against a straightforward reference (sklearn or a plain loop) on random data."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from workflow_scripts import metrics as m
from workflow_scripts.errors import OoflineError
from workflow_scripts.labels import Head, LabelSpec


RNG = np.random.default_rng(0)


def reference_apk(actual, predicted, k):
    """ml_metrics.apk, the code Kaggle's MAP@k kernels copy."""
    if len(predicted) > k:
        predicted = predicted[:k]
    score, hits = 0.0, 0.0
    for i, p in enumerate(predicted):
        if p in actual and p not in predicted[:i]:
            hits += 1.0
            score += hits / (i + 1.0)
    if not actual:
        return 0.0
    return score / min(len(actual), k)


def test_map_at_3_one_label_scores_by_rank():
    assert m.map_at_k([["a"]], [["a", "b", "c"]], 3) == 1.0
    assert m.map_at_k([["a"]], [["b", "a", "c"]], 3) == 0.5
    assert m.map_at_k([["a"]], [["b", "c", "a"]], 3) == pytest.approx(1 / 3)
    assert m.map_at_k([["a"]], [["b", "c", "d", "a"]], 3) == 0.0
    # a repeated correct prediction earns nothing the second time
    assert m.map_at_k([["a"]], [["a", "a", "a"]], 3) == 1.0


@pytest.mark.parametrize("k", [1, 3, 5, 25])
def test_map_at_k_matches_plain_loop_on_random_rankings(k):
    actual = [list(RNG.choice(30, size=RNG.integers(1, 6), replace=False)) for _ in range(300)]
    predicted = [list(RNG.choice(30, size=RNG.integers(1, 30), replace=True)) for _ in range(300)]
    expected = np.mean([reference_apk(a, p, k) for a, p in zip(actual, predicted)])
    assert m.map_at_k(actual, predicted, k) == pytest.approx(expected)


def test_recall_at_k_matches_plain_loop():
    actual = [set(RNG.choice(20, size=RNG.integers(1, 5), replace=False)) for _ in range(200)]
    predicted = [list(RNG.permutation(20)) for _ in range(200)]
    expected = np.mean([len(a & set(p[:7])) / len(a) for a, p in zip(actual, predicted)])
    assert m.recall_at_k(actual, predicted, 7) == pytest.approx(expected)
    assert m.recall_at_k([["x"], []], [["x"], ["y"]], 1) == 1.0  # rows without relevant items are skipped


def test_map_from_probabilities_matches_map_of_sorted_classes():
    probs = RNG.random((500, 12)).astype(np.float32)
    probs[:50, :6] = 0.5  # ties: a stable sort puts the lower class index first
    true_index = RNG.integers(0, 12, size=500)
    ranked = np.argsort(-probs, axis=1, kind="stable")
    for k in (1, 3, 10):
        expected = m.map_at_k([[t] for t in true_index], ranked.tolist(), k)
        assert m.map_at_k_from_probabilities(probs, true_index, k) == pytest.approx(expected)


def test_top_k_indices_match_stable_sort_with_ties():
    probs = RNG.integers(0, 4, size=(400, 9)).astype(np.float32)  # many ties
    for k in (1, 3, 9, 20):
        expected = np.argsort(-probs, axis=1, kind="stable")[:, : min(k, 9)]
        np.testing.assert_array_equal(m.top_k_indices(probs, k), expected)


def test_f1_variants_match_sklearn():
    y_true = RNG.integers(0, 2, size=(300, 8))
    y_pred = RNG.integers(0, 2, size=(300, 8))
    y_pred[:, 3] = 0
    y_true[:, 3] = 0  # a label with no positives at all: F1 0 like zero_division=0
    assert m.macro_f1(y_true, y_pred) == pytest.approx(skm.f1_score(y_true, y_pred, average="macro", zero_division=0))
    assert m.micro_f1(y_true, y_pred) == pytest.approx(skm.f1_score(y_true, y_pred, average="micro", zero_division=0))
    np.testing.assert_allclose(m.per_label_f1(y_true, y_pred), skm.f1_score(y_true, y_pred, average=None, zero_division=0))


def test_accuracy_log_loss_and_multiclass_f1_match_sklearn():
    probs = RNG.random((400, 6))
    probs[0, 2] = 0.0
    probs /= probs.sum(axis=1, keepdims=True)
    true_index = RNG.integers(0, 6, size=400)
    true_index[0] = 2  # zero probability on the truth: clipped, not infinite
    assert np.isfinite(m.log_loss(true_index, probs))
    clipped = np.clip(probs, 1e-15, 1 - 1e-15)
    assert m.log_loss(true_index, probs) == pytest.approx(skm.log_loss(true_index, clipped, labels=range(6)), rel=1e-6)
    predicted = probs.argmax(axis=1)
    assert m.accuracy(true_index, predicted) == pytest.approx(skm.accuracy_score(true_index, predicted))
    assert m.multiclass_macro_f1(true_index, predicted) == pytest.approx(skm.f1_score(true_index, predicted, average="macro"))


def multihead_spec() -> LabelSpec:
    return LabelSpec(
        "multihead",
        (
            Head("sad", "binary", "sad"),
            Head("place", "multiclass", "place", ("home", "school", "work")),
            Head("angry", "binary", "angry"),
        ),
    )


def test_task_scores_mean_f1_for_multihead_matches_per_head_sklearn():
    spec = multihead_spec()
    n = 250
    probs = RNG.random((n, 5))
    place = RNG.integers(0, 3, size=n)
    targets = np.zeros((n, 5))
    targets[:, 0] = RNG.integers(0, 2, size=n)
    targets[np.arange(n), 1 + place] = 1
    targets[:, 4] = RNG.integers(0, 2, size=n)
    scores = m.task_scores(spec, probs, targets, "mean_f1", thresholds={"angry": 0.3})
    f1_sad = skm.f1_score(targets[:, 0], probs[:, 0] >= 0.5)
    f1_place = skm.f1_score(place, probs[:, 1:4].argmax(axis=1), average="macro")
    f1_angry = skm.f1_score(targets[:, 4], probs[:, 4] >= 0.3)
    assert scores["score"] == pytest.approx((f1_sad + f1_place + f1_angry) / 3)
    assert scores["f1/angry"] == pytest.approx(f1_angry)
    assert scores["metric"] == "mean_f1"


def test_task_scores_multilabel_macro_f1_at_thresholds_matches_sklearn():
    spec = LabelSpec("multilabel", tuple(Head(f"l{i}", "binary", f"l{i}") for i in range(4)))
    probs = RNG.random((200, 4))
    targets = RNG.integers(0, 2, size=(200, 4))
    thresholds = {"l0": 0.2, "l1": 0.7}
    cut = np.array([0.2, 0.7, 0.5, 0.5])
    scores = m.task_scores(spec, probs, targets, "macro_f1", thresholds)
    assert scores["score"] == pytest.approx(skm.f1_score(targets, probs >= cut, average="macro"))
    assert scores["micro_f1"] == pytest.approx(skm.f1_score(targets, probs >= cut, average="micro"))
    assert scores["accuracy"] == pytest.approx(skm.accuracy_score(targets, probs >= cut))


def test_task_scores_multiclass_map_and_extras():
    spec = LabelSpec("multiclass", (Head("label", "multiclass", "label", tuple("abcdefg")),))
    probs = RNG.random((300, 7))
    probs /= probs.sum(axis=1, keepdims=True)
    true_index = RNG.integers(0, 7, size=300)
    targets = np.eye(7)[true_index]
    scores = m.task_scores(spec, probs, targets, "map@5")
    ranked = np.argsort(-probs, axis=1, kind="stable")
    assert scores["score"] == pytest.approx(np.mean([reference_apk([t], list(r), 5) for t, r in zip(true_index, ranked)]))
    assert scores["accuracy"] == pytest.approx(skm.accuracy_score(true_index, probs.argmax(1)))
    assert scores["log_loss"] == pytest.approx(skm.log_loss(true_index, probs, labels=range(7)), rel=1e-6)
    assert "map@3" in scores


def test_bad_inputs_name_the_problem():
    spec = multihead_spec()
    with pytest.raises(OoflineError, match="map@3"):
        m.task_scores(spec, np.zeros((2, 5)), np.zeros((2, 5)), "map@3")
    with pytest.raises(OoflineError, match="'f2'"):
        m.task_scores(spec, np.zeros((2, 5)), np.zeros((2, 5)), "f2")
    with pytest.raises(OoflineError, match="place"):  # a threshold on a multiclass head
        m.task_scores(spec, np.zeros((2, 5)), np.zeros((2, 5)), "mean_f1", thresholds={"place=home": 0.3})
    with pytest.raises(OoflineError, match="k must be"):
        m.map_at_k([["a"]], [["a"]], 0)
    with pytest.raises(OoflineError, match="rows"):
        m.map_at_k([["a"], ["b"]], [["a"]], 3)
