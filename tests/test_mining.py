"""Hard-negative mining: window, exclusions, determinism, chunking, errors (random embeddings, no model)."""
import numpy as np
import polars as pl
import pytest

from workflow_scripts.errors import OoflineError
from workflow_scripts.retrieval.mining import (
    mine_hard_negatives, parse_range, read_jsonl, top_k_inner_product, training_queries, training_rows, write_jsonl,
)


def normalised(rng, rows, dim=16):
    vecs = rng.normal(size=(rows, dim)).astype(np.float32)
    return vecs / np.linalg.norm(vecs, axis=1, keepdims=True)


def tiny_task(n_queries=40, n_passages=60, seed=0):
    rng = np.random.default_rng(seed)
    corpus = pl.DataFrame({"id": [f"p{i}" for i in range(n_passages)], "text": [f"passage {i}" for i in range(n_passages)]})
    positives = [[f"p{i % n_passages}"] + ([f"p{(i + 7) % n_passages}"] if i % 3 == 0 else []) for i in range(n_queries)]
    queries = pl.DataFrame({"id": [f"q{i}" for i in range(n_queries)], "query": [f"query {i}" for i in range(n_queries)],
                            "positive_ids": positives})
    # query 0's text equals passage 5's text: that passage is the query itself and must never be a negative
    queries = queries.with_columns(pl.when(pl.col("id") == "q0").then(pl.lit("passage 5")).otherwise(pl.col("query")).alias("query"))
    query_vecs, passage_vecs = normalised(rng, n_queries), normalised(rng, n_passages)
    # make positives and the query's own passage rank inside the window, so exclusion is actually exercised
    for row, pos in enumerate(positives):
        passage_vecs[int(pos[0][1:])] = query_vecs[row] * 0.99 + passage_vecs[int(pos[0][1:])] * 0.01
    passage_vecs[5] = query_vecs[0]
    passage_vecs /= np.linalg.norm(passage_vecs, axis=1, keepdims=True)
    return queries, corpus, query_vecs, passage_vecs


def reference_ranking(query_vecs, passage_vecs):
    """Plain full score matrix, stable sort by falling score (ties: lower index first)."""
    scores = query_vecs @ passage_vecs.T
    return np.array([sorted(range(len(row)), key=lambda j: (-row[j], j)) for row in scores])


def test_top_k_matches_full_sort_and_any_chunking():
    rng = np.random.default_rng(1)
    q, p = normalised(rng, 37), normalised(rng, 101)
    full = reference_ranking(q, p)[:, :20]
    for q_chunk, p_chunk in [(1000, 1000), (5, 7), (1, 20), (37, 101), (16, 3)]:
        indices, scores = top_k_inner_product(q, p, 20, q_chunk, p_chunk)
        np.testing.assert_array_equal(indices, full)
        assert np.all(np.diff(scores, axis=1) <= 0)


def test_top_k_breaks_ties_by_lower_index_across_chunks():
    q = np.ones((2, 4), dtype=np.float32) / 2
    p = np.tile(np.ones(4, dtype=np.float32) / 2, (9, 1))  # nine identical passages: all scores tie
    p[4] = -p[4]
    for p_chunk in (2, 3, 9):
        indices, _ = top_k_inner_product(q, p, 5, 1, p_chunk)
        np.testing.assert_array_equal(indices, [[0, 1, 2, 3, 5]] * 2)


def test_negatives_respect_window_and_exclusions():
    queries, corpus, qv, pv = tiny_task()
    lo, hi = 2, 30
    mined = mine_hard_negatives(queries, corpus, qv, pv, (lo, hi), 6, seed=3)
    ranking = reference_ranking(qv, pv)
    ids = corpus["id"].to_list()
    for (qid, query, positive_ids), m in zip(queries.iter_rows(), mined):
        assert len(m.passage_index) == 6 and len(set(m.passage_index)) == 6
        neg_ids = {ids[i] for i in m.passage_index}
        assert not neg_ids & set(positive_ids)
        assert query not in {corpus["text"][i] for i in m.passage_index}
        for index, rank in zip(m.passage_index, m.rank):
            assert lo <= rank < hi and ranking[list(queries["id"]).index(qid)][rank] == index
        assert m.rank == sorted(m.rank)
    assert 5 not in mined[0].passage_index


