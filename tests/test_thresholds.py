"""Threshold search against brute force (every distinct score, sklearn F1) on random data, and the CLI."""
from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import f1_score

from workflow_scripts import thresholds as th
from workflow_scripts.errors import OoflineError, run_cli
from workflow_scripts.labels import Head, LabelSpec


RNG = np.random.default_rng(1)


def brute_force_best_f1(scores, labels):
    return max(f1_score(labels, scores >= t, zero_division=0) for t in np.unique(scores))


@pytest.mark.parametrize("seed", range(5))
def test_exact_threshold_reaches_brute_force_best_f1(seed):
    rng = np.random.default_rng(seed)
    labels = rng.random(300) < 0.2
    scores = np.round(np.clip(labels * 0.3 + rng.random(300) * 0.8, 0, 1), 2)  # rounded: many ties
    threshold, f1 = th.best_f1_threshold(scores, labels)
    assert f1 == pytest.approx(brute_force_best_f1(scores, labels))
    assert f1_score(labels, scores >= threshold) == pytest.approx(f1)
    # and never worse than the 101-point grid people usually use
    assert f1 >= max(f1_score(labels, scores >= t, zero_division=0) for t in np.linspace(0, 1, 101)) - 1e-12


def test_f1_curve_matches_sklearn_at_every_threshold():
    labels = RNG.random(200) < 0.3
    scores = RNG.random(200).astype(np.float32)
    thresholds, f1, rate = th.f1_curve(scores, labels)
    assert np.all(np.diff(thresholds) < 0)
    for t, value, r in zip(thresholds, f1, rate):
        assert value == pytest.approx(f1_score(labels, scores >= t, zero_division=0))
        assert r == pytest.approx(np.mean(scores >= t))


def test_class_balance_threshold_matches_plain_loop():
    scores = RNG.random(500)
    for target in (0.0, 0.05, 0.31, 0.5, 1.0):
        threshold = th.class_balance_threshold(scores, target)
        best_gap = min(abs(np.mean(scores >= t) - target) for t in np.unique(scores))
        assert abs(np.mean(scores >= threshold) - target) == pytest.approx(best_gap)


def test_probe_f1_converts_to_rate():
    # an all-ones submission on a label with positive rate r scores F1 = 2r / (1 + r)
    r = 0.2
    assert th.rate_from_probe_f1(2 * r / (1 + r)) == pytest.approx(r)


def spec_multihead():
    return LabelSpec("multihead", (Head("a", "binary", "a"), Head("h", "multiclass", "h", ("x", "y")),
                                    Head("b", "binary", "b")))


def make_data(n=400):
    targets = np.zeros((n, 4), dtype=np.float32)
    targets[:, 0] = RNG.random(n) < 0.15
    h = RNG.integers(0, 2, n)
    targets[np.arange(n), 1 + h] = 1
    targets[:, 3] = RNG.random(n) < 0.4
    probs = np.clip(targets * 0.25 + RNG.random((n, 4)) * 0.75, 0, 1).astype(np.float32)
    return probs, targets


def test_hybrid_is_weighted_blend_and_rates_come_from_the_right_source():
    spec = spec_multihead()
    probs, targets = make_data()
    result = th.search_thresholds(spec, probs, targets, "hybrid", 0.3, target_rates={"a": 0.1}, probe_f1={"b": 0.5})
    assert set(result["thresholds"]) == {"a", "b"}  # the multiclass head uses argmax
    assert result["argmax_heads"] == ["h"]
    for name, info in result["classes"].items():
        assert info["hybrid"] == pytest.approx(0.3 * info["exact"] + 0.7 * info["class_balance"])
        assert info["threshold"] == info["hybrid"]
        assert info["f1_before"] == pytest.approx(f1_score(targets[:, "ab".index(name) * 3], probs[:, "ab".index(name) * 3] >= 0.5))
    assert result["classes"]["a"]["target_rate"] == 0.1 and result["classes"]["a"]["target_rate_source"] == "config"
    assert result["classes"]["b"]["target_rate"] == pytest.approx(0.5 / 1.5)
    exact = th.search_thresholds(spec, probs, targets, "exact")
    assert exact["oof_score_after"] >= exact["oof_score_before"]
    for info in exact["classes"].values():
        assert info["f1_after"] >= info["f1_before"]
    # `grid`, the method's former name, still selects it
    assert th.search_thresholds(spec, probs, targets, "grid") == exact
    prior = th.search_thresholds(spec, probs, targets, "class_balance")
    assert prior["classes"]["a"]["target_rate"] == pytest.approx(targets[:, 0].mean())


