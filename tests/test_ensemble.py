"""Ensembles against plain numpy references, the nested weight search, and bad input."""
from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from scipy.stats import rankdata

from workflow_scripts import ensemble as ens
from workflow_scripts import metrics
from workflow_scripts.errors import OoflineError, run_cli
from workflow_scripts.labels import Head, LabelSpec


CLASSES = tuple("abcdef")
SPEC = LabelSpec("multiclass", (Head("label", "multiclass", "label", CLASSES),))


def make_members(n=300, n_members=3, seed=0, noise=(0.5, 1.0, 3.0)):
    """Members of different quality: logits = signal on the true class + noise of growing size."""
    rng = np.random.default_rng(seed)
    true_index = rng.integers(0, len(CLASSES), n)
    targets = np.eye(len(CLASSES), dtype=np.float32)[true_index]
    ids = [f"q{i}" for i in range(n)]
    folds = np.arange(n) % 4
    frames = {}
    for m in range(n_members):
        logits = 1.5 * targets + rng.normal(0, noise[m % len(noise)], size=targets.shape)
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        frames[f"m{m}"] = pl.DataFrame({"id": ids, "fold": folds}).hstack(
            pl.DataFrame(probs.astype(np.float32), schema=list(CLASSES)))
    return frames, targets, true_index


def probs_of(frame):
    return frame.select(list(CLASSES)).to_numpy()


def test_weighted_mean_matches_numpy_and_weights_are_normalised():
    frames, targets, _ = make_members()
    oof, _, weights, score = ens.build_ensemble(SPEC, ["m0", "m1", "m2"], frames, None, targets, "map@3", "mean",
                                                [1.0, 1.2, 0.8])
    expected = (1.0 * probs_of(frames["m0"]) + 1.2 * probs_of(frames["m1"]) + 0.8 * probs_of(frames["m2"])) / 3.0
    np.testing.assert_allclose(probs_of(oof), expected, rtol=1e-6)
    assert weights["weights"] == pytest.approx({"m0": 1 / 3, "m1": 0.4, "m2": 0.8 / 3})
    assert score["score"] == pytest.approx(metrics.map_at_k_from_probabilities(expected, targets.argmax(1), 3))
    assert score["in_sample_score"] == score["out_of_sample_score"]  # fixed weights are not fitted
    assert set(score["folds"]) == {"0", "1", "2", "3"}


def test_rank_mean_matches_scipy_ranks():
    frames, targets, _ = make_members()
    oof, _, _, _ = ens.build_ensemble(SPEC, ["m0", "m1"], frames, None, targets, "map@3", "rank", [2.0, 1.0])
    ranks = [(rankdata(probs_of(frames[m]), axis=0) - 1) / (len(targets) - 1) for m in ("m0", "m1")]
    np.testing.assert_allclose(probs_of(oof), (2 * ranks[0] + ranks[1]) / 3, rtol=1e-5, atol=1e-6)
    assert probs_of(oof).min() >= 0 and probs_of(oof).max() <= 1


def test_member_top_k_keeps_only_each_members_top_classes():
    frames, targets, _ = make_members()
    oof, _, _, _ = ens.build_ensemble(SPEC, ["m0"], frames, None, targets, "map@3", "mean", member_top_k=2)
    out = probs_of(oof)
    assert ((out > 0).sum(axis=1) == 2).all()
    top2 = np.sort(probs_of(frames["m0"]), axis=1)[:, -2:]
    np.testing.assert_allclose(np.sort(out, axis=1)[:, -2:], top2, rtol=1e-6)


