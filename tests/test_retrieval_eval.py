"""Retrieval evaluation: rankings, reranking, MAP@k / Recall@k against plain loops; teacher scores."""
import numpy as np
import polars as pl
import pytest

from workflow_scripts.errors import OoflineError
from workflow_scripts.retrieval.eval import evaluate_fold, rank_corpus, rerank, score_oof
from workflow_scripts.retrieval.teacher_scores import add_teacher_scores


def plain_map_and_recall(actual, predicted, k):
    """Straightforward Kaggle MAP@k and Recall@k."""
    aps, recalls = [], []
    for truth, ranked in zip(actual, predicted):
        hits, total = 0, 0.0
        for position, pid in enumerate(ranked[:k], 1):
            if pid in truth:
                hits += 1
                total += hits / position
        aps.append(total / min(len(truth), k))
        recalls.append(len(set(truth) & set(ranked[:k])) / len(truth))
    return float(np.mean(aps)), float(np.mean(recalls))


def random_task(n_queries=30, n_passages=80, seed=0):
    rng = np.random.default_rng(seed)
    corpus = pl.DataFrame({"id": [f"p{i}" for i in range(n_passages)], "text": [f"text {i}" for i in range(n_passages)]})
    positives = [[f"p{j}" for j in rng.choice(n_passages, size=1 + i % 2, replace=False)] for i in range(n_queries)]
    queries = pl.DataFrame({"id": [f"q{i}" for i in range(n_queries)], "query": [f"query {i}" for i in range(n_queries)],
                            "positive_ids": positives})
    qv = rng.normal(size=(n_queries, 8)).astype(np.float32)
    pv = rng.normal(size=(n_passages, 8)).astype(np.float32)
    return queries, corpus, qv / np.linalg.norm(qv, axis=1, keepdims=True), pv / np.linalg.norm(pv, axis=1, keepdims=True)


def test_rank_corpus_is_a_full_sort():
    queries, corpus, qv, pv = random_task()
    ranked = rank_corpus(qv, pv, corpus["id"].to_list(), 25)
    scores = qv @ pv.T
    for row, ids in enumerate(ranked):
        expected = [f"p{j}" for j in sorted(range(pv.shape[0]), key=lambda j: (-scores[row, j], j))[:25]]
        assert ids == expected


def test_rerank_orders_the_head_by_score_and_keeps_the_tail():
    text_of_id = {f"p{i}": f"text {i}" for i in range(6)}
    def score_pairs(pairs):  # score = passage number: a higher number is better
        return np.array([float(text.split()[1]) for _, text in pairs])
    out = rerank(["q"], [["p1", "p4", "p2", "p5", "p0"]], text_of_id, score_pairs, top_n=3)
    assert out == [["p4", "p2", "p1", "p5", "p0"]]


def test_scores_match_plain_loop_per_fold_and_overall():
    queries, corpus, qv, pv = random_task(n_queries=40)
    folds = np.arange(40) % 2
    parts = []
    fake_reranker = lambda pairs: -np.array([float(t.split()[1]) for _, t in pairs])  # noqa: E731  lower id first
    for fold in (0, 1):
        rows = np.nonzero(folds == fold)[0]
        parts.append(evaluate_fold(queries[rows.tolist()], corpus, qv[rows], pv, fake_reranker, fold, depth=30, top_n=10))
    oof = pl.concat(parts)
    score = score_oof(oof, queries, k=25)
    assert score["k"] == 25 and score["n_queries"] == 40
    truth = dict(zip(queries["id"], queries["positive_ids"].to_list()))
    for name, column in (("embedder", "embedder_ids"), ("reranked", "reranked_ids")):
        expected = plain_map_and_recall([truth[i] for i in oof["id"]], oof[column].to_list(), 25)
        assert score["overall"][name]["map@25"] == pytest.approx(expected[0])
        assert score["overall"][name]["recall@25"] == pytest.approx(expected[1])
        fold0 = oof.filter(pl.col("fold") == 0)
        expected0 = plain_map_and_recall([truth[i] for i in fold0["id"]], fold0[column].to_list(), 25)
        assert score["folds"]["0"][name]["map@25"] == pytest.approx(expected0[0])
    assert score["overall"]["embedder"] != score["overall"]["reranked"]
    assert oof.schema["reranked_ids"] == pl.List(pl.String) and oof["embedder_ids"].list.len().min() == 30


def test_without_reranker_only_embedder_is_scored():
    queries, corpus, qv, pv = random_task()
    oof = evaluate_fold(queries, corpus, qv, pv, None, 0, depth=25, top_n=10)
    score = score_oof(oof, queries, k=5)
    assert set(score["overall"]) == {"embedder"} and "map@5" in score["overall"]["embedder"]


def test_teacher_scores_align_with_pos_and_neg():
    rows = [{"query": "a", "pos": ["p1"], "neg": ["n1", "n2"], "id": "q1"},
            {"query": "b", "pos": ["p2", "p3"], "neg": ["n3"], "id": "q2"}]
    lookup = {("a", "p1"): 3.5, ("a", "n1"): -1.0, ("a", "n2"): 0.25, ("b", "p2"): 2.0, ("b", "p3"): 1.0, ("b", "n3"): -7.0}
    scored = add_teacher_scores(rows, lambda pairs: np.array([lookup[p] for p in pairs]))
    assert scored[0]["pos_scores"] == [3.5] and scored[0]["neg_scores"] == [-1.0, 0.25]
    assert scored[1]["pos_scores"] == [2.0, 1.0] and scored[1]["neg_scores"] == [-7.0]
    assert scored[1]["id"] == "q2" and "pos_scores" not in rows[0]


def test_teacher_scores_bad_rows_and_bad_scorer():
    with pytest.raises(OoflineError, match="row 1: field 'neg' is missing"):
        add_teacher_scores([{"query": "a", "pos": ["p"]}], lambda pairs: np.zeros(len(pairs)))
    with pytest.raises(OoflineError, match="expected 2 finite"):
        add_teacher_scores([{"query": "a", "pos": ["p"], "neg": ["n"]}], lambda pairs: np.array([1.0, np.nan]))
