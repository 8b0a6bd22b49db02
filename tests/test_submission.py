"""Submission formats, sample-submission checks, and a manifest that rebuilds byte-identically."""
from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from workflow_scripts import submission as sub
from workflow_scripts.errors import OoflineError, run_cli
from workflow_scripts.labels import Head, LabelSpec


RNG = np.random.default_rng(2)
MULTICLASS = LabelSpec("multiclass", (Head("Category", "multiclass", "Category", ("a:x", "b:y", "c:z", "d:w")),))
MULTILABEL = LabelSpec("multilabel", tuple(Head(n, "binary", n) for n in ("fear", "irony", "loaded")))
MULTIHEAD = LabelSpec("multihead", (Head("sad", "binary", "sad"), Head("where", "multiclass", "where", ("1", "2", "3"))))


def frame_for(spec, n=6, seed=0):
    rng = np.random.default_rng(seed)
    probs = rng.random((n, len(spec.probability_columns))).astype(np.float32)
    return pl.DataFrame({"id": [f"t{i}" for i in range(n)]}).hstack(pl.DataFrame(probs, schema=spec.probability_columns))


def test_top_k_joins_class_names_by_falling_probability():
    test = frame_for(MULTICLASS)
    out = sub.build_submission(MULTICLASS, test, "top_k", "row_id", ["Category:Misconception"], top_k=3)
    probs = test.select(MULTICLASS.probability_columns).to_numpy()
    classes = np.array(MULTICLASS.heads[0].classes)
    expected = [" ".join(classes[np.argsort(-p, kind="stable")[:3]]) for p in probs]
    assert out.columns == ["row_id", "Category:Misconception"]
    assert out["Category:Misconception"].to_list() == expected


def test_multilabel_labels_and_joined_apply_thresholds():
    test = frame_for(MULTILABEL, n=20)
    probs = test.select(MULTILABEL.probability_columns).to_numpy()
    thresholds = {"fear": 0.2, "loaded": 0.9}
    cut = np.array([0.2, 0.5, 0.9])
    labels = sub.build_submission(MULTILABEL, test, "labels", thresholds=thresholds)
    np.testing.assert_array_equal(labels.select(["fear", "irony", "loaded"]).to_numpy(), (probs >= cut).astype(int))
    joined = sub.build_submission(MULTILABEL, test, "joined", prediction_columns=["techniques"], thresholds=thresholds)
    names = np.array(["fear", "irony", "loaded"])
    assert joined["techniques"].to_list() == [" ".join(names[row]) for row in probs >= cut]


def test_multihead_argmax_writes_binary_and_class_columns():
    test = frame_for(MULTIHEAD, n=10)
    probs = test.select(MULTIHEAD.probability_columns).to_numpy()
    out = sub.build_submission(MULTIHEAD, test, "argmax", thresholds={"sad": 0.3})
    assert out["sad"].to_list() == (probs[:, 0] >= 0.3).astype(int).tolist()
    assert out["where"].to_list() == [("1", "2", "3")[i] for i in probs[:, 1:].argmax(axis=1)]


def test_sample_submission_sets_row_and_column_order_and_rejects_other_ids():
    test = frame_for(MULTILABEL, n=5)
    sample = pl.DataFrame({"id": ["t3", "t0", "t4", "t1", "t2"], "loaded": ["0"] * 5, "fear": ["0"] * 5,
                           "irony": ["0"] * 5})
    out = sub.build_submission(MULTILABEL, test, "labels", sample=sample)
    assert out.columns == ["id", "loaded", "fear", "irony"]
    assert out["id"].to_list() == ["t3", "t0", "t4", "t1", "t2"]
    other = sample.with_columns(pl.Series("id", ["t3", "t0", "t4", "t1", "t9"]))
    with pytest.raises(OoflineError, match=r"ids differ.*'id'.*t9.*t2"):
        sub.build_submission(MULTILABEL, test, "labels", sample=other)
    with pytest.raises(OoflineError, match="columns"):
        sub.build_submission(MULTILABEL, test, "labels", sample=sample.rename({"irony": "sarcasm"}))
    with pytest.raises(OoflineError, match="'top_k' needs a multiclass"):
        sub.build_submission(MULTILABEL, test, "top_k")
    with pytest.raises(OoflineError, match="2 given"):
        sub.build_submission(MULTILABEL, test, "labels", prediction_columns=["a", "b"])


