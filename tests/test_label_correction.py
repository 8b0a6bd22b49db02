"""Label correction selects exactly the top-q% rows by OOF loss and relabels or drops them, reporting each change."""
import json
import math

import numpy as np
import polars as pl
import pytest

from workflow_scripts.errors import OoflineError
from workflow_scripts.generated.label_correction import correct_labels, main, row_losses
from workflow_scripts.labels import Head, LabelSpec

SPEC = LabelSpec("multihead", (
    Head("sad", "binary", "sad"),
    Head("angry", "binary", "angry"),
    Head("where", "multiclass", "where", ("1", "2", "3")),
))
COLUMNS = SPEC.probability_columns  # sad, angry, where=1, where=2, where=3


def _data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    train = pl.DataFrame({
        "id": [f"r{i:02d}" for i in range(n)],
        "text": [f"row {i}" for i in range(n)],
        "sad": rng.integers(0, 2, n),
        "angry": rng.integers(0, 2, n),
        "where": rng.integers(1, 4, n),
    })
    binary = rng.uniform(0.01, 0.99, (n, 2))
    logits = rng.normal(size=(n, 3))
    softmax = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    oof = pl.DataFrame({"id": train["id"], "fold": np.arange(n) % 5})
    oof = oof.with_columns([pl.Series(c, v) for c, v in zip(COLUMNS, np.concatenate([binary, softmax], 1).T)])
    return train, oof.sample(fraction=1.0, shuffle=True, seed=1)  # OOF order differs from train order


def _plain_loss(train_row, oof_row):
    loss = 0.0
    for head in ("sad", "angry"):
        t, p = train_row[head], oof_row[head]
        loss += -(t * math.log(p) + (1 - t) * math.log(1 - p))
    loss += -math.log(oof_row[f"where={train_row['where']}"])
    return loss / 3


def test_row_loss_matches_a_plain_loop():
    train, oof = _data()
    by_id = {r["id"]: r for r in oof.iter_rows(named=True)}
    expected = [_plain_loss(r, by_id[r["id"]]) for r in train.iter_rows(named=True)]
    aligned = train.select("id").join(oof, on="id", how="left").select(COLUMNS).to_numpy()
    np.testing.assert_allclose(row_losses(aligned, SPEC.targets(train), SPEC), expected, rtol=1e-9)


@pytest.mark.parametrize("percent,expected_k", [(10, 4), (12.5, 5), (0, 0), (100, 40), (1, 0)])
def test_relabels_exactly_the_top_percent_rows(percent, expected_k):
    train, oof = _data()
    by_id = {r["id"]: r for r in oof.iter_rows(named=True)}
    losses = {r["id"]: _plain_loss(r, by_id[r["id"]]) for r in train.iter_rows(named=True)}
    top = set(sorted(losses, key=lambda i: -losses[i])[:expected_k])

    corrected, report, summary = correct_labels(train, oof, SPEC, percent)
    assert summary["selected_rows"] == expected_k
    assert set(report["id"].to_list()) <= top
    changed = corrected.join(train, on="id", suffix="_old").filter(
        (pl.col("sad") != pl.col("sad_old")) | (pl.col("angry") != pl.col("angry_old")) | (pl.col("where") != pl.col("where_old"))
    )
    assert set(changed["id"].to_list()) == set(report["id"].to_list())
    for row in corrected.filter(pl.col("id").is_in(list(top))).iter_rows(named=True):
        p = by_id[row["id"]]
        assert row["sad"] == int(p["sad"] >= 0.5) and row["angry"] == int(p["angry"] >= 0.5)
        assert row["where"] == 1 + int(np.argmax([p["where=1"], p["where=2"], p["where=3"]]))
    # every reported change is real: old is the training label, new the corrected one
    old = {(r["id"], c): str(r[c]) for r in train.iter_rows(named=True) for c in ("sad", "angry", "where")}
    new = {(r["id"], c): str(r[c]) for r in corrected.iter_rows(named=True) for c in ("sad", "angry", "where")}
    for r in report.iter_rows(named=True):
        assert old[(r["id"], r["column"])] == r["old"] and new[(r["id"], r["column"])] == r["new"] != r["old"]
    assert corrected.schema == train.schema and corrected["id"].to_list() == train["id"].to_list()


def test_drop_removes_the_top_rows_and_reports_them():
    train, oof = _data()
    corrected, report, summary = correct_labels(train, oof, SPEC, 10, action="drop")
    relabelled, _, _ = correct_labels(train, oof, SPEC, 10)
    assert corrected.height == 36 and summary["dropped_rows"] == 4
    dropped = set(train["id"]) - set(corrected["id"])
    assert set(report["id"].to_list()) == dropped and report["new"].null_count() == report.height