def test_search_finds_good_weights_and_reports_nested_score():
    frames, targets, _ = make_members(n=600, noise=(0.6, 4.0, 4.0))
    names = ["m0", "m1", "m2"]
    oof, _, weights, score = ens.build_ensemble(SPEC, names, frames, None, targets, "map@3", "search")
    from movies_workflow import hand_map_at_3

    # every fold's rows blended by hand with that fold's nested weights, scored by a hand-written MAP@3
    folds = np.arange(len(targets)) % 4
    truth = pl.Series([CLASSES[k] for k in targets.argmax(1)])
    hand = np.zeros(targets.shape)
    for fold in range(4):
        rows = folds == fold
        fold_weights = np.array(score["nested"]["weights"][str(fold)])
        hand[rows] = sum(w * probs_of(frames[n])[rows] for w, n in zip(fold_weights / fold_weights.sum(), names))
        fold_frame = pl.DataFrame(hand[rows], schema=list(CLASSES))
        assert score["folds"][str(fold)]["score"] == pytest.approx(
            hand_map_at_3(fold_frame, truth.filter(pl.Series(rows)), CLASSES), abs=1e-6)
    nested_hand = hand_map_at_3(pl.DataFrame(hand, schema=list(CLASSES)), truth, CLASSES)
    assert score["score"] == score["out_of_sample_score"] == score["overall"]["score"] == pytest.approx(nested_hand,
                                                                                                      abs=1e-6)
    # one set of numbers at the top: the mean of `folds` is `fold_mean`; the final weights' numbers under in_sample
    assert score["fold_mean"] == pytest.approx(np.mean([v["score"] for v in score["folds"].values()]))
    assert score["in_sample"]["score"] == score["in_sample_score"] != score["score"]
    # weights searched without a fold beat equal weights on that fold (two of three members are mostly noise)
    equal = ens.blend_arrays([probs_of(frames[n]) for n in names], np.ones(3))
    assert nested_hand > hand_map_at_3(pl.DataFrame(equal, schema=list(CLASSES)), truth, CLASSES) + 0.02
    assert weights["weights"]["m0"] == max(weights["weights"].values())


def test_compact_rank_objective_equals_dense_map_on_random_weights():
    frames, targets, true_index = make_members(n=400)
    members = [probs_of(frames[m]).astype(np.float32) for m in ("m0", "m1", "m2")]
    rows = np.arange(400) % 3 != 0
    make = ens._rank_objective_factory(3, members, true_index)
    assert make is not None
    parts, score_fn = make(rows)
    rng = np.random.default_rng(5)
    for _ in range(10):
        w = rng.random(3)
        diff = sum(np.float32(wi) * p for wi, p in zip(w, parts))
        dense = sum(wi * m[rows] for wi, m in zip(w, members))
        assert score_fn(diff, w.sum()) == pytest.approx(metrics.map_at_k_from_probabilities(dense, true_index[rows], 3))


def test_search_on_multilabel_macro_f1_improves_over_equal_weights():
    rng = np.random.default_rng(3)
    spec = LabelSpec("multilabel", tuple(Head(f"l{i}", "binary", f"l{i}") for i in range(3)))
    n = 240
    targets = (rng.random((n, 3)) < 0.3).astype(np.float32)
    good = np.clip(targets * 0.6 + rng.random((n, 3)) * 0.5, 0, 1)
    bad = rng.random((n, 3))
    frames = {name: pl.DataFrame({"id": np.arange(n), "fold": np.arange(n) % 3}).hstack(
        pl.DataFrame(p.astype(np.float32), schema=spec.probability_columns)) for name, p in (("good", good), ("bad", bad))}
    oof, _, weights, score = ens.build_ensemble(spec, ["good", "bad"], frames, None, targets, "macro_f1", "search")
    from sklearn.metrics import f1_score

    # the nested blend (weights searched without each fold) beats equal weights, by sklearn's macro F1 at 0.5
    equal = f1_score(targets, (good + bad) / 2 >= 0.5, average="macro")
    nested = f1_score(targets, oof.select(spec.probability_columns).to_numpy() >= 0.5, average="macro")
    assert score["score"] == pytest.approx(nested) and nested > equal + 0.02
    assert weights["weights"]["good"] > weights["weights"]["bad"]


