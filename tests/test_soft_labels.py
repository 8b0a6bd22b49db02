"""Soft pseudo-labels: layout, ensemble averaging, temperature against the direct formula, bad input."""
import numpy as np
import polars as pl
import pytest
from scipy.special import expit, logit, softmax

from workflow_scripts.errors import OoflineError
from workflow_scripts.labels import Head, LabelSpec
from workflow_scripts.generated.soft_labels import main, soft_label

SPEC = LabelSpec("multihead", (Head("sad", "binary", "sad"), Head("where", "multiclass", "where", ("1", "2", "3"))))
COLUMNS = SPEC.probability_columns


def _teacher(ids, seed):
    rng = np.random.default_rng(seed)
    probs = softmax(rng.normal(size=(len(ids), 3)), axis=1)
    return pl.DataFrame({"id": ids, "sad": rng.uniform(0.05, 0.95, len(ids)), "where=1": probs[:, 0],
                         "where=2": probs[:, 1], "where=3": probs[:, 2]})


DATASET = pl.DataFrame({"id": ["g2", "g0", "g1"], "text": ["c", "a", "b"], "extra": [1, 2, 3]})


def test_layout_and_alignment_by_id():
    teacher = _teacher(["g0", "g1", "g2"], 0)
    out = soft_label(DATASET, [teacher], SPEC, ["text"])
    assert out.columns == ["id", "text", "sad", "where=1", "where=2", "where=3"]  # as prediction/target files
    assert out["id"].to_list() == ["g2", "g0", "g1"]
    expected = teacher.sort("id").select(COLUMNS).to_numpy()[[2, 0, 1]]
    np.testing.assert_allclose(out.select(COLUMNS).to_numpy(), expected, rtol=1e-6)


def test_ensemble_is_the_weighted_mean():
    ids = ["g0", "g1", "g2"]
    a, b = _teacher(ids, 0), _teacher(ids, 1)
    out = soft_label(DATASET.sort("id"), [a, b], SPEC, ["text"], weights=[3, 1])
    expected = 0.75 * a.select(COLUMNS).to_numpy() + 0.25 * b.select(COLUMNS).to_numpy()
    np.testing.assert_allclose(out.select(COLUMNS).to_numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_temperature_matches_the_direct_formula(temperature):
    teacher = _teacher(["g0", "g1", "g2"], 2)
    out = soft_label(DATASET.sort("id"), [teacher], SPEC, ["text"], temperature=temperature)
    p = teacher.select(COLUMNS).to_numpy()
    np.testing.assert_allclose(out["sad"].to_numpy(), expit(logit(p[:, 0]) / temperature), rtol=1e-5)
    np.testing.assert_allclose(
        out.select(["where=1", "where=2", "where=3"]).to_numpy(),
        softmax(np.log(p[:, 1:]) / temperature, axis=1), rtol=1e-5)
    if temperature < 1:  # sharpening moves every binary probability away from 0.5
        assert (np.abs(out["sad"].to_numpy() - 0.5) >= np.abs(p[:, 0] - 0.5) - 1e-7).all()


def test_missing_teacher_row_and_column_are_named(tmp_path):
    teacher = _teacher(["g0", "g1"], 0)
    with pytest.raises(OoflineError, match="'g2'"):
        soft_label(DATASET, [teacher], SPEC, ["text"])
    with pytest.raises(OoflineError, match="where=3"):
        soft_label(DATASET, [_teacher(["g0", "g1", "g2"], 0).drop("where=3")], SPEC, ["text"])
    with pytest.raises(OoflineError, match="'body'"):
        soft_label(DATASET, [_teacher(["g0", "g1", "g2"], 0)], SPEC, ["body"])
    bad = _teacher(["g0", "g1", "g2"], 0).with_columns(pl.col("where=1") * 0.5)
    with pytest.raises(OoflineError, match="where=1"):
        soft_label(DATASET, [bad.with_columns(pl.col("where=1") * 4)], SPEC, ["text"])
    with pytest.raises(OoflineError, match="'where'"):
        soft_label(DATASET, [bad], SPEC, ["text"])


def test_cli(tmp_path):
    DATASET.write_parquet(tmp_path / "gen.parquet")
    _teacher(["g0", "g1", "g2"], 0).write_parquet(tmp_path / "teacher.parquet")
    SPEC.save(tmp_path / "spec.json")
    main(["--dataset", str(tmp_path / "gen.parquet"), "--teacher", str(tmp_path / "teacher.parquet"),
          "--label-spec", str(tmp_path / "spec.json"), "--text-columns", "text", "--temperature", "0.5",
          "--output", str(tmp_path / "soft/t/gen.parquet")])
    assert pl.read_parquet(tmp_path / "soft/t/gen.parquet").height == 3


def test_output_is_readable_as_extra_training_data():
    """train.py's extra sets need `text` and the probability columns: check what it reads."""
    out = soft_label(DATASET, [_teacher(["g0", "g1", "g2"], 0)], SPEC, ["text"])
    assert out.select(["text", *COLUMNS]).to_numpy().shape == (3, 5)
    assert all(out[c].dtype == pl.Float32 for c in COLUMNS)


def test_rows_name_the_teacher_models_that_made_their_labels():
    from workflow_scripts.generated.soft_labels import rows_outside

    ids = ["g0", "g1", "g2"]
    a, b = _teacher(ids, 0).with_columns(pl.Series("fold", [0, 1, 0])), _teacher(ids, 1)
    out = soft_label(DATASET, [a, b], SPEC, ["text"], label_sources=["t/fold{fold}", "u/fold0+1"])
    # per row in dataset order (g2, g0, g1): the OOF file's fold model of that row, then the other teacher
    assert out["label_source"].to_list() == ["t/fold0,u/fold0+1", "t/fold0,u/fold0+1", "t/fold1,u/fold0+1"]
    assert "label_source" not in soft_label(DATASET, [b], SPEC, ["text"]).columns
    folds = pl.DataFrame({"id": ["g0", "g1", "g2"], "fold": [0, 1, 2]})
    assert rows_outside(DATASET, folds, [1])["id"].to_list() == ["g2", "g0"]