def write_inputs(tmp_path, spec, probs, targets):
    ids = [f"r{i}" for i in range(len(probs))]
    columns = spec.probability_columns
    oof = pl.DataFrame({"id": ids, "fold": [i % 5 for i in range(len(ids))]}).hstack(
        pl.DataFrame(probs, schema=columns))
    target_frame = pl.DataFrame({"id": ids[::-1]}).hstack(pl.DataFrame(targets[::-1], schema=columns))  # other order
    oof.write_parquet(tmp_path / "oof.parquet")
    target_frame.write_parquet(tmp_path / "targets.parquet")
    spec.save(tmp_path / "labels.json")


def hand_mean_f1(probs, targets, thresholds, predicted=None):
    """mean_f1 of spec_multihead() by hand: F1 of `a` and `b` at their thresholds, macro F1 of argmax `h`."""
    if predicted is None:
        predicted = probs[:, [0, 3]] >= [thresholds["a"], thresholds["b"]]
    place = f1_score(targets[:, 1:3].argmax(1), probs[:, 1:3].argmax(1), average="macro")
    return (f1_score(targets[:, 0], predicted[:, 0]) + place + f1_score(targets[:, 3], predicted[:, 1])) / 3


def test_cli_writes_thresholds_and_curves(tmp_path):
    spec = spec_multihead()
    probs, targets = make_data()
    write_inputs(tmp_path, spec, probs, targets)
    argv = ["--oof", str(tmp_path / "oof.parquet"), "--labels", str(tmp_path / "labels.json"),
            "--targets", str(tmp_path / "targets.parquet"), "--method", "hybrid", "--weight", "0.5",
            "--probe-f1", '{"a": 0.3}', "--out", str(tmp_path / "t.json"), "--curves-out", str(tmp_path / "c.parquet")]
    assert run_cli(th.main, argv) == 0
    result = json.loads((tmp_path / "t.json").read_text())
    # each written threshold: half the F1 maximiser (brute force over every score) plus half the rate matcher
    for name, column, rate in (("a", 0, 0.3 / 1.7), ("b", 3, targets[:, 3].mean())):
        info = result["classes"][name]
        assert result["thresholds"][name] == pytest.approx(0.5 * info["exact"] + 0.5 * info["class_balance"])
        assert f1_score(targets[:, column], probs[:, column] >= info["exact"]) == pytest.approx(
            brute_force_best_f1(probs[:, column], targets[:, column]))
        best_gap = min(abs(np.mean(probs[:, column] >= t) - rate) for t in np.unique(probs[:, column]))
        assert abs(np.mean(probs[:, column] >= info["class_balance"]) - rate) == pytest.approx(best_gap)
    # the reported scores are what applying the written thresholds scores (in-sample), and what applying each
    # fold's thresholds, searched on the other four folds, scores (nested)
    assert result["oof_score_after"] == pytest.approx(hand_mean_f1(probs, targets, result["thresholds"]))
    folds = np.arange(len(probs)) % 5
    predicted = np.zeros((len(probs), 2))
    for fold in range(5):
        held = folds == fold
        inner = th.search_thresholds(spec, probs[~held], targets[~held], "hybrid", 0.5, probe_f1={"a": 0.3})
        assert result["nested_thresholds"][str(fold)] == pytest.approx(inner["thresholds"])
        predicted[held] = probs[held][:, [0, 3]] >= [inner["thresholds"]["a"], inner["thresholds"]["b"]]
    assert result["oof_score_after_nested"] == pytest.approx(hand_mean_f1(probs, targets, None, predicted))
    assert set(result["nested_folds"]) == {"0", "1", "2", "3", "4"}
    curves = pl.read_parquet(tmp_path / "c.parquet")
    assert curves.group_by("column").len()["len"].max() <= 200
    marked = curves.filter((pl.col("column") == "a") & (pl.col("kind") == "exact"))
    assert marked["f1"][0] == pytest.approx(result["classes"]["a"]["f1_exact"])
    first = (tmp_path / "t.json").read_bytes()
    assert run_cli(th.main, argv) == 0
    assert (tmp_path / "t.json").read_bytes() == first  # deterministic


