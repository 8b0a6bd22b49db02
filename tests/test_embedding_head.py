"""embedding_head: embeddings made once (in input order, whatever the batching), heads equal to sklearn's."""
from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from workflow_scripts import embedding_head
from workflow_scripts.data import prepare_frames
from workflow_scripts.errors import run_cli
from workflow_scripts.io import write_parquet

HEADS = [{"name": "is_democrat", "type": "binary"}, {"name": "is_question", "type": "binary"},
         {"name": "speaker", "type": "multiclass"}]


@pytest.fixture(scope="module")
def minilm_dir(tmp_path_factory):
    from workflow_scripts.prepare_model import materialise

    return materialise("packaged:minilm", tmp_path_factory.mktemp("minilm") / "base")


@pytest.fixture(scope="module")
def debates_task(tmp_path_factory, debates_demo):
    folder = tmp_path_factory.mktemp("debates")
    train, test, spec, targets = prepare_frames(debates_demo[0], debates_demo[1],
                                                {"type": "multihead", "text_template": "{text}", "heads": HEADS})
    write_parquet(train, folder / "train.parquet")
    write_parquet(test, folder / "test.parquet")
    write_parquet(targets, folder / "targets.parquet")
    folds = np.arange(train.height) % 3
    write_parquet(pl.DataFrame({"id": train["id"], "fold": folds}), folder / "folds.parquet")
    spec.save(folder / "labels.json")
    return folder, train, test, spec, targets, folds


def test_embeddings_are_pooled_in_input_order(tmp_path, minilm_dir, debates_task):
    folder, train, test, _, _, _ = debates_task
    config = {"kind": "embedding_head", "pooling": "mean", "max_length": 64, "embed_batch_size": 16}
    argv = ["embed", "--train", str(folder / "train.parquet"), "--test", str(folder / "test.parquet"),
            "--base", str(minilm_dir), "--model-config", json.dumps(config), "--out", str(tmp_path / "e.safetensors")]
    assert run_cli(embedding_head.main, argv) == 0
    train_x, train_ids, test_x, test_ids = embedding_head.read_embeddings(tmp_path / "e.safetensors")
    assert train_ids == train["id"].to_list() and test_ids == test["id"].to_list()
    assert train_x.shape == (train.height, 384) and test_x.shape == (test.height, 384)
    # one row at a time, no padding: the same vectors as the length-sorted, padded batches
    import torch
    from transformers import AutoModel, AutoTokenizer

    model, tokenizer = AutoModel.from_pretrained(str(minilm_dir)).eval(), AutoTokenizer.from_pretrained(str(minilm_dir))
    for row in (0, 7, train.height - 1):
        inputs = tokenizer(train["text"][row], truncation=True, max_length=64, return_tensors="pt")
        with torch.inference_mode():
            expected = model(**inputs).last_hidden_state[0].mean(dim=0).numpy()
        np.testing.assert_allclose(train_x[row], expected, atol=1e-4)


def test_heads_equal_sklearn_on_the_same_embeddings_and_folds(tmp_path, minilm_dir, debates_task):
    from sklearn.linear_model import LogisticRegression

    folder, train, _, spec, targets, folds = debates_task
    config = {"kind": "embedding_head", "pooling": "cls", "max_length": 64, "C": 0.5, "seed": 1}
    embeddings = tmp_path / "e.safetensors"
    assert run_cli(embedding_head.main, [
        "embed", "--train", str(folder / "train.parquet"), "--test", str(folder / "test.parquet"),
        "--base", str(minilm_dir), "--model-config", json.dumps(config), "--out", str(embeddings)]) == 0
    train_x, _, test_x, _ = embedding_head.read_embeddings(embeddings)
    matrix = targets.select(spec.probability_columns).to_numpy()
    for fold in range(3):
        out = tmp_path / f"fold{fold}"
        assert run_cli(embedding_head.main, [
            "fit", "--embeddings", str(embeddings), "--folds", str(folder / "folds.parquet"),
            "--targets", str(folder / "targets.parquet"), "--labels", str(folder / "labels.json"), "--fold", str(fold),
            "--model-config", json.dumps(config), "--model-out", str(out / "head"),
            "--valid-out", str(out / "valid.parquet"), "--test-out", str(out / "test.parquet")]) == 0
        held = folds == fold
        valid = pl.read_parquet(out / "valid.parquet")
        assert valid["id"].to_list() == train["id"].filter(pl.Series(held)).to_list()
        for head, columns in spec.head_slices():
            block = matrix[:, columns]
            labels = block[:, 0] if head.type == "binary" else block.argmax(axis=1)
            reference = LogisticRegression(C=0.5, max_iter=1000, random_state=1).fit(train_x[~held], labels[~held])
            expected = reference.predict_proba(train_x[held])
            got = valid.select(spec.probability_columns[columns]).to_numpy()
            if head.type == "binary":
                np.testing.assert_allclose(got[:, 0], expected[:, 1], atol=1e-4)
            else:
                np.testing.assert_allclose(got[:, reference.classes_], expected, atol=1e-4)
        assert sorted(p.name for p in (out / "head").iterdir()) == ["heads.json", "heads.safetensors"]