def test_check_ensemble_config_errors_name_the_problem():
    with pytest.raises(OoflineError, match=r"ensembles\.blend.*'ghost'"):
        ens.check_ensemble_config("blend", {"members": {"m0": 1.0, "ghost": 1.0}}, ["m0", "m1"])
    with pytest.raises(OoflineError, match="'m1' is negative"):
        ens.check_ensemble_config("blend", {"members": {"m0": 1.0, "m1": -0.5}}, ["m0", "m1"])
    with pytest.raises(OoflineError, match="all weights are zero"):
        ens.check_ensemble_config("blend", {"members": {"m0": 0, "m1": 0.0}}, ["m0", "m1"])
    with pytest.raises(OoflineError, match="method"):
        ens.check_ensemble_config("blend", {"members": ["m0"], "method": "median"}, ["m0"])
    ok = ens.check_ensemble_config("blend", {"members": ["m0", "m1"], "method": "search"}, ["m0", "m1"])
    assert ok["weights"] == [1.0, 1.0] and ok["method"] == "search"


def test_members_with_different_ids_are_rejected():
    frames, targets, _ = make_members()
    frames["m1"] = frames["m1"].with_columns(pl.when(pl.col("id") == "q5").then(pl.lit("zz")).otherwise(pl.col("id")).alias("id"))
    with pytest.raises(OoflineError, match="'m1'.*different ids"):
        ens.build_ensemble(SPEC, ["m0", "m1"], frames, None, targets, "map@3")


def test_cli_writes_four_outputs_deterministically(tmp_path, capsys):
    frames, targets, true_index = make_members(n=200)
    paths = []
    for name, frame in frames.items():
        # members stored in different row orders: the blend aligns them on id
        frame.sample(fraction=1.0, shuffle=True, seed=len(paths)).write_parquet(tmp_path / f"{name}.oof.parquet")
        frame.drop("fold").write_parquet(tmp_path / f"{name}.test.parquet")
        paths.append(name)
    pl.DataFrame({"id": [f"q{i}" for i in range(200)]}).hstack(
        pl.DataFrame(targets, schema=list(CLASSES))).write_parquet(tmp_path / "targets.parquet")
    SPEC.save(tmp_path / "labels.json")
    out = tmp_path / "ens"
    argv = ["--names", *paths, "--oof", *[str(tmp_path / f"{n}.oof.parquet") for n in paths],
            "--test", *[str(tmp_path / f"{n}.test.parquet") for n in paths], "--method", "search",
            "--labels", str(tmp_path / "labels.json"), "--targets", str(tmp_path / "targets.parquet"),
            "--metric", "map@3", "--name", "demo", "--oof-out", str(out / "oof.parquet"),
            "--test-out", str(out / "test.parquet"), "--weights-out", str(out / "weights.json"),
            "--score-out", str(out / "score.json")]
    assert run_cli(ens.main, argv) == 0
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(first) == {"oof.parquet", "test.parquet", "weights.json", "score.json"}
    score = json.loads(first["score.json"])
    assert score["ensemble"] == "demo" and "nested" in score
    assert run_cli(ens.main, argv) == 0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first
    bad = argv.copy()
    bad[bad.index("--method") + 1: bad.index("--method") + 1] = []
    bad += ["--weights", "1", "-1", "1"]
    assert run_cli(ens.main, bad) == 2
    assert "'m1' is negative" in capsys.readouterr().err