def test_bad_inputs_name_the_key(tmp_path, capsys):
    spec = spec_multihead()
    probs, targets = make_data(50)
    with pytest.raises(OoflineError, match="'zzz'"):
        th.search_thresholds(spec, probs, targets, "exact", target_rates={"zzz": 0.1})
    with pytest.raises(OoflineError, match="'a'"):
        th.search_thresholds(spec, probs, targets, "exact", target_rates={"a": 1.5})
    with pytest.raises(OoflineError, match="weight"):
        th.search_thresholds(spec, probs, targets, "hybrid", weight=2.0)
    write_inputs(tmp_path, spec, probs, targets)
    pl.read_parquet(tmp_path / "oof.parquet").drop("b").write_parquet(tmp_path / "bad.parquet")
    code = run_cli(th.main, ["--oof", str(tmp_path / "bad.parquet"), "--labels", str(tmp_path / "labels.json"),
                             "--targets", str(tmp_path / "targets.parquet"), "--out", str(tmp_path / "t.json")])
    assert code == 2
    assert "'b'" in capsys.readouterr().err
    assert not (tmp_path / "t.json").exists()


def test_nested_threshold_score_matches_a_plain_fold_loop():
    spec = spec_multihead()
    probs, targets = make_data(300)
    folds = np.arange(300) % 3
    nested = th.nested_threshold_score(spec, probs, targets, folds, method="exact")
    predicted = np.zeros((300, 2), dtype=bool)
    for fold in range(3):
        held = folds == fold
        for i, column in enumerate((0, 3)):
            threshold, _ = th.best_f1_threshold(probs[~held, column], targets[~held, column])
            predicted[held, i] = probs[held, column] >= threshold
    f1_place = f1_score(targets[:, 1:3].argmax(1), probs[:, 1:3].argmax(1), average="macro")
    expected = (f1_score(targets[:, 0], predicted[:, 0]) + f1_place + f1_score(targets[:, 3], predicted[:, 1])) / 3
    assert nested["score"] == pytest.approx(expected)
    assert set(nested["folds"]) == {"0", "1", "2"}


def test_reported_f1_after_is_the_f1_of_applying_the_written_thresholds():
    """A midpoint between two neighbouring float32 scores rounds onto the lower one in float32: the search and
    every use of its thresholds must compare in the same (float64) precision."""
    from workflow_scripts import metrics

    spec = LabelSpec("multilabel", (Head("a", "binary", "a"),))
    high = np.float32(0.7)
    low = np.nextafter(high, np.float32(0))  # the float64 midpoint of these rounds to `low` in float32
    probs = np.array([[high], [low], [low], [low], [low]], dtype=np.float32)
    targets = np.array([[1], [0], [0], [0], [0]], dtype=np.float32)
    result = th.search_thresholds(spec, probs, targets, "grid")
    written = json.loads(json.dumps(result["thresholds"]))  # as the submission step reads them back
    applied = metrics.hard_predictions(spec, probs, written)
    assert applied[:, 0].tolist() == [1, 0, 0, 0, 0]
    assert result["classes"]["a"]["f1_after"] == 1.0 == f1_score(targets[:, 0], applied[:, 0])
    assert result["classes"]["a"]["positive_rate_after"] == 0.2


