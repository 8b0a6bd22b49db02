"""Teacher scores: add a reranker's raw logits for every (query, pos) and (query, neg) pair to mined data.

FlagEmbedding's knowledge distillation softmaxes `pos_scores + neg_scores` with no temperature, so these
must be reranker logits (not probabilities, not cosine similarities).
"""
from __future__ import annotations

import argparse
from typing import Callable, Sequence

import numpy as np

from workflow_scripts.errors import OoflineError, run_cli
from workflow_scripts.retrieval.mining import read_jsonl, write_jsonl
from workflow_scripts.retrieval.models import add_reranker_arguments, load_reranker, rerank_scores, reranker_settings


def add_teacher_scores(rows: Sequence[dict], score_pairs: Callable[[list[tuple[str, str]]], np.ndarray]) -> list[dict]:
    """Copies of rows with `pos_scores`/`neg_scores` (floats, one per pos/neg text); one scoring call for all pairs."""
    pairs: list[tuple[str, str]] = []
    for number, row in enumerate(rows, 1):
        for key in ("query", "pos", "neg"):
            if key not in row:
                raise OoflineError(f"mined data, row {number}: field {key!r} is missing (expected query, pos, neg)")
        pairs += [(row["query"], text) for text in row["pos"]] + [(row["query"], text) for text in row["neg"]]
    scores = np.asarray(score_pairs(pairs), dtype=np.float64)
    if scores.shape != (len(pairs),) or not np.isfinite(scores).all():
        raise OoflineError(f"the reranker returned {scores.shape} scores (expected {len(pairs)} finite values)")
    scored, start = [], 0
    for row in rows:
        n_pos, n_neg = len(row["pos"]), len(row["neg"])
        values = [round(float(v), 6) for v in scores[start:start + n_pos + n_neg]]  # rounded: stable bytes
        scored.append({**row, "pos_scores": values[:n_pos], "neg_scores": values[n_pos:]})
        start += n_pos + n_neg
    return scored


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Add reranker teacher scores to mined.jsonl.")
    parser.add_argument("--input", required=True, help="mined.jsonl")
    parser.add_argument("--output", required=True, help="scored.jsonl")
    add_reranker_arguments(parser)
    args = parser.parse_args(argv)
    rows = read_jsonl(args.input)
    if not rows:
        raise OoflineError(f"{args.input}: no rows to score")
    settings = reranker_settings(args)
    model = load_reranker(settings)
    print(f"scoring {sum(len(r['pos']) + len(r['neg']) for r in rows)} pairs with {settings.model_path}", flush=True)
    write_jsonl(add_teacher_scores(rows, lambda pairs: rerank_scores(model, settings, pairs)), args.output)
    print(f"teacher scores -> {args.output}", flush=True)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