def test_stack_out_of_fold_predictions_never_see_their_folds_labels():
    frames, targets, _ = make_members(n=400, noise=(0.6, 2.0, 4.0))
    names = ["m0", "m1", "m2"]
    oof, test, weights, score = ens.build_ensemble(SPEC, names, frames, frames, targets, "map@3", "stack")
    # scramble fold 2's labels: fold 2's out-of-fold rows must not move; the other folds' must
    scrambled = targets.copy()
    fold2 = np.arange(len(targets)) % 4 == 2
    scrambled[fold2] = np.roll(targets[fold2], 1, axis=1)
    oof2, _, _, _ = ens.build_ensemble(SPEC, names, frames, None, scrambled, "map@3", "stack")
    np.testing.assert_array_equal(probs_of(oof)[fold2], probs_of(oof2)[fold2])
    assert np.abs(probs_of(oof)[~fold2] - probs_of(oof2)[~fold2]).max() > 1e-3
    # fold 2's rows equal a level-2 model fitted by hand on the other folds only
    from sklearn.linear_model import LogisticRegression

    features = np.log(np.clip(np.concatenate([probs_of(frames[n]) for n in names], axis=1).astype(np.float64), 1e-6, 1))
    reference = LogisticRegression(C=1.0, max_iter=1000, random_state=0).fit(features[~fold2], targets[~fold2].argmax(1))
    np.testing.assert_allclose(probs_of(oof)[fold2], reference.predict_proba(features[fold2]), atol=1e-4)
    # honest score beside the in-sample one (with 6 classes x 3 members = 18 inputs per class on 300 rows, the
    # level 2 overfits a little: that is what the nested score is there to show)
    assert score["score"] == score["out_of_sample_score"] == pytest.approx(
        metrics.map_at_k_from_probabilities(probs_of(oof), targets.argmax(1), 3))
    assert score["in_sample_score"] >= score["out_of_sample_score"] - 0.02
    assert score["in_sample_score"] > score["score"] > sorted(score["member_scores"].values())[-2]
    assert weights["method"] == "stack" and len(weights["inputs"]) == 3 * len(CLASSES)
    # test rows: the level 2 fitted on every OOF row
    full = LogisticRegression(C=1.0, max_iter=1000, random_state=0).fit(features, targets.argmax(1))
    np.testing.assert_allclose(probs_of(test), full.predict_proba(features), atol=1e-4)


def test_a_searched_ensembles_oof_never_uses_weights_that_saw_that_folds_labels():
    """The OOF a search ensemble writes (read by outer ensembles, thresholds, label correction) is the nested
    blend: relabelling fold f so that the noisy member looks perfect there leaves fold f's OOF rows unchanged."""
    frames, targets, _ = make_members(n=400, noise=(0.6, 3.0, 3.0))
    names = ["m0", "m1", "m2"]
    oof, _, weights, _ = ens.build_ensemble(SPEC, names, frames, None, targets, "map@3", "search")
    folds = oof["fold"].to_numpy()
    for fold in range(4):
        relabelled = targets.copy()
        rows = folds == fold
        relabelled[rows] = np.eye(len(CLASSES), dtype=np.float32)[probs_of(frames["m1"])[rows].argmax(1)]
        changed, _, changed_weights, _ = ens.build_ensemble(SPEC, names, frames, None, relabelled, "map@3", "search")
        assert changed_weights["weights"] != weights["weights"]  # the final (all-rows) weights did see fold f
        np.testing.assert_array_equal(probs_of(changed)[rows], probs_of(oof)[rows])
    # and each fold's rows are exactly that fold's nested weights applied to the members
    for fold, fold_weights in weights["nested_weights"].items():
        rows = folds == int(fold)
        expected = ens.blend_arrays([probs_of(frames[n])[rows] for n in names], np.array([fold_weights[n] for n in names]))
        np.testing.assert_allclose(probs_of(oof)[rows], expected, rtol=1e-6)


