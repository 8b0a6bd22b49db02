"""Load FlagEmbedding embedders and rerankers the same way in every retrieval step (mining, scoring, eval)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from workflow_scripts.errors import OoflineError
from workflow_scripts.execution.device import PRECISIONS

EMBEDDER_CLASSES = ("encoder-only-base", "encoder-only-m3", "decoder-only-base", "decoder-only-icl")
RERANKER_CLASSES = ("encoder-only-base", "decoder-only-base")


@dataclass(frozen=True)
class EmbedderSettings:
    model_path: str
    model_class: str = "encoder-only-base"
    pooling_method: str = "mean"
    query_instruction: str | None = None
    # FlagAutoModel's default for decoder classes is not "{}{}" everywhere; always pass it explicitly
    query_instruction_format: str = "{}{}"
    batch_size: int = 64
    query_max_length: int = 512
    passage_max_length: int = 512
    devices: str | None = None
    precision: str = "auto"  # auto | bf16 | fp16 | fp32 (execution.device.resolve_precision)
    # decoder-only-icl: in-context (instruct, query, response) examples put before every query
    icl_examples: tuple[dict, ...] = ()
    examples_instruction_format: str = "<instruct>{}\n<query>{}\n<response>{}"


def pick_icl_examples(queries, corpus, n_examples: int, seed: int, instruction: str | None) -> tuple[dict, ...]:
    """`n_examples` (instruct, query, response) examples for an ICL embedder, drawn seeded from `queries`
    (training queries only: a held-out query must never be its own example); the response is the query's
    first positive passage."""
    if n_examples <= 0:
        return ()
    if queries.height < n_examples:
        raise OoflineError(f"icl_examples: {n_examples} examples asked for, but only {queries.height} training queries")
    passages = dict(zip(corpus["id"].to_list(), corpus["text"].to_list()))
    order = np.random.default_rng(seed).permutation(queries.height)[:n_examples]
    rows = queries[sorted(order.tolist())]
    return tuple({"instruct": instruction or "", "query": query, "response": passages[positives[0]]}
                 for query, positives in zip(rows["query"].to_list(), rows["positive_ids"].to_list()))


@dataclass(frozen=True)
class RerankerSettings:
    model_path: str
    model_class: str = "encoder-only-base"
    query_instruction: str | None = None
    query_instruction_format: str = "{}{}"
    passage_instruction: str | None = None
    passage_instruction_format: str = "{}{}"
    prompt: str | None = None  # decoder rerankers only: the yes/no question
    batch_size: int = 32
    max_length: int = 512
    devices: str | None = None
    precision: str = "auto"  # auto | bf16 | fp16 | fp32 (execution.device.resolve_precision)


def resolve_model(path: str, kind: str) -> str:
    """A loadable name or folder: follows prepare_model's `source.json` pointers (modeling.resolve_model_path);
    a fine-tune's output folder (`base: iterJ`) is loaded from its `merged/`."""
    from workflow_scripts.modeling import resolve_model_path

    if str(path).startswith(("/", ".")) and not Path(path).exists():
        raise OoflineError(f"{kind} model not found: {path} (expected a local model folder)")
    folder = Path(path)
    if folder.is_dir() and not (folder / "config.json").exists() and (folder / "merged" / "config.json").exists():
        folder = folder / "merged"
    return resolve_model_path(folder if folder.is_dir() else path)[0]


def _check_model(path: str, kind: str, model_class: str, allowed: Sequence[str]) -> str:
    if model_class not in allowed:
        raise OoflineError(f"{kind} model_class {model_class!r} is not one of {list(allowed)}")
    return resolve_model(path, kind)


def inference_precision(precision: str, devices: str | None) -> str:
    """Resolved precision of a FlagEmbedding model on `devices` (None: the job's GPU when it has one)."""
    from workflow_scripts.execution.device import resolve_device, resolve_precision

    on_cpu = devices is not None and str(devices).startswith("cpu")
    return resolve_precision(precision, resolve_device("cpu" if on_cpu else "auto"))


def half_precision_flags(precision: str) -> dict[str, bool]:
    """FlagEmbedding's `use_fp16` / `use_bf16` arguments for a resolved precision."""
    return {"use_fp16": precision == "fp16", "use_bf16": precision == "bf16"}


def ensure_pad_token(tokenizer) -> None:
    """A decoder tokenizer without a pad token (Mistral's, Llama-3's) pads with unk, else eos: what FlagEmbedding's
    own fine-tunes set (finetune/*/decoder_only/*/runner.py), so a model is scored as it was trained; its
    inference classes leave it unset and fail at the first padded batch."""
    if tokenizer.pad_token is None:
        fallback = tokenizer.unk_token or tokenizer.eos_token
        if fallback is None:
            raise OoflineError(f"tokenizer {tokenizer.name_or_path} has no pad, unk or eos token to pad with")
        tokenizer.pad_token = fallback


