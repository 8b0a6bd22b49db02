"""Every recipe's config is valid and its whole graph resolves, alone and with its demo-models overlay."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RECIPES = sorted(path.name for path in (REPO / "recipes").glob("*.yaml") if not path.name.startswith("demo-models"))


def dry_run(*configfiles: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "snakemake", "-n", "--quiet", "rules", "--cores", "1",
               "--configfile", *configfiles]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_with_demo_models_resolves(recipe):
    overlay = f"recipes/demo-models-{recipe}"
    assert (REPO / overlay).exists(), f"{recipe} has no demo-models overlay"
    result = dry_run(f"recipes/{recipe}", overlay)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "all" in result.stdout


def recipe(name: str) -> dict:
    import yaml

    return yaml.safe_load((REPO / "recipes" / name).read_text())


def model_settings(config: dict, name: str) -> dict:
    """A model's settings as the workflow sees them: its kind's defaults, the model_defaults keys its kind
    has, then the model's own keys."""
    from workflow_scripts.config_check import with_model_defaults

    return with_model_defaults(config["models"][name], config.get("model_defaults", {}))


# Each test below checks a recipe against the numbers in its write-up (/work/shared/seeds/00N_*.txt).

def test_map_recipe_keeps_the_write_up_settings():
    """000: seven QLoRA-4bit decoders (r=8, alpha=32, lr 2e-4, batch 16) and Ettin-Encoder-1b fine-tuned
    (lr 4e-5, batch 32), 5 folds, MAP@3 over Category:Misconception; the top@k ensembles and ratio row 1."""
    config = recipe("map.yaml")
    assert (config["task"]["metric"], config["task"]["label_template"], config["folds"]["n_folds"]) == (
        "map@3", "{Category}:{Misconception}", 5)
    decoders = {"qwen3_14b": "Qwen/Qwen3-14B", "gemma2_9b": "google/gemma-2-9b-it",
                "deepseek_r1_qwen3_8b": "deepseek-ai/DeepSeek-R1-0528-Qwen3-8B",
                "deepseek_math_7b": "deepseek-ai/deepseek-math-7b-instruct", "qwen3_embedding_4b": "Qwen/Qwen3-Embedding-4B",
                "acereason_7b": "nvidia/AceReason-Nemotron-1.1-7B", "llama31_8b": "meta-llama/Llama-3.1-8B-Instruct"}
    for name, source in decoders.items():
        model = model_settings(config, name)
        assert (model["source"], model["kind"], model["quantization"], model["r"], model["alpha"], model["lr"],
                model["batch_size"]) == (source, "decoder_lora", "4bit", 8, 32, 2e-4, 16), name
    ettin = model_settings(config, "ettin_encoder_1b")
    assert (ettin["source"], ettin["kind"], ettin["lr"], ettin["batch_size"]) == (
        "jhu-clsp/ettin-encoder-1b", "encoder_full", 4e-5, 32)
    assert "quantization" not in ettin  # a full fine-tune: model_defaults' 4-bit LoRA keys do not reach it
    # the "OOF Training" table adds a plain-LoRA Qwen3-Embedding-4B (batch 8) and a full Qwen3-1.7B (lr 4e-5, batch 16)
    assert set(config["models"]) == set(decoders) | {"ettin_encoder_1b", "qwen3_embedding_4b_lora", "qwen3_1_7b_full"}
    five = ["qwen3_14b", "deepseek_r1_qwen3_8b", "deepseek_math_7b", "gemma2_9b", "qwen3_embedding_4b"]
    ensembles = config["ensembles"]
    assert (sorted(ensembles["five_top3"]["members"]), ensembles["five_top3"]["member_top_k"]) == (sorted(five), 3)
    assert (sorted(ensembles["six_top10"]["members"]), ensembles["six_top10"]["member_top_k"]) == (
        sorted(five + ["ettin_encoder_1b"]), 10)
    assert ensembles["ratios"]["members"] == {"qwen3_14b": 1.0, "deepseek_math_7b": 1.0, "gemma2_9b": 1.2,
                                              "qwen3_embedding_4b": 0.8, "ettin_encoder_1b": 0.8}
    submission = config["submissions"]["ratios_top3"]
    assert (submission["source"], submission["format"], submission["top_k"]) == ("ratios", "top_k", 3)