def two_class_members(n=400, seed=0):
    """A binary task written as multiclass (columns no, yes) with two members of different quality."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 2, n)
    targets = np.eye(2, dtype=np.float32)[truth]
    frames = {}
    for name, noise in (("good", 1.5), ("weak", 2.0)):  # independent errors: the stack can beat both
        logit = 1.5 * (2 * truth - 1) + rng.normal(0, noise, n)
        yes = 1 / (1 + np.exp(-logit))
        frames[name] = pl.DataFrame({"id": [f"q{i}" for i in range(n)], "fold": np.arange(n) % 4}).hstack(
            pl.DataFrame(np.stack([1 - yes, yes], axis=1).astype(np.float32), schema=["no", "yes"]))
    return frames, targets


def test_stack_on_a_two_class_multiclass_task_equals_sklearn_and_beats_its_members():
    """scikit-learn fits one binary model for two classes (coef_ has one row): the stack must still give both
    columns their own probability, not a softmax over one score (which made every row class 0)."""
    from sklearn.linear_model import LogisticRegression

    spec = LabelSpec("multiclass", (Head("label", "multiclass", "label", ("no", "yes")),))
    frames, targets = two_class_members()
    names = ["good", "weak"]
    oof, test, weights, score = ens.build_ensemble(spec, names, frames, frames, targets, "accuracy", "stack")
    features = np.log(np.clip(np.concatenate([frames[n].select("no", "yes").to_numpy() for n in names], axis=1)
                              .astype(np.float64), 1e-6, 1))
    folds, truth = np.arange(len(targets)) % 4, targets.argmax(1)
    stacked = oof.select("no", "yes").to_numpy()
    for fold in range(4):
        held = folds == fold
        reference = LogisticRegression(C=1.0, max_iter=1000, random_state=0).fit(features[~held], truth[~held])
        np.testing.assert_allclose(stacked[held], reference.predict_proba(features[held]), atol=1e-4)
    full = LogisticRegression(C=1.0, max_iter=1000, random_state=0).fit(features, truth)
    np.testing.assert_allclose(test.select("no", "yes").to_numpy(), full.predict_proba(features), atol=1e-4)
    accuracy = float((stacked.argmax(1) == truth).mean())
    assert score["score"] == pytest.approx(accuracy)
    assert accuracy > max(score["member_scores"].values()) > 0.7
    assert len(weights["heads"]["label"]["coef"]) == 1  # scikit-learn's one binary model, recorded as it is


def test_stack_multihead_two_class_head_and_a_fold_missing_a_class_equal_sklearn():
    from sklearn.linear_model import LogisticRegression

    spec = LabelSpec("multihead", (Head("pair", "multiclass", "pair", ("a", "b")),
                                   Head("colour", "multiclass", "colour", ("x", "y", "z"))))
    rng = np.random.default_rng(1)
    n = 300
    pair, colour = rng.integers(0, 2, n), rng.integers(0, 3, n)
    targets = np.concatenate([np.eye(2)[pair], np.eye(3)[colour]], axis=1).astype(np.float32)
    folds = np.where(colour == 2, 0, 1 + np.arange(n) % 2)  # fold 0 holds every `colour=z` row
    ids = [f"q{i}" for i in range(n)]

    def member(noise):
        blocks = []
        for truth, k in ((pair, 2), (colour, 3)):
            logits = 2.0 * np.eye(k)[truth] + rng.normal(0, noise, (n, k))
            blocks.append(np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True))
        return pl.DataFrame({"id": ids, "fold": folds}).hstack(
            pl.DataFrame(np.concatenate(blocks, axis=1).astype(np.float32), schema=spec.probability_columns))

    frames = {"m0": member(1.0), "m1": member(2.0)}
    oof, _, _, _ = ens.build_ensemble(spec, ["m0", "m1"], frames, None, targets, "mean_f1", "stack")
    features = np.log(np.clip(np.concatenate([frames[m].select(spec.probability_columns).to_numpy()
                                              for m in ("m0", "m1")], axis=1).astype(np.float64), 1e-6, 1))
    stacked = oof.select(spec.probability_columns).to_numpy()
    for fold in range(3):
        held = folds == fold
        for head, columns in spec.head_slices():
            labels = targets[:, columns].argmax(1)
            reference = LogisticRegression(C=1.0, max_iter=1000, random_state=0).fit(features[~held], labels[~held])
            expected = np.zeros((held.sum(), columns.stop - columns.start))
            expected[:, reference.classes_] = reference.predict_proba(features[held])
            np.testing.assert_allclose(stacked[held][:, columns], expected, atol=1e-4)
    assert (stacked[folds == 0][:, 4] == 0).all()  # fold 0's level 2 never saw `colour=z`
    assert set(stacked[:, :2].argmax(1).tolist()) == {0, 1}
