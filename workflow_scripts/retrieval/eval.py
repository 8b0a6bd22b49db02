"""Score retrieval on held-out queries: embedder ranking, then reranking of its top N; test-query rankings.

oof.parquet: `id`, `fold`, `embedder_ids` (list[str], best first), `reranked_ids` (list[str]; null without a
reranker). score.json: MAP@k and Recall@k (metrics.py, Kaggle rules) per fold and overall, for the
embedder alone and for embedder+reranker. test.parquet: `id`, `ranked_ids` (top k, best first: reranked when
there is a reranker), and each stage's own top k, `embedder_ids` and `reranked_ids` (null without a reranker),
from which the submission takes its stage's (stages.py).
With --final-fit (config `valid_fold: null`) the models saw every query: only test.parquet has rankings.
A fine-tune that chose its epoch on the valid fold (`select_checkpoint: best`, --embedder-checkpoints /
--reranker-checkpoints) adds `checkpoint_selection` (chosen and last epoch's scores) and
`selected_on_valid_fold: true` to score.json.
"""
from __future__ import annotations

import argparse
from typing import Callable, Sequence

import numpy as np
import polars as pl

from workflow_scripts.errors import OoflineError, run_cli
from workflow_scripts.io import read_table, write_json, write_parquet
from workflow_scripts.metrics import map_at_k, recall_at_k
from workflow_scripts.retrieval.checkpoints import OPTIMISTIC_NOTE, read_records, score_summary
from workflow_scripts.retrieval.mining import add_embedder_arguments, embedder_settings, top_k_inner_product
from workflow_scripts.retrieval.data import load_task, validate_queries, with_query_folds
from workflow_scripts.retrieval.models import (
    RerankerSettings, add_reranker_arguments, encode_queries_and_corpus, load_reranker, rerank_scores, reranker_settings,
)

OOF_SCHEMA = {"id": pl.String, "fold": pl.Int64, "embedder_ids": pl.List(pl.String), "reranked_ids": pl.List(pl.String)}
ScorePairs = Callable[[list[tuple[str, str]]], np.ndarray]


def rank_corpus(query_vecs: np.ndarray, passage_vecs: np.ndarray, passage_ids: Sequence[str], depth: int) -> list[list[str]]:
    """Passage ids per query, best first, `depth` long (capped at the corpus size); vecs normalised."""
    indices, _ = top_k_inner_product(query_vecs, passage_vecs, min(depth, len(passage_ids)))
    ids = np.asarray(passage_ids, dtype=object)
    return [ids[row].tolist() for row in indices]


def rerank(queries: Sequence[str], ranked_ids: Sequence[Sequence[str]], text_of_id: dict[str, str],
           score_pairs: ScorePairs, top_n: int) -> list[list[str]]:
    """Reorder each query's first `top_n` ids by reranker score (ties keep embedder order); the rest follow."""
    pairs = [(query, text_of_id[pid]) for query, ids in zip(queries, ranked_ids) for pid in ids[:top_n]]
    scores = np.asarray(score_pairs(pairs), dtype=np.float64) if pairs else np.zeros(0)
    out, start = [], 0
    for ids in ranked_ids:
        head = list(ids[:top_n])
        block = scores[start:start + len(head)]
        start += len(head)
        order = sorted(range(len(head)), key=lambda i: (-block[i], i))
        out.append([head[i] for i in order] + list(ids[top_n:]))
    return out


def score_rankings(actual: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]], k: int) -> dict[str, float]:
    return {f"map@{k}": map_at_k(actual, predicted, k), f"recall@{k}": recall_at_k(actual, predicted, k)}


def score_oof(oof: pl.DataFrame, queries: pl.DataFrame, k: int) -> dict:
    """{"k", "n_queries", "overall": {"embedder": {...}, "reranked": {...}}, "folds": {"0": {...}}}."""
    joined = oof.join(queries.select("id", "positive_ids"), on="id", how="left")
    columns = {"embedder": "embedder_ids", "reranked": "reranked_ids"}

    def block(frame: pl.DataFrame) -> dict:
        actual = frame["positive_ids"].to_list()
        return {
            name: score_rankings(actual, frame[column].to_list(), k)
            for name, column in columns.items() if frame[column].null_count() == 0
        }

    folds = {str(fold): block(joined.filter(pl.col("fold") == fold)) for fold in sorted(joined["fold"].unique())}
    return {"k": k, "n_queries": oof.height, "overall": block(joined), "folds": folds}


def evaluate_fold(
    queries: pl.DataFrame, corpus: pl.DataFrame, query_vecs: np.ndarray, passage_vecs: np.ndarray,
    score_pairs: ScorePairs | None, fold: int, depth: int, top_n: int,
) -> pl.DataFrame:
    """OOF rows for one fold's queries: embedder ranking and (when score_pairs is given) the reranked one."""
    ranked = rank_corpus(query_vecs, passage_vecs, corpus["id"].to_list(), depth)
    reranked = None
    if score_pairs is not None:
        text_of_id = dict(zip(corpus["id"].to_list(), corpus["text"].to_list()))
        reranked = rerank(queries["query"].to_list(), ranked, text_of_id, score_pairs, top_n)
    return pl.DataFrame(
        {"id": queries["id"], "fold": [fold] * queries.height, "embedder_ids": ranked, "reranked_ids": reranked},
        schema=OOF_SCHEMA,
    )