def test_pooling_last_reads_the_last_real_token():
    import torch

    hidden = torch.arange(2 * 3 * 1, dtype=torch.float32).reshape(2, 3, 1)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert embedding_head.pool(hidden, mask, "last")[:, 0].tolist() == [1.0, 5.0]
    assert embedding_head.pool(hidden, mask, "mean")[:, 0].tolist() == [0.5, 4.0]
    assert embedding_head.pool(hidden, mask, "cls")[:, 0].tolist() == [0.0, 3.0]


def test_two_class_head_and_a_fold_missing_a_class_equal_sklearn(tmp_path, minilm_dir, debates_demo):
    """A multihead task with a 2-class multiclass head (`party`) and a 3-class head (`round`) whose fold 0
    trains without one class: every column equals scikit-learn's predict_proba (an unseen class: 0)."""
    from sklearn.linear_model import LogisticRegression

    def with_heads(frame):
        return frame.with_columns(
            pl.when(pl.col("is_democrat") == 1).then(pl.lit("dem")).otherwise(pl.lit("other")).alias("party"),
            pl.when(pl.col("debate").is_in(["2nd", "3rd"])).then(pl.lit("later")).otherwise(pl.col("debate"))
            .alias("round"))

    heads = [{"name": "party", "type": "multiclass"}, {"name": "round", "type": "multiclass"}]
    train, test, spec, targets = prepare_frames(with_heads(debates_demo[0]), debates_demo[1],
                                                {"type": "multihead", "text_template": "{text}", "heads": heads})
    assert spec.probability_columns == ["party=dem", "party=other", "round=1st", "round=VP", "round=later"]
    for name, frame in (("train", train), ("test", test), ("targets", targets)):
        write_parquet(frame, tmp_path / f"{name}.parquet")
    spec.save(tmp_path / "labels.json")
    matrix = targets.select(spec.probability_columns).to_numpy()
    later = matrix[:, 4] == 1
    folds = np.where(later, 0, np.arange(train.height) % 3)  # every `later` row is held out by fold 0
    write_parquet(pl.DataFrame({"id": train["id"], "fold": folds}), tmp_path / "folds.parquet")
    config = {"kind": "embedding_head", "pooling": "mean", "max_length": 64, "C": 1.0, "seed": 0}
    embeddings = tmp_path / "e.safetensors"
    assert run_cli(embedding_head.main, [
        "embed", "--train", str(tmp_path / "train.parquet"), "--test", str(tmp_path / "test.parquet"),
        "--base", str(minilm_dir), "--model-config", json.dumps(config), "--out", str(embeddings)]) == 0
    train_x, _, test_x, _ = embedding_head.read_embeddings(embeddings)
    for fold in range(3):
        out = tmp_path / f"fold{fold}"
        assert run_cli(embedding_head.main, [
            "fit", "--embeddings", str(embeddings), "--folds", str(tmp_path / "folds.parquet"),
            "--targets", str(tmp_path / "targets.parquet"), "--labels", str(tmp_path / "labels.json"),
            "--fold", str(fold), "--model-config", json.dumps(config), "--model-out", str(out / "head"),
            "--valid-out", str(out / "valid.parquet"), "--test-out", str(out / "test.parquet")]) == 0
        held = folds == fold
        for frame, x in ((pl.read_parquet(out / "valid.parquet"), train_x[held]),
                         (pl.read_parquet(out / "test.parquet"), test_x)):
            for head, columns in spec.head_slices():
                labels = matrix[~held][:, columns].argmax(axis=1)
                reference = LogisticRegression(C=1.0, max_iter=1000, random_state=0).fit(train_x[~held], labels)
                expected = np.zeros((x.shape[0], columns.stop - columns.start))
                expected[:, reference.classes_] = reference.predict_proba(x)
                np.testing.assert_allclose(frame.select(spec.probability_columns[columns]).to_numpy(), expected,
                                           atol=1e-4)
        party = pl.read_parquet(out / "valid.parquet").select("party=dem", "party=other").to_numpy()
        assert len(set(party.argmax(axis=1).tolist())) == 2  # not one class on every row
    assert (pl.read_parquet(tmp_path / "fold0" / "valid.parquet")["round=later"] == 0).all()