def test_unlp_recipe_keeps_the_write_up_settings():
    """001: Gemma2-27B LoRA r=64/alpha=128/dropout 0.05 on the seven projections, lr 2e-5, weight decay 0.01,
    cosine, 5 epochs, batch 8 x 4 accumulation; MultilabelStratifiedKFold(5, shuffle, 42); hybrid thresholds
    0.5 * grid + 0.5 * class balance; macro F1 over 10 techniques."""
    config = recipe("unlp.yaml")
    assert (config["task"]["type"], config["task"]["metric"], len(config["task"]["label_columns"])) == (
        "multilabel", "macro_f1", 10)
    assert config["folds"] == {"scheme": "multilabel_stratified", "n_folds": 5, "seed": 42}
    gemma = model_settings(config, "gemma2_27b")
    assert gemma["source"] == "google/gemma-2-27b" and gemma["kind"] == "decoder_lora"
    assert (gemma["r"], gemma["alpha"], gemma["dropout"], gemma["lr"], gemma["weight_decay"], gemma["scheduler"],
            gemma["epochs"], gemma["batch_size"], gemma["predict_batch_size"], gemma["grad_accum"]) == (
        64, 128, 0.05, 2e-5, 0.01, "cosine", 5, 8, 8, 4)
    assert sorted(gemma["target_modules"]) == sorted(
        ["o_proj", "v_proj", "q_proj", "k_proj", "gate_proj", "down_proj", "up_proj"])
    assert config["thresholds"]["folds_mean"] == {"method": "hybrid", "weight": 0.5}
    # oofline's choice (the write-up does not say which epoch a fold kept): the best epoch per fold, flagged optimistic
    assert gemma["select_epoch"] == "best"


def test_eedi_recipe_keeps_the_write_up_settings():
    """002: mining 2-200 with 15 negatives (2-100 for the reranker); ICL embedder LoRA lr 1e-4, batch 8, 3 epochs,
    query/passage lengths 1024/512; reranker LoRA lr 2e-4, batch 1 x 8 accumulation; iteration 1 mines with
    the iteration-0 embedder, distils from the iteration-0 reranker, reranker label smoothing 0.2; MAP@25."""
    pipeline = recipe("eedi.yaml")["retrieval"]["misconceptions"]
    assert (pipeline["k"], pipeline["models"]["bge_icl"], pipeline["models"]["qwen14b"]) == (
        25, "BAAI/bge-en-icl", "Qwen/Qwen2.5-14B-Instruct")
    first, second = pipeline["iterations"]
    assert (first["mine"]["embedder"], second["mine"]["embedder"], second["teacher"]) == ("bge_icl", "iter0", "iter0")
    for iteration in (first, second):
        assert (iteration["mine"]["range_for_sampling"], iteration["mine"]["negative_number"]) == ("2-200", 15)
        embedder, reranker = iteration["embedder"], iteration["reranker"]
        assert (embedder["model_class"], embedder["learning_rate"], embedder["batch_size"], embedder["query_max_len"],
                embedder["passage_max_len"], embedder["pooling_method"]) == (
            "decoder-only-icl", 1e-4, 8, 1024, 512, "last_token")
        assert (reranker["model_class"], reranker["learning_rate"], reranker["batch_size"],
                reranker["gradient_accumulation_steps"], reranker["max_len"]) == ("decoder-only-base", 2e-4, 1, 8, 512)
        assert (reranker["mine"]["range_for_sampling"], reranker["mine"]["negative_number"]) == ("2-100", 15)
    assert first["embedder"]["epochs"] == 3 and first["embedder"].get("select_checkpoint", "last") == "last"
    # 4 epochs, keeping the best on the valid fold (the write-up's lora_epoch_2 / epoch 3 by its validation results)
    for chosen in (first["reranker"], second["embedder"], second["reranker"]):
        assert (chosen["epochs"], chosen["select_checkpoint"]) == (4, "best")
    assert pipeline["valid_fold"] == 0
    assert not first["embedder"].get("knowledge_distillation") and second["embedder"]["knowledge_distillation"]
    assert second["reranker"]["knowledge_distillation"] and second["reranker"]["label_smoothing"] == 0.2
    assert (pipeline["reranker_inference"]["rerank_query_instruction"],
            pipeline["reranker_inference"]["rerank_passage_instruction"],
            pipeline["reranker_inference"]["rerank_max_length"]) == ("A: ", "B: ", 512)