@pytest.mark.parametrize("method", th.METHODS)
def test_a_column_without_positives_predicts_none_and_says_so(method):
    from workflow_scripts import metrics

    spec = LabelSpec("multilabel", (Head("a", "binary", "a"), Head("b", "binary", "b")))
    probs = np.array([[0.9, 0.8], [0.6, 0.1], [0.2, 0.7], [1.0, 0.3]], dtype=np.float32)
    targets = np.array([[0, 1], [0, 0], [0, 1], [0, 0]], dtype=np.float32)  # column a: no positive in OOF
    result = th.search_thresholds(spec, probs, targets, method)
    applied = metrics.hard_predictions(spec, probs, json.loads(json.dumps(result["thresholds"])))
    assert applied[:, 0].tolist() == [0, 0, 0, 0]
    assert result["classes"]["a"]["predicts_none"] is True
    assert result["classes"]["a"]["positive_rate_after"] == 0.0
    assert result["classes"]["b"]["predicts_none"] is False


def stacked_multilabel(tmp_path, targets, name="stacked", method="stack"):
    """Two members' OOF files, a stack over them (ensemble.build_ensemble) and its OOF file; returns the argv
    tail that names the stack's OOF and, with --refit, the members it is refitted from."""
    from workflow_scripts import ensemble

    spec = LabelSpec("multilabel", tuple(Head(c, "binary", c) for c in ("p", "q", "r")))
    rng = np.random.default_rng(5)
    n = len(targets)
    ids, folds = [f"r{i}" for i in range(n)], np.arange(n) % 4
    frames = {}
    for member, noise in (("m0", 1.2), ("m1", 2.0)):
        logits = 1.5 * (2 * targets - 1) + rng.normal(0, noise, targets.shape)
        frames[member] = pl.DataFrame({"id": ids, "fold": folds}).hstack(
            pl.DataFrame((1 / (1 + np.exp(-logits))).astype(np.float32), schema=spec.probability_columns))
        frames[member].write_parquet(tmp_path / f"{member}.parquet")
    oof, _, _, _ = ensemble.build_ensemble(spec, ["m0", "m1"], frames, None, targets, "macro_f1", method)
    oof.write_parquet(tmp_path / f"{name}.parquet")
    pl.DataFrame({"id": ids}).hstack(pl.DataFrame(targets, schema=spec.probability_columns)).write_parquet(
        tmp_path / "targets.parquet")
    spec.save(tmp_path / "labels.json")
    refit = json.dumps({"names": ["m0", "m1"], "weights": [1.0, 1.0], "method": method, "blend": "mean",
                        "member_top_k": None, "C": 1.0})
    return spec, frames, folds, ["--oof", str(tmp_path / f"{name}.parquet"), "--labels", str(tmp_path / "labels.json"),
                                 "--targets", str(tmp_path / "targets.parquet"), "--method", "exact",
                                 "--metric", "macro_f1"], \
        ["--refit", refit, "--member-oof", str(tmp_path / "m0.parquet"), str(tmp_path / "m1.parquet")]


