"""A retrieval package's build-time pass: the fixed corpus embedded once, the in-context examples, and timings.

The corpus of a retrieval competition is known when the package is built (Eedi's misconceptions), so its passage
embeddings are computed here, with the submission's embedder exactly as the evaluation step loads it, and shipped:
the notebook embeds only the hidden test's queries. The step also picks the ICL examples as the evaluation step
picks them (from the queries its models trained on, seeded), and times what the notebook will do on the public
test -- query embedding and reranking top_n pairs per query -- for the runtime plan (workflow_scripts.kaggle.plan).

Outputs: embeddings.safetensors (`embeddings`: (n_passages, dim) float32, rows in the corpus file's order),
icl_examples.json, speeds.json ({corpus, queries, rerank}: rows, tokens, seconds, load_seconds, their CPU seconds,
device_name, threads).
"""
from __future__ import annotations

import argparse
import resource
import time
from typing import Any, Sequence

import polars as pl

from workflow_scripts.errors import OoflineError, run_cli
from workflow_scripts.io import read_table, write_json


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _device() -> dict[str, Any]:
    import torch

    on_gpu = torch.cuda.is_available()
    return {"device_name": torch.cuda.get_device_name(0) if on_gpu else "cpu", "threads": torch.get_num_threads()}


def token_count(tokenizer, texts: Sequence[str], max_length: int) -> int:
    """Tokens the model reads for `texts`, each truncated at max_length (what the timing scales by)."""
    if not texts:
        return 0
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length, add_special_tokens=True)
    return int(sum(len(ids) for ids in encoded["input_ids"]))


def training_queries(queries: pl.DataFrame, valid_fold: int | None) -> pl.DataFrame:
    """The queries the submission's models trained on: every query for a final fit, else all but the valid fold's
    (where the evaluation step draws the in-context examples from)."""
    return queries if valid_fold is None else queries.filter(pl.col("fold") != valid_fold)


def main(argv: Sequence[str] | None = None) -> None:
    from workflow_scripts.retrieval.data import load_task, validate_queries, with_query_folds
    from workflow_scripts.retrieval.eval import rank_corpus
    from workflow_scripts.retrieval.mining import add_embedder_arguments, embedder_settings
    from workflow_scripts.retrieval.models import (_dense, add_reranker_arguments, load_embedder, load_reranker,
                                                   rerank_scores, reranker_settings)

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", required=True)
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--folds", required=True)
    parser.add_argument("--test-queries", required=True, help="the public test's queries: timed, not shipped")
    parser.add_argument("--valid-fold", type=int, default=None, help="omitted: a final fit (every query trained)")
    parser.add_argument("--stage", required=True, help="submission_stage.json: the submitted stage's embedder (a model "
                        "folder) and its reranker, when the stage reranks")
    parser.add_argument("--top-n", type=int, default=50)
    parser.add_argument("--k", type=int, default=25)
    parser.add_argument("--embeddings-out", required=True)
    parser.add_argument("--icl-out", required=True)
    parser.add_argument("--speeds-out", required=True)
    add_embedder_arguments(parser, with_model=False)
    add_reranker_arguments(parser, with_model=False)
    args = parser.parse_args(argv)
    from workflow_scripts.retrieval.stages import submission_stage

    chosen = submission_stage(args.stage)
    args.embedder, args.reranker = chosen["embedder"], chosen["reranker"]
    print(f"stage {chosen['stage']}: embedder {args.embedder}" + (f", reranker {args.reranker}" if args.reranker else ""),
          flush=True)

    queries, corpus = load_task(args.queries, args.corpus)
    queries = with_query_folds(queries, args.folds)
    settings = embedder_settings(args, args.embedder, training_queries=training_queries(queries, args.valid_fold),
                                 corpus=corpus)
    test = validate_queries(read_table(args.test_queries), corpus["id"].to_list(), args.test_queries, False)
    passages, texts = corpus["text"].to_list(), test["query"].to_list()
    speeds: dict[str, dict[str, Any]] = {}
    started, cpu = time.time(), _cpu()
    model = load_embedder(settings)
    load = {"load_seconds": round(time.time() - started, 4), "load_cpu_seconds": round(_cpu() - cpu, 4)}
    # as the evaluation step encodes: the corpus, then the queries, with one loaded model
    for name, rows, encode, max_length in (("corpus", passages, model.encode_corpus, settings.passage_max_length),
                                           ("queries", texts, model.encode_queries, settings.query_max_length)):
        started, cpu = time.time(), _cpu()
        vectors = _dense(encode(list(rows))).reshape(len(rows), -1)
        speeds[name] = {"rows": len(rows), "tokens": token_count(model.tokenizer, rows, max_length),
                        "seconds": round(time.time() - started, 4), "cpu_seconds": round(_cpu() - cpu, 4),
                        **load, **_device()}
        load = {"load_seconds": 0.0, "load_cpu_seconds": 0.0}  # loaded once, counted once
        if name == "corpus":
            passage_vectors = vectors
        else:
            query_vectors = vectors
    del model
    from safetensors.numpy import save_file

    save_file({"embeddings": passage_vectors}, args.embeddings_out,
              metadata={"passages": str(len(passages)), "embedder": str(args.embedder)})
    write_json([dict(example) for example in settings.icl_examples], args.icl_out)
    if args.reranker:
        started, cpu = time.time(), _cpu()
        rerank_settings = reranker_settings(args, args.reranker)
        reranker = load_reranker(rerank_settings)
        load = {"load_seconds": round(time.time() - started, 4), "load_cpu_seconds": round(_cpu() - cpu, 4)}
        text_of_id = dict(zip(corpus["id"].to_list(), passages))
        ranked = rank_corpus(query_vectors, passage_vectors, corpus["id"].to_list(), max(args.k, args.top_n))
        pairs = [(query, text_of_id[pid]) for query, ids in zip(texts, ranked) for pid in ids[:args.top_n]]
        started, cpu = time.time(), _cpu()
        rerank_scores(reranker, rerank_settings, pairs)
        speeds["rerank"] = {"rows": len(texts), "pairs": len(pairs),
                            "tokens": token_count(reranker.tokenizer, [q + p for q, p in pairs],
                                                  rerank_settings.max_length),
                            "seconds": round(time.time() - started, 4), "cpu_seconds": round(_cpu() - cpu, 4),
                            **load, **_device()}
    if not texts:
        raise OoflineError(f"{args.test_queries}: no test queries to time")
    write_json(speeds, args.speeds_out)
    print(f"corpus: {len(passages)} passages embedded once ({speeds['corpus']['seconds']:.1f}s) -> {args.embeddings_out}; "
          f"timed {len(texts)} public test queries" + (f" and {speeds['rerank']['pairs']} reranked pairs"
                                                       if args.reranker else ""), flush=True)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
