"""Recipes carry the write-ups' techniques with the write-ups' own settings (issue: every technique as config)."""
from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def recipe(name: str) -> dict:
    return yaml.safe_load((REPO / "recipes" / f"{name}.yaml").read_text())


def test_map_has_the_plain_lora_embedding_model_the_small_full_fine_tune_and_the_best_oof_blend():
    map_recipe = recipe("map")
    defaults, models = map_recipe["model_defaults"], map_recipe["models"]
    lora = {**defaults, **models["qwen3_embedding_4b_lora"]}
    assert (lora["source"], lora["quantization"], lora["batch_size"], lora["r"], lora["alpha"], lora["lr"]) == (
        "Qwen/Qwen3-Embedding-4B", "none", 8, 8, 32, 2e-4)
    full = {**defaults, **models["qwen3_1_7b_full"]}
    assert (full["source"], full["kind"], full["lr"], full["batch_size"]) == ("Qwen/Qwen3-1.7B", "encoder_full", 4e-5, 16)
    assert map_recipe["ensembles"]["oof_table"]["variants"]["row03"]["members"] == {
        "deepseek_math_7b": 1.0, "qwen3_embedding_4b_lora": 1.2, "ettin_encoder_1b": 0.8}
    assert map_recipe["submissions"]["oof_best_top3"]["source"] == "oof_table.row03"


def test_keys_the_map_write_up_never_states_are_marked_as_oofline_choices():
    text = (REPO / "recipes" / "map.yaml").read_text()
    for key in ("dropout:", "epochs:", "max_length:", "scheduler:", "warmup_ratio:"):
        line = next(line for line in text.splitlines() if line.strip().startswith(key))
        assert "oofline's choice" in line, line


def test_aimo_submits_voted_answers_for_unlabelled_test_problems():
    aimo = recipe("aimo")
    assert aimo["answers"]["test_problems"].endswith("test.csv")
    assert aimo["votes"]["all_models"]["submit_strategy"] == "best"


def test_aimo_fine_tunes_its_answering_model_with_the_write_up_settings():
    finetune = recipe("aimo")["language_models"]["gemma3_12b_sft"]["finetune"]
    assert (finetune["batch_size"], finetune["epochs"], finetune["lr"], finetune["warmup_steps"], finetune["eval_every"]) == (
        4, 3, 5e-5, 100, 500)
    assert "gemma3_12b_sft/cot_boxed" in recipe("aimo")["votes"]["sft_prompts"]["answers"]


def test_cdc_round_two_trains_on_the_round_one_students_soft_labels_of_the_official_rows():
    cdc = recipe("cdc")
    assert cdc["soft_labels"]["gemma_r1"]["official"] is True
    student = cdc["models"]["gemma_r2"]
    assert student["extra_data"]["official_soft"].endswith("soft_labels/gemma_r1/official.parquet")
    assert "official_soft" in student["stages"][0]["data"]


def test_aimo_serves_its_largest_model_in_4bit_with_its_own_completion_budget():
    qwen = recipe("aimo")["language_models"]["qwen3_32b"]
    assert (qwen["quantization"], qwen["precision"], qwen["max_new_tokens"]) == ("4bit", "bf16", 8192)


def test_eedi_mines_and_scores_with_in_context_examples():
    eedi = recipe("eedi")["retrieval"]["misconceptions"]
    assert eedi["embedder_inference"]["embedder_class"] == "decoder-only-icl"
    assert eedi["embedder_inference"]["icl_examples"] == 5