def test_aimo_recipe_keeps_the_write_up_settings():
    """003: chain-of-thought prompts with answer extraction, several prompts per model, and the six voting
    strategies (majority, confidence-weighted, max, median, unanimous with a fallback, numeric mean)."""
    config = recipe("aimo.yaml")
    assert len(config["answers"]["prompts"]) >= 3
    strategies = config["votes"]["all_models"]["strategies"]
    assert sorted(strategies) == sorted(["majority", "confidence_weighted", "max_confidence", "median_confidence",
                                         "unanimous", "numeric_mean"])
    assert config["votes"]["all_models"]["fallback"] != "unanimous"
    assert {answer.split("/")[1] for answer in config["votes"]["gemma_prompts"]["answers"]} == set(
        config["answers"]["prompts"])  # a multi-prompt ensemble of one model


def test_cdc_recipe_keeps_the_write_up_settings():
    """004: 21 binary + a 6-class and a 12-class variable, mean F1; few-shot generated narratives from gemma2 and
    qwen2.5; a DeBERTa-v3-large teacher with label smoothing whose high-loss rows are relabelled; gemma2-9b LoRA
    students whose first epoch also takes the generated rows, then official rows only; two more gemma2-9b and
    a gemma2-2b with other LoRA parameters in a weighted ensemble; threshold search."""
    config = recipe("cdc.yaml")
    heads = config["task"]["heads"]
    assert config["task"]["metric"] == "mean_f1"
    assert [head["type"] for head in heads].count("binary") == 21
    assert [head["name"] for head in heads if head["type"] == "multiclass"] == ["InjuryLocationType", "WeaponType1"]
    assert {lm["source"] for lm in config["language_models"].values()} == {"google/gemma-2-9b-it",
                                                                           "Qwen/Qwen2.5-7B-Instruct"}
    teacher = model_settings(config, "deberta")
    assert (teacher["source"], teacher["kind"]) == ("microsoft/deberta-v3-large", "encoder_full")
    assert teacher["label_smoothing"] > 0 and "deberta" in config["label_correction"]
    students = ["gemma_r1", "gemma_r2", "gemma_r2_r64"]
    for name in students:
        student = model_settings(config, name)
        assert (student["source"], student["kind"]) == ("google/gemma-2-9b", "decoder_lora"), name
        first, *rest = student["stages"]
        # round 2 pretrains on the soft-labelled official rows in place of the hard ones ("soft labeling all the other data")
        official = "official_soft" if "official_soft" in student["extra_data"] else "official"
        assert first["epochs"] == 1 and set(first["data"]) == {official, *student["extra_data"]}, name
        assert rest and all(stage["data"] == ["official"] for stage in rest), name
    assert model_settings(config, "gemma_r1")["extra_data"]["gemma0"].startswith("results/cdc/soft_labels/deberta/")
    assert model_settings(config, "gemma_r2")["extra_data"]["gemma0"].startswith("results/cdc/soft_labels/gemma_r1/")
    loras = {(model_settings(config, name)["r"], model_settings(config, name)["alpha"]) for name in students}
    assert len(loras) > 1  # "different lora parameters"
    assert model_settings(config, "gemma2_2b")["source"] == "google/gemma-2-2b"
    members = config["ensembles"]["final"]["members"]
    assert set(members) == {*students, "gemma2_2b"} and len(set(members.values())) > 1  # weighted
    assert config["submissions"]["final"]["thresholds"] is True and "final" in config["thresholds"]
