"""Hard-negative mining with the semantics of FlagEmbedding's scripts/hn_mine.py, seeded and chunked.

For each query the corpus is ranked by inner product of normalised embeddings; candidates are the
passages at 0-based ranks [lo, hi) of that ranking, minus the query's positives and any passage whose
text equals the query or a positive (hn_mine compares texts); `negative_number` of them are sampled
(seeded per query id, so a row's negatives do not depend on the other rows) and kept in rank order.
Short lists are padded with random passages from the rest of the corpus, as hn_mine does (but without
repeats or positives). Exact search: the score matrix is built chunk by chunk with a running top-k merge,
so memory is O(query_chunk * passage_chunk + n_queries * hi), never O(n_queries * n_passages).
"""
from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import polars as pl

from workflow_scripts.errors import OoflineError, run_cli
from workflow_scripts.io import atomic_path, read_table
from workflow_scripts.retrieval.data import load_task, with_query_folds
from workflow_scripts.execution.device import PRECISIONS
from workflow_scripts.retrieval.models import (EMBEDDER_CLASSES, EmbedderSettings, encode_queries_and_corpus,
                                               pick_icl_examples)


def parse_range(text: str) -> tuple[int, int]:
    """'2-200' -> (2, 200): 0-based ranks lo (inclusive) to hi (exclusive), as hn_mine's range_for_sampling."""
    try:
        lo, hi = (int(part) for part in str(text).split("-"))
    except ValueError:
        raise OoflineError(f"range_for_sampling {text!r} must look like 'LO-HI', e.g. '2-200'") from None
    if not 0 <= lo < hi:
        raise OoflineError(f"range_for_sampling {text!r}: expected 0 <= LO < HI")
    return lo, hi


def check_range_fits(range_for_sampling: tuple[int, int], n_passages: int) -> None:
    lo, hi = range_for_sampling
    if hi > n_passages:
        raise OoflineError(
            f"range_for_sampling {lo}-{hi} reaches past the corpus: it has {n_passages} passages (expected HI <= {n_passages})"
        )