def test_compare_manifests_lists_differing_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "w.txt").write_text("one")
    (tmp_path / "model" / "cfg.json").write_text("{}")
    (tmp_path / "sub.csv").write_text("id\n")
    first = sub.build_manifest({"k": 1}, [], ["model"], ["sub.csv"])
    assert set(first["hashed"]["artifacts"]) == {"model/cfg.json", "model/w.txt"}
    assert sub.compare_manifests(first, first) == []
    (tmp_path / "model" / "w.txt").write_text("two")
    second = sub.build_manifest({"k": 2}, [], ["model"], ["sub.csv"])
    differences = sub.compare_manifests(first, second)
    assert any(d.startswith("model/w.txt") for d in differences)
    assert any(d.startswith("config") for d in differences)
    assert not any(d.startswith("model/cfg.json") for d in differences)


def test_cli_rebuild_is_byte_identical_and_timestamp_stays_outside_the_hash(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    frame_for(MULTICLASS, n=8).write_parquet("test.parquet")
    MULTICLASS.save("labels.json")
    pl.DataFrame({"row_id": [f"t{i}" for i in (7, 1, 2, 3, 4, 5, 6, 0)], "Category": ["x"] * 8}).write_csv("sample.csv")
    (tmp_path / "score.json").write_text(json.dumps({"metric": "map@3", "score": 0.9, "extra": 1}))
    argv = ["--test", "test.parquet", "--labels", "labels.json", "--format", "top_k", "--id-column", "row_id",
            "--top-k", "2", "--sample-submission", "sample.csv", "--config-slice", '{"format": "top_k"}',
            "--scores", "score.json", "--base-models", "m=packaged:minilm", "--name", "s1",
            "--out", "out/submission.csv", "--manifest-out", "out/manifest.json"]
    assert run_cli(sub.main, argv) == 0
    first = {name: (tmp_path / "out" / name).read_bytes() for name in ("submission.csv", "manifest.json")}
    assert first["submission.csv"].decode().splitlines()[0] == "row_id,Category"
    assert first["submission.csv"].decode().splitlines()[1].startswith("t7,")
    manifest = json.loads(first["manifest.json"])
    assert manifest["hashed"]["outputs"]["out/submission.csv"] == sub.sha256_file("out/submission.csv")
    assert manifest["hashed"]["oof_scores"] == {"score.json": {"metric": "map@3", "score": 0.9}}
    assert "sample.csv" in manifest["hashed"]["inputs"] and "built_at" not in manifest
    assert run_cli(sub.main, argv) == 0
    assert {n: (tmp_path / "out" / n).read_bytes() for n in first} == first
    assert run_cli(sub.main, argv + ["--timestamp"]) == 0
    stamped = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert "built_at" in stamped and stamped["manifest_sha256"] == manifest["manifest_sha256"]


def test_cli_reports_ids_that_differ_from_the_sample(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    frame_for(MULTICLASS, n=4).write_parquet("test.parquet")
    MULTICLASS.save("labels.json")
    pl.DataFrame({"id": ["t0", "t1", "t2", "zz"], "Category": ["x"] * 4}).write_csv("sample.csv")
    code = run_cli(sub.main, ["--test", "test.parquet", "--labels", "labels.json", "--format", "top_k",
                              "--sample-submission", "sample.csv", "--out", "submission.csv"])
    assert code == 2
    assert "zz" in capsys.readouterr().err
    assert not (tmp_path / "submission.csv").exists()


def test_verify_passes_on_identical_rebuild_and_lists_differences(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub.csv").write_text("id,x\n1,a\n")
    from workflow_scripts.io import write_json

    write_json(sub.build_manifest({"k": 1}, [], [], ["sub.csv"]), "frozen.json")
    write_json(sub.build_manifest({"k": 1}, [], [], ["sub.csv"]), "rebuilt.json")
    assert run_cli(sub.main, ["verify", "--expected", "frozen.json", "--actual", "rebuilt.json", "--out", "x.ok"]) == 0
    assert (tmp_path / "x.ok").exists()
    (tmp_path / "sub.csv").write_text("id,x\n1,b\n")
    write_json(sub.build_manifest({"k": 1}, [], [], ["sub.csv"]), "rebuilt.json")
    assert run_cli(sub.main, ["verify", "--expected", "frozen.json", "--actual", "rebuilt.json", "--out", "y.ok"]) == 2
    assert "sub.csv (outputs: sha256 differs)" in capsys.readouterr().err
    assert not (tmp_path / "y.ok").exists()
