"""The family matrix: every model family the recipes name x every way the recipes use it, as one config that one
Snakemake run builds (tests/test_family_matrix.py; docs/training.md, "Model families").

Cells, one model (or language model, or retrieval base) each. One cell per family reads `source: tiny:<family>`,
so the prepare_model rule builds that family; the others read the same tiny model from a folder the test builds
once (`bases`), so 30 models do not build 30 copies of 8 models.
- encoders (deberta-v2, modernbert): encoder_full, encoder_lora, embedding_head (cls / mean pooling);
- decoders (llama, mistral, qwen2, qwen3, gemma2, gemma3): decoder_lora with quantization none and 4bit (the
  recipes' QLoRA path) in every family, 8bit in two (EIGHT_BIT_FAMILIES: Mistral, which CDC loads in 8-bit, and
  Gemma-2; the 8-bit load itself is checked in every family), the quantized ones merged; embedding_head with
  last-token pooling;
- language models (the six decoders): a generator each, and a causal-LM fine-tune each whose answers are voted;
- retrieval (the families Eedi uses): a Mistral ICL embedder (bge-en-icl's family) mines and is fine-tuned with
  LoRA as `decoder-only-icl`, a Qwen2 reranker is fine-tuned with LoRA as `decoder-only-base`.
"""
from __future__ import annotations

from typing import Any

from workflow_scripts.tiny_models import DECODER_FAMILIES, ENCODER_FAMILIES

QUANTIZATIONS = ("none", "4bit", "8bit")
# an 8-bit cell trains, predicts and merges like a 4-bit one: two families carry it, so CI trains 4 fewer cells
EIGHT_BIT_FAMILIES = ("mistral", "gemma2")
ENCODER_POOLING = {"deberta-v2": "cls", "modernbert": "mean"}


def cell_name(family: str, use: str) -> str:
    return f"{family.replace('-', '')}_{use}"


def quantizations(family: str) -> tuple[str, ...]:
    """The decoder_lora cells of a decoder family: none and 4bit, and 8bit in EIGHT_BIT_FAMILIES."""
    return tuple(q for q in QUANTIZATIONS if q != "8bit" or family in EIGHT_BIT_FAMILIES)


def classification_models(bases: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Every classification cell: {model name: entry}; `bases`: family -> a folder holding its tiny model."""
    models: dict[str, dict[str, Any]] = {}
    for family in ENCODER_FAMILIES:
        source = bases[family]
        models[cell_name(family, "full")] = {"source": f"tiny:{family}", "kind": "encoder_full", "lr": 1e-3}
        models[cell_name(family, "lora")] = {"source": source, "kind": "encoder_lora", "lr": 2e-3}
        models[cell_name(family, "embed")] = {"source": source, "kind": "embedding_head",
                                              "pooling": ENCODER_POOLING[family]}
    for family in DECODER_FAMILIES:
        source = bases[family]
        for quantization in quantizations(family):
            # quantized adapters are merged into their dequantised base (the recipes' QLoRA path); `none` is
            # predicted from base + adapter, as on the CPU by default
            models[cell_name(family, f"lora_{quantization}")] = {
                "source": f"tiny:{family}" if quantization == "none" else source, "kind": "decoder_lora",
                "quantization": quantization, "lr": 2e-3, "merge": quantization != "none"}
        models[cell_name(family, "embed")] = {"source": source, "kind": "embedding_head", "pooling": "last"}
    return models


def language_model_sections(bases: dict[str, str]) -> dict[str, Any]:
    """language_models (a base and a fine-tune per decoder family), one generator each, answers and a vote."""
    language_models: dict[str, Any] = {}
    generators: dict[str, Any] = {}
    for family in DECODER_FAMILIES:
        name = cell_name(family, "lm")
        language_models[name] = {"source": bases[family]}
        language_models[cell_name(family, "sft")] = {"finetune": {
            "base": name, "n_rows": 6, "epochs": 1, "batch_size": 2, "lr": 1e-3, "warmup_steps": 0, "eval_every": 1,
            "eval_fraction": 0.34, "max_length": 128, "r": 4, "alpha": 8}}
        generators[cell_name(family, "gen")] = {
            "model": name, "fields": ["text"], "format": "text", "template": "Examples:\n{examples}\nWrite one more.",
            "n_rows": 2, "seeds": [0], "examples_per_prompt": 2, "max_new_tokens": 8, "batch_size": 2}
    # answers from each fine-tuned model: the answers step on every family, and proof that each fine-tune loads
    answer_sets = [f"{lm}/direct" for lm in language_models if "finetune" in language_models[lm]]
    return {"language_models": language_models, "generators": generators,
            "answers": {"n_problems": 2, "samples": 1, "max_new_tokens": 6, "answer_regex": "(\\d+)"},
            "votes": {"families": {"answers": answer_sets}}}


def retrieval_section() -> dict[str, Any]:
    """One iteration of the Eedi loop on tiny Mistral (ICL embedder) and tiny Qwen2 (reranker)."""
    lora = {"lora": True, "lora_rank": 4, "lora_alpha": 8, "epochs": 1, "device": "cpu"}
    return {"eedi_families": {
        "demo": {"n_passages": 10, "n_queries": 16, "n_test_queries": 3, "seed": 0},
        "n_folds": 2, "valid_fold": 0, "k": 5, "top_n": 4,
        "models": {"mistral": "tiny:mistral", "qwen2": "tiny:qwen2"},
        "embedder_inference": {"embedder_class": "decoder-only-icl", "pooling_method": "last_token",
                               "query_instruction": "Find the plot.", "query_instruction_format": "<instruct>{}\n<query>{}",
                               "icl_examples": 1, "query_max_length": 48, "passage_max_length": 32,
                               "embed_batch_size": 8},
        "reranker_inference": {"reranker_class": "decoder-only-base", "rerank_max_length": 64, "rerank_batch_size": 8},
        "resources": {"threads": 1},
        "iterations": [{
            "mine": {"embedder": "mistral", "range_for_sampling": "2-6", "negative_number": 2, "seed": 0},
            "embedder": {"base": "mistral", "model_class": "decoder-only-icl", **lora, "learning_rate": 1e-4,
                         "batch_size": 2, "train_group_size": 2, "icl_examples": True, "query_max_len": 48,
                         "passage_max_len": 32, "pooling_method": "last_token"},
            "reranker": {"base": "qwen2", "model_class": "decoder-only-base", **lora, "learning_rate": 2e-4,
                         "batch_size": 2, "train_group_size": 2, "max_len": 64},
        }],
    }}


def matrix_config(bases: dict[str, str]) -> dict[str, Any]:
    """The whole matrix on the movies demo: 2 folds, fold 0 trained, 1 epoch, short rows, one thread a job;
    `bases`: family -> folder of its tiny model (prepare_model.materialise)."""
    return {
        "demo": {"dataset": "movies", "n_train": 40, "n_test": 6, "seed": 0, "balanced": True},
        "data": {"train": "results/demo/train.csv", "test": "results/demo/test.csv",
                 "sample_submission": "results/demo/sample_submission.csv"},
        "task": {"type": "multiclass", "text_template": "Review: {text}", "label_column": "category",
                 "metric": "map@3"},
        "folds": {"scheme": "stratified", "n_folds": 2, "seed": 0},
        "model_defaults": {"max_length": 24, "epochs": 1, "batch_size": 8, "folds": [0], "r": 4, "alpha": 8,
                           "resources": {"threads": 1}},
        "models": classification_models(bases),
        **language_model_sections(bases),
        "retrieval": retrieval_section(),
    }