def _top_k_in_chunk(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices (rows, k) of each row's k largest scores; at the boundary, ties go to lower indices."""
    n_columns = scores.shape[1]
    if k >= n_columns:
        return np.broadcast_to(np.arange(n_columns), scores.shape).copy()
    kth = np.partition(scores, n_columns - k, axis=1)[:, n_columns - k][:, None]
    above = scores > kth
    equal = scores == kth
    need = k - above.sum(axis=1)
    keep = above | equal
    crowded = np.nonzero(equal.sum(axis=1) > need)[0]  # rows with more ties than places: keep the first ones
    if crowded.size:
        rank_among_ties = np.cumsum(equal[crowded], axis=1)
        keep[crowded] = above[crowded] | (equal[crowded] & (rank_among_ties <= need[crowded, None]))
    return np.nonzero(keep)[1].reshape(scores.shape[0], k)


def top_k_inner_product(
    query_vecs: np.ndarray, passage_vecs: np.ndarray, k: int, query_chunk: int = 256, passage_chunk: int = 32768
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product: indices (n_queries, k) int64 and scores (n_queries, k) float32.

    Rows are sorted by falling score, ties by rising passage index, so any chunking gives the same answer.
    """
    query_vecs = np.ascontiguousarray(query_vecs, dtype=np.float32)
    passage_vecs = np.ascontiguousarray(passage_vecs, dtype=np.float32)
    n_queries, n_passages = len(query_vecs), len(passage_vecs)
    if not 1 <= k <= n_passages:
        raise OoflineError(f"top-k search: k={k} must be between 1 and the corpus size {n_passages}")
    if not (np.isfinite(query_vecs).all() and np.isfinite(passage_vecs).all()):
        raise OoflineError("embeddings contain NaN or infinite values (check the embedder)")
    indices = np.empty((n_queries, k), dtype=np.int64)
    scores = np.empty((n_queries, k), dtype=np.float32)
    for q_start in range(0, n_queries, query_chunk):
        block = query_vecs[q_start:q_start + query_chunk]
        best_idx = np.empty((len(block), 0), dtype=np.int64)
        best_sc = np.empty((len(block), 0), dtype=np.float32)
        for p_start in range(0, n_passages, passage_chunk):
            chunk_scores = block @ passage_vecs[p_start:p_start + passage_chunk].T
            local = _top_k_in_chunk(chunk_scores, k)
            cand_sc = np.concatenate([best_sc, np.take_along_axis(chunk_scores, local, axis=1)], axis=1)
            cand_idx = np.concatenate([best_idx, local + p_start], axis=1)
            order = np.lexsort((cand_idx, -cand_sc), axis=1)[:, :k]
            best_sc = np.take_along_axis(cand_sc, order, axis=1)
            best_idx = np.take_along_axis(cand_idx, order, axis=1)
        indices[q_start:q_start + len(block)] = best_idx
        scores[q_start:q_start + len(block)] = best_sc
        if n_queries > query_chunk:
            print(f"searched {min(q_start + query_chunk, n_queries)}/{n_queries} queries", flush=True)
    return indices, scores


def query_rng(seed: int, query_id: str) -> np.random.Generator:
    """A generator that depends only on the seed and the query id (not on row order or other rows)."""
    digest = int.from_bytes(hashlib.sha256(str(query_id).encode()).digest()[:8], "little")
    return np.random.default_rng(np.random.SeedSequence([int(seed), digest]))


@dataclass(frozen=True)
class MinedNegatives:
    passage_index: list[int]  # corpus row numbers, window negatives (rank order) then padding
    rank: list[int]  # 0-based rank in the embedder's ranking; -1 for padding drawn outside the window


def sample_negatives(
    ranked: np.ndarray, excluded: set[int], lo: int, negative_number: int, n_passages: int,
    rng: np.random.Generator, query_id: str,
) -> MinedNegatives:
    """Pick negatives for one query from `ranked` (its passages at ranks lo..hi-1), padding if short."""
    window = [(lo + offset, int(index)) for offset, index in enumerate(ranked) if int(index) not in excluded]
    if len(window) > negative_number:
        picked = np.sort(rng.choice(len(window), size=negative_number, replace=False))
        window = [window[i] for i in picked]
    chosen = [index for _, index in window]
    ranks = [rank for rank, _ in window]
    short = negative_number - len(chosen)
    if short:
        blocked = excluded | set(chosen)
        if n_passages - len(blocked) < short:
            raise OoflineError(
                f"query {query_id!r}: the corpus has only {n_passages - len(excluded)} passages that are not "
                f"positives, fewer than negative_number={negative_number}"
            )
        # rejection sampling keeps this O(short) even for a 1M-passage corpus
        while short:
            for index in rng.integers(0, n_passages, size=2 * short + 8).tolist():
                if index not in blocked:
                    blocked.add(index)
                    chosen.append(index)
                    ranks.append(-1)
                    short -= 1
                    if not short:
                        break
    return MinedNegatives(chosen, ranks)


def mine_hard_negatives(
    queries: pl.DataFrame, corpus: pl.DataFrame, query_vecs: np.ndarray, passage_vecs: np.ndarray,
    range_for_sampling: tuple[int, int], negative_number: int, seed: int,
    query_chunk: int = 256, passage_chunk: int = 32768,
) -> list[MinedNegatives]:
    """Negatives per query (row order of `queries`); vecs: (n_queries, dim), (n_passages, dim) normalised."""
    lo, hi = range_for_sampling
    check_range_fits(range_for_sampling, corpus.height)
    if negative_number < 1:
        raise OoflineError(f"negative_number must be at least 1, got {negative_number}")
    row_of_id = {passage_id: row for row, passage_id in enumerate(corpus["id"].to_list())}
    rows_of_text: dict[str, list[int]] = {}
    for row, text in enumerate(corpus["text"].to_list()):
        rows_of_text.setdefault(text, []).append(row)
    ranked, _ = top_k_inner_product(query_vecs, passage_vecs, hi, query_chunk, passage_chunk)
    mined = []
    for row, (query_id, query, positive_ids) in enumerate(queries.select("id", "query", "positive_ids").iter_rows()):
        positive_rows = [row_of_id[p] for p in positive_ids]
        excluded = set(positive_rows) | set(rows_of_text.get(query, []))
        for p in positive_rows:  # hn_mine drops candidates whose text equals a positive's text
            excluded.update(rows_of_text[corpus["text"][p]])
        mined.append(sample_negatives(
            ranked[row, lo:hi], excluded, lo, negative_number, corpus.height, query_rng(seed, query_id), query_id
        ))
    return mined


def training_rows(
    queries: pl.DataFrame, corpus: pl.DataFrame, mined: Sequence[MinedNegatives], prompt: str | None = None
) -> list[dict]:
    """FlagEmbedding training rows {query, pos, neg, prompt} plus passthrough id, pos_ids, neg_ids, neg_ranks."""
    texts = corpus["text"].to_list()
    ids = corpus["id"].to_list()
    text_of_id = dict(zip(ids, texts))
    rows = []
    for (query_id, query, positive_ids), negatives in zip(queries.select("id", "query", "positive_ids").iter_rows(), mined):
        row = {
            "id": query_id,
            "query": query,
            "pos": [text_of_id[p] for p in positive_ids],
            "neg": [texts[i] for i in negatives.passage_index],
            "pos_ids": list(positive_ids),
            "neg_ids": [ids[i] for i in negatives.passage_index],
            "neg_ranks": negatives.rank,
        }
        if prompt:
            row["prompt"] = prompt
        rows.append(row)
    return rows


def write_jsonl(rows: Sequence[dict], path) -> None:
    """One JSON object per line, keys sorted, UTF-8 kept (byte-identical reruns), written atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")


def read_jsonl(path) -> list[dict]:
    from pathlib import Path

    path = Path(path)
    if not path.exists():
        raise OoflineError(f"file not found: {path}")
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise OoflineError(f"{path}, line {number}: not valid JSON ({error})") from None
    return rows


def training_queries(queries: pl.DataFrame, folds_path: str | None, valid_fold: int | None) -> pl.DataFrame:
    """Drop the held-out fold's queries, so a fold model never trains on the queries it is scored on."""
    if valid_fold is None:
        return queries
    if folds_path is None:
        raise OoflineError("--valid-fold needs --folds")
    return with_query_folds(queries, folds_path).filter(pl.col("fold") != valid_fold).drop("fold")


def add_embedder_arguments(parser: argparse.ArgumentParser, with_model: bool = True) -> None:
    """Embedder CLI arguments shared by mining and retrieval_eval (eval passes one model per fold instead)."""
    if with_model:
        parser.add_argument("--embedder", required=True, help="local model directory")
    parser.add_argument("--embedder-class", default="encoder-only-base", choices=EMBEDDER_CLASSES)
    parser.add_argument("--pooling-method", default="mean", choices=["cls", "mean", "last_token"])
    parser.add_argument("--query-instruction", default="")
    parser.add_argument("--query-instruction-format", default="{}{}")
    parser.add_argument("--embed-batch-size", type=int, default=64)
    parser.add_argument("--query-max-length", type=int, default=512)
    parser.add_argument("--passage-max-length", type=int, default=512)
    parser.add_argument("--devices", default=None)
    parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                        help="auto: bf16 on a GPU that supports it, fp32 on the CPU")
    parser.add_argument("--icl-examples", type=int, default=0,
                        help="decoder-only-icl: this many training (query, positive) pairs as in-context examples")
    parser.add_argument("--icl-seed", type=int, default=0)
    parser.add_argument("--examples-instruction-format", default="<instruct>{}\n<query>{}\n<response>{}")


def embedder_settings(args: argparse.Namespace, model_path: str | None = None, training_queries=None,
                      corpus=None) -> EmbedderSettings:
    """The embedder of the CLI arguments; in-context examples come from `training_queries` only."""
    examples = ()
    if args.icl_examples:
        examples = pick_icl_examples(training_queries, corpus, args.icl_examples, args.icl_seed,
                                     args.query_instruction or None)
    return EmbedderSettings(
        model_path or args.embedder, args.embedder_class, args.pooling_method, args.query_instruction or None,
        args.query_instruction_format, args.embed_batch_size, args.query_max_length, args.passage_max_length,
        args.devices, args.precision, examples, args.examples_instruction_format,
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Mine hard negatives into FlagEmbedding's training jsonl.")
    parser.add_argument("--queries", required=True)
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--folds", default=None, help="parquet with id, fold (needed with --valid-fold)")
    parser.add_argument("--valid-fold", type=int, default=None, help="leave this fold's queries out")
    add_embedder_arguments(parser)
    parser.add_argument("--range-for-sampling", default="2-200")
    parser.add_argument("--negative-number", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompt", default="", help="written as each row's `prompt` (overrides the trainer's instruction)")
    parser.add_argument("--query-chunk", type=int, default=256)
    parser.add_argument("--passage-chunk", type=int, default=32768)
    parser.add_argument("--output", required=True, help="mined.jsonl")
    args = parser.parse_args(argv)
    lo_hi = parse_range(args.range_for_sampling)
    queries, corpus = load_task(args.queries, args.corpus)
    queries = training_queries(queries, args.folds, args.valid_fold)
    check_range_fits(lo_hi, corpus.height)  # fail before the (slow) encoding
    query_vecs, passage_vecs = encode_queries_and_corpus(
        embedder_settings(args, training_queries=queries, corpus=corpus), queries["query"].to_list(),
        corpus["text"].to_list()
    )
    mined = mine_hard_negatives(
        queries, corpus, query_vecs, passage_vecs, lo_hi, args.negative_number, args.seed,
        args.query_chunk, args.passage_chunk,
    )
    write_jsonl(training_rows(queries, corpus, mined, args.prompt or None), args.output)
    padded = sum(rank == -1 for m in mined for rank in m.rank)
    print(f"mined {len(mined)} queries x {args.negative_number} negatives ({padded} padded) -> {args.output}", flush=True)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