def test_short_window_is_padded_from_rest_of_corpus_without_positives():
    queries, corpus, qv, pv = tiny_task()
    mined = mine_hard_negatives(queries, corpus, qv, pv, (2, 5), 10, seed=0)
    for (qid, query, positive_ids), m in zip(queries.iter_rows(), mined):
        assert len(m.passage_index) == 10 and len(set(m.passage_index)) == 10
        assert not {corpus["id"][i] for i in m.passage_index} & set(positive_ids)
        in_window = [r for r in m.rank if r != -1]
        assert len(in_window) <= 3 and all(2 <= r < 5 for r in in_window)
        assert m.rank.count(-1) == 10 - len(in_window)


def test_mining_is_deterministic_and_row_order_independent(tmp_path):
    queries, corpus, qv, pv = tiny_task()
    runs = []
    for name in ("a", "b"):
        mined = mine_hard_negatives(queries, corpus, qv, pv, (2, 30), 5, seed=11, query_chunk=7, passage_chunk=13)
        write_jsonl(training_rows(queries, corpus, mined, prompt="Retrieve the movie."), tmp_path / f"{name}.jsonl")
        runs.append((tmp_path / f"{name}.jsonl").read_bytes())
    assert runs[0] == runs[1]
    unchunked = mine_hard_negatives(queries, corpus, qv, pv, (2, 30), 5, seed=11, query_chunk=10_000, passage_chunk=10_000)
    rows = read_jsonl(tmp_path / "a.jsonl")
    assert [r["neg_ids"] for r in rows] == [[corpus["id"][i] for i in m.passage_index] for m in unchunked]
    # reversing the query order gives every query the same negatives (RNG is keyed by query id)
    order = list(range(queries.height))[::-1]
    reversed_mined = mine_hard_negatives(queries[order], corpus, qv[order], pv, (2, 30), 5, seed=11)
    assert [m.passage_index for m in reversed_mined][::-1] == [m.passage_index for m in unchunked]
    other_seed = mine_hard_negatives(queries, corpus, qv, pv, (2, 30), 5, seed=12)
    assert [m.passage_index for m in other_seed] != [m.passage_index for m in unchunked]


def test_training_rows_have_flagembedding_format():
    queries, corpus, qv, pv = tiny_task(n_queries=3)
    rows = training_rows(queries, corpus, mine_hard_negatives(queries, corpus, qv, pv, (1, 10), 4, 0), prompt="P")
    assert set(rows[0]) == {"id", "query", "pos", "neg", "prompt", "pos_ids", "neg_ids", "neg_ranks"}
    assert rows[0]["pos"] == [corpus["text"][int(p[1:])] for p in rows[0]["pos_ids"]]
    assert rows[0]["neg"] == [corpus["text"][int(p[1:])] for p in rows[0]["neg_ids"]]


def test_range_past_corpus_size_is_a_clear_error():
    queries, corpus, qv, pv = tiny_task()
    with pytest.raises(OoflineError, match=r"range_for_sampling 2-200.*60 passages"):
        mine_hard_negatives(queries, corpus, qv, pv, (2, 200), 5, 0)


@pytest.mark.parametrize("text", ["2", "a-b", "5-3", "-1-4"])
def test_bad_range_strings(text):
    with pytest.raises(OoflineError, match="range_for_sampling"):
        parse_range(text)


def test_corpus_too_small_for_negative_number_names_query():
    queries, corpus, qv, pv = tiny_task(n_queries=2, n_passages=6)
    with pytest.raises(OoflineError, match=r"query 'q0'.*negative_number=9"):
        mine_hard_negatives(queries, corpus, qv, pv, (1, 4), 9, 0)


def test_valid_fold_queries_are_left_out(tmp_path):
    queries, *_ = tiny_task(n_queries=6)
    pl.DataFrame({"id": [f"q{i}" for i in range(6)], "fold": [0, 1, 0, 1, 0, 1]}).write_parquet(tmp_path / "folds.parquet")
    kept = training_queries(queries, str(tmp_path / "folds.parquet"), 1)
    assert kept["id"].to_list() == ["q0", "q2", "q4"]
    pl.DataFrame({"id": ["q0"], "fold": [0]}).write_parquet(tmp_path / "short.parquet")
    with pytest.raises(OoflineError, match="short.parquet.*'id'"):
        training_queries(queries, str(tmp_path / "short.parquet"), 1)