def load_embedder(settings: EmbedderSettings):
    from FlagEmbedding import FlagAutoModel

    path = _check_model(settings.model_path, "embedder", settings.model_class, EMBEDDER_CLASSES)
    precision = inference_precision(settings.precision, settings.devices)
    print(f"embedder {settings.model_path} in {precision}", flush=True)
    examples = {}
    if settings.icl_examples:
        if settings.model_class != "decoder-only-icl":
            raise OoflineError(f"icl_examples: in-context examples need embedder_class decoder-only-icl, "
                               f"not {settings.model_class}")
        examples = {"examples_for_task": [dict(e) for e in settings.icl_examples],
                    "examples_instruction_format": settings.examples_instruction_format}
    embedder = FlagAutoModel.from_finetuned(
        path,
        model_class=settings.model_class,
        **examples,
        pooling_method=settings.pooling_method,
        normalize_embeddings=True,
        **half_precision_flags(precision),
        query_instruction_for_retrieval=settings.query_instruction or None,
        query_instruction_format=settings.query_instruction_format.replace("\\n", "\n"),
        batch_size=settings.batch_size,
        query_max_length=settings.query_max_length,
        passage_max_length=settings.passage_max_length,
        devices=settings.devices,
    )
    ensure_pad_token(embedder.tokenizer)
    return embedder


def _dense(vectors) -> np.ndarray:
    if isinstance(vectors, dict):  # the M3 embedder returns several kinds of vectors
        vectors = vectors["dense_vecs"]
    return np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))


def encode_queries_and_corpus(
    settings: EmbedderSettings, queries: Sequence[str], passages: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised embeddings: (n_queries, dim) and (n_passages, dim) float32; queries get the instruction."""
    model = load_embedder(settings)
    print(f"encoding {len(passages)} passages with {settings.model_path}", flush=True)
    passage_vecs = _dense(model.encode_corpus(list(passages)))
    print(f"encoding {len(queries)} queries", flush=True)
    query_vecs = _dense(model.encode_queries(list(queries)))
    return query_vecs.reshape(len(queries), -1), passage_vecs.reshape(len(passages), -1)


def load_reranker(settings: RerankerSettings):
    from FlagEmbedding import FlagAutoReranker

    path = _check_model(settings.model_path, "reranker", settings.model_class, RERANKER_CLASSES)
    precision = inference_precision(settings.precision, settings.devices)
    print(f"reranker {settings.model_path} in {precision}", flush=True)
    flags = half_precision_flags(precision)
    if not settings.model_class.startswith("decoder"):
        # FlagEmbedding's encoder reranker has no use_bf16: it is cast below instead
        flags.pop("use_bf16")
    reranker = FlagAutoReranker.from_finetuned(
        path,
        model_class=settings.model_class,
        **flags,
        query_instruction_for_rerank=settings.query_instruction or None,
        query_instruction_format=settings.query_instruction_format.replace("\\n", "\n"),
        passage_instruction_for_rerank=settings.passage_instruction or None,
        passage_instruction_format=settings.passage_instruction_format.replace("\\n", "\n"),
        batch_size=settings.batch_size,
        max_length=settings.max_length,
        devices=settings.devices,
        normalize=False,
    )
    if precision == "bf16" and not settings.model_class.startswith("decoder"):
        import torch

        reranker.model.to(torch.bfloat16)
    ensure_pad_token(reranker.tokenizer)
    return reranker


def rerank_scores(model, settings: RerankerSettings, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
    """Raw reranker logits (not sigmoid, not cosine) for (query, passage) pairs: (n_pairs,) float64."""
    if not pairs:
        return np.zeros(0, dtype=np.float64)
    kwargs = {"normalize": False}
    if settings.model_class.startswith("decoder") and settings.prompt:
        kwargs["prompt"] = settings.prompt
    scores = model.compute_score([list(pair) for pair in pairs], **kwargs)
    return np.atleast_1d(np.asarray(scores, dtype=np.float64))


def add_reranker_arguments(parser, with_model: bool = True) -> None:
    """CLI arguments shared by teacher_scores and retrieval_eval (eval passes one model per fold instead)."""
    if with_model:
        parser.add_argument("--reranker", required=True, help="local model folder (a fine-tune's merged/)")
    parser.add_argument("--reranker-class", default="encoder-only-base", choices=RERANKER_CLASSES)
    parser.add_argument("--rerank-query-instruction", default="")
    parser.add_argument("--rerank-query-instruction-format", default="{}{}")
    parser.add_argument("--rerank-passage-instruction", default="")
    parser.add_argument("--rerank-passage-instruction-format", default="{}{}")
    parser.add_argument("--rerank-prompt", default="", help="decoder rerankers: the yes/no question")
    parser.add_argument("--rerank-batch-size", type=int, default=32)
    parser.add_argument("--rerank-max-length", type=int, default=512)
    parser.add_argument("--rerank-devices", default=None)
    parser.add_argument("--rerank-precision", default="auto", choices=PRECISIONS,
                        help="auto: bf16 on a GPU that supports it, fp32 on the CPU")


def reranker_settings(args, model_path: str | None = None) -> RerankerSettings:
    return RerankerSettings(
        model_path or args.reranker, args.reranker_class, args.rerank_query_instruction or None, args.rerank_query_instruction_format,
        args.rerank_passage_instruction or None, args.rerank_passage_instruction_format, args.rerank_prompt or None,
        args.rerank_batch_size, args.rerank_max_length, args.rerank_devices, args.rerank_precision,
    )
