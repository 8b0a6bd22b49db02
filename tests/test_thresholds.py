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


def test_cli_writes_thresholds_and_curves(tmp_path):
    spec = spec_multihead()
    probs, targets = make_data()
    write_inputs(tmp_path, spec, probs, targets)
    argv = ["--oof", str(tmp_path / "oof.parquet"), "--labels", str(tmp_path / "labels.json"),
            "--targets", str(tmp_path / "targets.parquet"), "--method", "hybrid", "--weight", "0.5",
            "--probe-f1", '{"a": 0.3}', "--out", str(tmp_path / "t.json"), "--curves-out", str(tmp_path / "c.parquet")]
    assert run_cli(th.main, argv) == 0
    result = json.loads((tmp_path / "t.json").read_text())
    assert 0 < result["oof_score_after_nested"] <= 1 and set(result["nested_folds"]) == {"0", "1", "2", "3", "4"}
    expected = th.search_thresholds(spec, probs, targets, "hybrid", 0.5, probe_f1={"a": 0.3})
    assert result["thresholds"] == pytest.approx(expected["thresholds"])
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