def test_rankings(ranked: pl.DataFrame, k: int) -> pl.DataFrame:
    """test.parquet: `ranked_ids` (reranked when there is a reranker, else the embedder's) and both stages'
    rankings, `embedder_ids` and `reranked_ids` (null without a reranker), top k each, best first."""
    column = "reranked_ids" if ranked["reranked_ids"].null_count() == 0 else "embedder_ids"
    return ranked.select("id", pl.col(column).list.head(k).alias("ranked_ids"),
                         pl.col("embedder_ids").list.head(k), pl.col("reranked_ids").list.head(k))


def reranker_scorer(path: str | None, args: argparse.Namespace) -> ScorePairs | None:
    """Raw reranker scores of (query, passage) pairs with the CLI's reranker settings; None without a path."""
    if not path:
        return None
    settings: RerankerSettings = reranker_settings(args, path)
    model = load_reranker(settings)
    return lambda pairs: rerank_scores(model, settings, pairs)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Retrieval OOF rankings, MAP@k/Recall@k, and test rankings.")
    parser.add_argument("--queries", required=True)
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--folds", required=True, help="parquet with id, fold")
    parser.add_argument("--valid-folds", type=int, nargs="+", default=None, help="held-out folds, one model each")
    parser.add_argument("--final-fit", action="store_true",
                        help="the models trained on every query: rank the test queries only (no OOF score)")
    parser.add_argument("--embedders", nargs="+", required=True, help="one embedder folder per valid fold")
    parser.add_argument("--rerankers", nargs="*", default=[], help="one reranker folder per valid fold (optional)")
    parser.add_argument("--k", type=int, default=25)
    parser.add_argument("--top-n", type=int, default=50, help="embedder candidates the reranker reorders")
    parser.add_argument("--oof-out", required=True)
    parser.add_argument("--score-out", required=True)
    parser.add_argument("--test-queries", default=None, help="rank these with the first valid fold's models")
    parser.add_argument("--test-out", default=None)
    parser.add_argument("--embedder-checkpoints", default=None,
                        help="checkpoints.json of an embedder that chose its epoch on the valid fold")
    parser.add_argument("--reranker-checkpoints", default=None,
                        help="checkpoints.json of a reranker that chose its epoch on the valid fold")
    add_embedder_arguments(parser, with_model=False)
    add_reranker_arguments(parser, with_model=False)
    args = parser.parse_args(argv)
    if args.final_fit == (args.valid_folds is not None):
        raise OoflineError("give either --valid-folds or --final-fit")
    if args.final_fit:
        args.valid_folds = [None]  # one model, no held-out queries
    if len(args.embedders) != len(args.valid_folds):
        raise OoflineError(f"--embedders has {len(args.embedders)} entries for {len(args.valid_folds)} --valid-folds")
    if args.rerankers and len(args.rerankers) != len(args.valid_folds):
        raise OoflineError(f"--rerankers has {len(args.rerankers)} entries for {len(args.valid_folds)} --valid-folds")
    if (args.test_queries is None) != (args.test_out is None):
        raise OoflineError("--test-queries and --test-out go together")
    queries, corpus = load_task(args.queries, args.corpus)
    queries = with_query_folds(queries, args.folds)
    depth = max(args.k, args.top_n)
    parts = []
    for position, fold in enumerate(args.valid_folds):
        held_out = queries.head(0) if fold is None else queries.filter(pl.col("fold") == fold)
        if held_out.height == 0 and fold is not None:
            raise OoflineError(f"{args.folds}: fold {fold} (from --valid-folds) has no queries")
        # in-context examples from the queries this fold's models trained on, never the held-out ones
        training = queries if fold is None else queries.filter(pl.col("fold") != fold)
        settings = embedder_settings(args, args.embedders[position], training_queries=training, corpus=corpus)
        test = None
        if position == 0 and args.test_queries:
            test = validate_queries(read_table(args.test_queries), corpus["id"].to_list(), args.test_queries, False)
        texts = held_out["query"].to_list() + (test["query"].to_list() if test is not None else [])
        all_query_vecs, passage_vecs = encode_queries_and_corpus(settings, texts, corpus["text"].to_list())
        query_vecs, test_vecs = all_query_vecs[:held_out.height], all_query_vecs[held_out.height:]
        score_pairs = reranker_scorer(args.rerankers[position] if args.rerankers else None, args)
        if fold is not None:
            parts.append(evaluate_fold(held_out, corpus, query_vecs, passage_vecs, score_pairs, fold, depth, args.top_n))
            print(f"fold {fold}: ranked {held_out.height} held-out queries", flush=True)
        if test is not None:
            ranked = evaluate_fold(test, corpus, test_vecs, passage_vecs, score_pairs, -1, depth, args.top_n)
            write_parquet(test_rankings(ranked, args.k), args.test_out)
            print(f"test: ranked {test.height} queries -> {args.test_out}", flush=True)
    if args.final_fit:
        oof = pl.DataFrame(schema=OOF_SCHEMA)
        score = {"k": args.k, "n_queries": 0, "overall": {}, "folds": {}, "final_fit": True,
                 "note": "valid_fold: null trains on every query: no held-out score"}
    else:
        oof = pl.concat(parts).sort("fold", "id")
        score = score_oof(oof, queries, args.k)
        records = read_records({"embedder": args.embedder_checkpoints, "reranker": args.reranker_checkpoints})
        if records:
            # the overall scores above are the chosen checkpoints'; the choice used this fold
            score["checkpoint_selection"] = {role: score_summary(record) for role, record in records.items()}
            score["selected_on_valid_fold"] = True
            score["note"] = OPTIMISTIC_NOTE
    write_parquet(oof, args.oof_out)
    write_json(score, args.score_out)
    print(f"score: {score['overall']}", flush=True)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
