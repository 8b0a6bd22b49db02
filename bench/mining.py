"""Bench: oofline's chunked, seeded mining vs a straightforward re-implementation of hn_mine.py's logic.

Same random normalised embeddings (20k passages, 2k queries, dim 384), range 2-200, 15 negatives.
The baseline follows hn_mine: one flat inner-product search over the whole corpus (the full score
matrix, top-`hi` by argpartition + sort, as faiss IndexFlatIP returns), then per query drop positives
and `random.sample` the window. Reports the time ratio, that both see the same candidate window, peak
traced memory, and whether two oofline runs write byte-identical files.
Run: .venv/bin/python bench/mining.py [--passages 20000 --queries 2000 --dim 384]
"""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import hashlib  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from workflow_scripts.retrieval.mining import mine_hard_negatives, top_k_inner_product, training_rows, write_jsonl  # noqa: E402


def hn_mine_baseline(query_vecs, passage_vecs, positives, lo, hi, negative_number, seed):
    """hn_mine.py's find_knn_neg on indices: flat search for top-hi, filter positives, random.sample."""
    random.seed(seed)
    scores = query_vecs @ passage_vecs.T  # the full (n_queries, n_passages) matrix
    top = np.argpartition(-scores, hi - 1, axis=1)[:, :hi]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
    ranked = np.take_along_axis(top, order, axis=1)
    negatives = []
    for row, pos in enumerate(positives):
        window = [int(i) for i in ranked[row, lo:hi] if int(i) not in pos]
        negatives.append(random.sample(window, negative_number) if len(window) > negative_number else window)
    return ranked, negatives


def measure(function):
    tracemalloc.start()
    start = time.perf_counter()
    result = function()
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return result, seconds, peak / 2**20


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--passages", type=int, default=20000)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    pv = rng.normal(size=(args.passages, args.dim)).astype(np.float32)
    pv /= np.linalg.norm(pv, axis=1, keepdims=True)
    positive_rows = rng.integers(0, args.passages, size=args.queries)
    qv = pv[positive_rows] + 0.5 * rng.normal(size=(args.queries, args.dim)).astype(np.float32) / np.sqrt(args.dim)
    qv /= np.linalg.norm(qv, axis=1, keepdims=True)
    corpus = pl.DataFrame({"id": [f"p{i}" for i in range(args.passages)], "text": [f"passage {i}" for i in range(args.passages)]})
    queries = pl.DataFrame({"id": [f"q{i}" for i in range(args.queries)], "query": [f"query {i}" for i in range(args.queries)],
                            "positive_ids": [[f"p{i}"] for i in positive_rows]})
    lo, hi, n_neg = 2, 200, 15

    def ours():
        return mine_hard_negatives(queries, corpus, qv, pv, (lo, hi), n_neg, seed=0)

    def baseline():
        return hn_mine_baseline(qv, pv, [{int(i)} for i in positive_rows], lo, hi, n_neg, seed=0)

    ours_times, base_times = [], []
    for _ in range(args.repeats):  # interleaved, best of N: the machine is shared
        (mined, t, ours_peak) = measure(ours)
        ours_times.append(t)
        ((ranked, _), t, base_peak) = measure(baseline)
        base_times.append(t)
    ours_ranked, _ = top_k_inner_product(qv, pv, hi)
    same_window = all(set(ours_ranked[r, lo:hi]) == set(ranked[r, lo:hi]) for r in range(args.queries))
    in_window = all(lo <= rank < hi for m in mined for rank in m.rank if rank != -1)
    digests = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(2):
            path = Path(tmp) / f"mined{run}.jsonl"
            write_jsonl(training_rows(queries, corpus, ours()), path)
            digests.append(hashlib.sha256(path.read_bytes()).hexdigest())
    ratio = min(base_times) / min(ours_times)
    print(f"passages={args.passages} queries={args.queries} dim={args.dim} range={lo}-{hi} negatives={n_neg} threads=1")
    print(f"oofline mining:   {min(ours_times):.2f} s  peak traced memory {ours_peak:.0f} MiB")
    print(f"hn_mine baseline: {min(base_times):.2f} s  peak traced memory {base_peak:.0f} MiB")
    print(f"speed ratio (baseline / oofline, >1 = oofline faster): {ratio:.2f}")
    print(f"same candidate window [{lo},{hi}) for every query: {same_window}; all sampled ranks in window: {in_window}")
    print(f"two oofline runs byte-identical: {digests[0] == digests[1]} ({digests[0][:12]})")


if __name__ == "__main__":
    main()