def test_thresholds_on_a_stack_are_searched_on_a_level_2_that_never_saw_the_scored_fold(tmp_path):
    """Nested thresholds on a stack: for outer fold f the level 2 is refitted on the other folds (an inner
    out-of-fold stack) and the thresholds searched there; fold f's labels reach neither."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(4)
    targets = (rng.random((320, 3)) < [0.2, 0.35, 0.5]).astype(np.float32)
    spec, frames, folds, argv, refit = stacked_multilabel(tmp_path, targets)
    assert run_cli(th.main, argv + refit + ["--out", str(tmp_path / "t.json")]) == 0
    result = json.loads((tmp_path / "t.json").read_text())
    assert "stack" in result["nested_refit"]
    features = np.log(np.clip(np.concatenate([frames[m].select("p", "q", "r").to_numpy() for m in ("m0", "m1")],
                                             axis=1).astype(np.float64), 1e-6, 1))
    stack_oof = pl.read_parquet(tmp_path / "stacked.parquet").select("p", "q", "r").to_numpy()
    predicted = np.zeros(targets.shape, dtype=bool)
    for outer in range(4):
        inner_rows = folds != outer
        inner_oof = np.zeros((inner_rows.sum(), 3))
        inner_folds = folds[inner_rows]
        for inner in set(inner_folds.tolist()):  # the level 2 by hand, on rows of neither fold
            fit = inner_folds != inner
            for column in range(3):
                model = LogisticRegression(C=1.0, max_iter=1000, random_state=0).fit(
                    features[inner_rows][fit], targets[inner_rows][fit, column])
                inner_oof[~fit, column] = model.predict_proba(features[inner_rows][~fit])[:, 1]
        for column, name in enumerate("pqr"):
            threshold, _ = th.best_f1_threshold(inner_oof[:, column], targets[inner_rows, column])
            assert result["nested_thresholds"][str(outer)][name] == pytest.approx(threshold, abs=1e-5)
            predicted[~inner_rows, column] = stack_oof[~inner_rows, column] >= threshold
    assert result["oof_score_after_nested"] == pytest.approx(f1_score(targets, predicted, average="macro"))
    assert result["oof_score_after"] >= result["oof_score_after_nested"]  # in-sample beside it, as reported

    # relabel fold 0: the stack and its OOF change, the thresholds fold 0 is scored with do not ...
    relabelled = targets.copy()
    relabelled[folds == 0] = 1 - relabelled[folds == 0]
    other = tmp_path / "relabelled"
    other.mkdir()
    _, _, _, argv2, refit2 = stacked_multilabel(other, relabelled)
    assert run_cli(th.main, argv2 + refit2 + ["--out", str(other / "t.json")]) == 0
    assert json.loads((other / "t.json").read_text())["nested_thresholds"]["0"] == result["nested_thresholds"]["0"]
    # ... while thresholds searched on the stack's own OOF rows of folds 1-3 (fitted with fold 0) do
    assert run_cli(th.main, argv + ["--out", str(tmp_path / "plain.json")]) == 0
    assert run_cli(th.main, argv2 + ["--out", str(other / "plain.json")]) == 0
    assert (json.loads((other / "plain.json").read_text())["nested_thresholds"]["0"]
            != json.loads((tmp_path / "plain.json").read_text())["nested_thresholds"]["0"])


def test_thresholds_on_a_search_never_see_the_scored_fold(tmp_path):
    """The same for a weight search: fold 0's thresholds come from weights and thresholds searched without
    fold 0, so relabelling fold 0 leaves them as they are (it changes the searched ensemble's other rows)."""
    rng = np.random.default_rng(6)
    targets = (rng.random((320, 3)) < [0.2, 0.35, 0.5]).astype(np.float32)
    relabelled = targets.copy()
    relabelled[np.arange(320) % 4 == 0] = 1 - relabelled[np.arange(320) % 4 == 0]
    nested, plain = [], []
    for name, labels in (("original", targets), ("relabelled", relabelled)):
        folder = tmp_path / name
        folder.mkdir()
        _, _, _, argv, refit = stacked_multilabel(folder, labels, method="search")
        assert run_cli(th.main, argv + refit + ["--out", str(folder / "t.json")]) == 0
        assert run_cli(th.main, argv + ["--out", str(folder / "plain.json")]) == 0
        result = json.loads((folder / "t.json").read_text())
        assert "search" in result["nested_refit"] and result["oof_score_after_nested"] is not None
        nested.append(result["nested_thresholds"]["0"])
        plain.append(json.loads((folder / "plain.json").read_text())["nested_thresholds"]["0"])
    assert nested[0] == nested[1]
    assert plain[0] != plain[1]  # without the refit, fold 0's labels reach its thresholds through the weights