def test_ties_at_the_cut_go_to_smaller_id():
    train = pl.DataFrame({"id": ["b", "a", "c"], "sad": [1, 1, 1]})
    spec = LabelSpec("multilabel", (Head("sad", "binary", "sad"),))
    oof = pl.DataFrame({"id": ["a", "b", "c"], "sad": [0.2, 0.2, 0.9]})
    _, report, _ = correct_labels(train, oof, spec, 34)  # floor(3 * .34) = 1 row; a and b tie
    assert report["id"].to_list() == ["a"] and report["new"].to_list() == ["0"]


def test_cli_writes_outputs_and_missing_oof_rows_are_named(tmp_path):
    train, oof = _data()
    train.write_csv(tmp_path / "train.csv")
    SPEC.save(tmp_path / "spec.json")
    oof.write_parquet(tmp_path / "oof.parquet")
    args = ["--train", str(tmp_path / "train.csv"), "--oof", str(tmp_path / "oof.parquet"), "--label-spec", str(tmp_path / "spec.json"),
            "--top-percent", "10", "--targets-output", str(tmp_path / "out/t.parquet"), "--output", str(tmp_path / "out/c.parquet"), "--report", str(tmp_path / "out/c.csv"),
            "--summary", str(tmp_path / "out/c.json")]
    main(args)
    corrected = pl.read_parquet(tmp_path / "out/c.parquet")
    assert corrected.height == 40
    targets = pl.read_parquet(tmp_path / "out/t.parquet")
    assert targets.columns == ["id", *COLUMNS] and targets["id"].to_list() == corrected["id"].to_list()
    np.testing.assert_array_equal(targets.select(COLUMNS).to_numpy(), SPEC.targets(corrected))
    assert json.loads((tmp_path / "out/c.json").read_text())["selected_rows"] == 4
    oof.filter(pl.col("id") != "r07").write_parquet(tmp_path / "oof.parquet")
    with pytest.raises(OoflineError, match="'r07'"):
        main(args[:-6] + ["--output", str(tmp_path / "x.parquet"), "--report", str(tmp_path / "x.csv"), "--summary", str(tmp_path / "x.json")])
    assert not (tmp_path / "x.parquet").exists()
    oof.drop("where=2").write_parquet(tmp_path / "oof.parquet")
    with pytest.raises(OoflineError, match="where=2"):
        main(args)


@pytest.mark.parametrize("action", ["relabel", "drop"])
def test_held_out_rows_are_neither_candidates_nor_changed_and_rows_name_their_teacher(action):
    """A nested student's correction: only rows outside its held-out folds count for top_percent and change."""
    train, oof = _data()
    held_out = set(train["id"].to_list()[::4])  # 10 of the 40 rows
    candidates_oof = oof.filter(~pl.col("id").is_in(list(held_out)))  # the OOF need not cover held-out rows
    corrected, report, summary = correct_labels(train, candidates_oof, SPEC, 20, action=action,
                                                held_out_ids=held_out, label_source="t/fold{fold}")
    assert (summary["rows"], summary["candidate_rows"], summary["selected_rows"]) == (40, 30, 6)
    assert not set(report["id"].to_list()) & held_out
    kept = corrected.filter(pl.col("id").is_in(list(held_out)))
    assert kept.drop("label_source").equals(train.filter(pl.col("id").is_in(list(held_out))))
    assert kept["label_source"].null_count() == kept.height
    # in the training file's order, every held-out row still there (only candidates are dropped)
    assert corrected["id"].to_list() == [i for i in train["id"].to_list() if i in set(corrected["id"].to_list())]
    assert corrected.height == (34 if action == "drop" else 40)
    fold_of = dict(oof.select("id", "fold").iter_rows())
    for row_id, source in corrected.filter(~pl.col("id").is_in(list(held_out))).select("id", "label_source").iter_rows():
        assert source == f"t/fold{fold_of[row_id]}"
    # the top 20% of the 30 candidates by loss, computed here by hand
    by_id = {r["id"]: r for r in oof.iter_rows(named=True)}
    losses = {r["id"]: _plain_loss(r, by_id[r["id"]]) for r in train.iter_rows(named=True) if r["id"] not in held_out}
    top = set(sorted(losses, key=lambda i: -losses[i])[:6])
    assert set(report["id"].to_list()) <= top
    if action == "drop":
        assert set(report["id"].to_list()) == top
