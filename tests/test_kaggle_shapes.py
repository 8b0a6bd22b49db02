"""Kaggle packages of every submission shape, without a run: which names a package may take, what each shape
refuses as one config line, the plan's memory and generation estimates, and per-problem sampling seeds.
The packages themselves are built and run offline in tests/test_recipe_runs.py (MAP, Eedi, AIMO)."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from workflow_scripts.errors import OoflineError

REPO = Path(__file__).resolve().parent.parent


def recipe(*names: str) -> dict:
    from test_recipe_runs import merge

    config: dict = {}
    for name in names:
        merge(config, yaml.safe_load((REPO / "recipes" / name).read_text()))
    return config


def test_a_package_may_name_a_retrieval_pipeline_or_a_submitting_vote(tmp_path):
    """The issue's repro: kaggle.misconceptions (Eedi) and kaggle.all_models (AIMO) were 'no submission' errors."""
    from workflow_scripts.config_check import check_config
    from workflow_scripts.kaggle.shapes import submission_names

    eedi = recipe("eedi.yaml", "demo-models-eedi.yaml")
    check_config(eedi, REPO)
    assert submission_names(eedi) == {"misconceptions": "retrieval", "misconceptions_cv": "retrieval"}
    aimo = recipe("aimo.yaml", "demo-models-aimo.yaml")
    check_config(aimo, REPO)
    assert submission_names(aimo) == {"gemma_prompts": "answers", "sft_prompts": "answers", "all_models": "answers"}
    # a vote that does not submit is no package's submission
    aimo["votes"]["all_models"]["submit"] = False
    del aimo["register"]  # the overlay's record of it (its own error: tests/test_rule_params.py)
    with pytest.raises(OoflineError, match=r"^config: kaggle.all_models: no submission or register: record is called"):
        check_config(aimo, tmp_path)


def config_lines(config: dict, base_dir: Path = REPO) -> list[str]:
    from workflow_scripts.config_check import check_config

    with pytest.raises(OoflineError) as error:
        check_config(config, base_dir)
    return str(error.value).splitlines()


def test_what_an_answers_package_cannot_do_is_a_config_line():
    aimo = recipe("aimo.yaml", "demo-models-aimo.yaml")
    del aimo["kaggle"]["all_models"]["server"]
    assert any(line.startswith("config: kaggle.all_models.server: interface inference_server needs the competition's "
                               "server class") for line in config_lines(aimo))
    aimo = recipe("aimo.yaml", "demo-models-aimo.yaml")
    aimo["kaggle"]["gemma_prompts"] = dict(aimo["kaggle"].pop("all_models"))
    from workflow_scripts.config_check import check_config
    check_config(copy.deepcopy(aimo), REPO)  # keywords: the category is found in the problem text, which predict has
    by_column = aimo["answers"]["prompts"]["by_category"]
    del by_column["keywords"]
    by_column["by"] = "kind"  # a column the served problem does not have
    lines = config_lines(aimo)
    assert any("kaggle.gemma_prompts.interface: inference_server hands predict only a problem's id and text, but "
               "gemma3_12b/by_category picks its template by column 'kind'" in line for line in lines)
    aimo = recipe("aimo.yaml", "demo-models-aimo.yaml")
    aimo["kaggle"]["all_models"]["quantization"] = "4bit"  # gemma3_12b answered unquantized
    assert any("kaggle.all_models.quantization: 4bit but gemma3_12b answered with quantization none" in line
               for line in config_lines(aimo))


def test_quantization_is_accepted_only_where_the_workflow_predicted_that_way():
    from workflow_scripts.config_check import check_config

    eedi = recipe("eedi.yaml", "demo-models-eedi.yaml")
    eedi["kaggle"]["misconceptions"]["quantization"] = "4bit"
    assert any(line.startswith("config: kaggle.misconceptions.quantization: retrieval.misconceptions's embedder and "
                               "reranker ranked unquantized") for line in config_lines(eedi))
    mapped = recipe("map.yaml", "demo-models-map.yaml")
    mapped["kaggle"]["oof_best_top3"]["quantization"] = "4bit"
    # deepseek_math_7b is 4-bit QLoRA, qwen3_embedding_4b_lora plain LoRA, ettin a full fine-tune
    lines = [line for line in config_lines(mapped) if "quantization" in line]
    assert [line.split("member ")[1].split(" ")[0] for line in lines] == ["'ettin_encoder_1b'", "'qwen3_embedding_4b_lora'"]
    mapped["kaggle"]["oof_best_top3"]["seconds_per_problem"] = 10
    assert any("kaggle.oof_best_top3.seconds_per_problem: a key of answer (vote) packages" in line
               for line in config_lines(mapped))
    aimo = recipe("aimo.yaml", "demo-models-aimo.yaml")
    aimo["kaggle"] = {"all_models": dict(aimo["kaggle"]["all_models"], quantization="none")}
    aimo["language_models"]["qwen3_32b"]["quantization"] = "none"
    check_config(aimo, REPO)  # every member answered unquantized: accepted


def test_memory_plan_warns_when_a_model_cannot_fit_the_accelerator():
    from workflow_scripts.kaggle.plan import memory_lines, memory_plan, target_precision

    # a 14B embedder in fp16 (auto on a T4: no native bf16) does not fit a 16 GB T4; 4-bit does; an H100 takes it
    assert target_precision("auto", "t4x2") == "fp16" and target_precision("auto", "h100") == "bf16"
    members = {"embedder": {"parameters": 14_770_000_000, "precision": "fp16", "quantization": "none"},
               "reranker": {"parameters": 14_770_000_000, "precision": "fp16", "quantization": "4bit"}}
    plan = memory_plan(members, "t4x2", together=False)
    assert plan["members"]["embedder"]["weights_gb"] == pytest.approx(29.54)
    assert (plan["members"]["embedder"]["fits"], plan["members"]["reranker"]["fits"]) == (False, True)
    [line] = memory_lines("eedi", plan)
    assert line.startswith("WARNING: kaggle eedi: embedder needs 29.5 GB (29.5 GB of weights in fp16) on t4x2 (16 GB)")
    assert memory_plan(members, "h100", together=False)["fits"]
    # held together (an answers package), two that fit alone may not
    together = memory_plan({"a": dict(members["reranker"], kv_cache_gb=4.0), "b": dict(members["reranker"])}, "t4x2",
                           together=True)
    assert not together["fits"] and "they do not fit together" in memory_lines("aimo", together)[0]


def test_generation_estimate_counts_batches_times_new_tokens_and_the_budget_caps_it():
    from workflow_scripts.kaggle.plan import (BYTES_PER_WEIGHT, DECODE_STEP_OVERHEAD_SECONDS, GPU_BANDWIDTH_GBS,
                                              answers_estimate)

    models = {"lm": {"parameters": 12_000_000_000, "precision": "bf16", "quantization": "none",
                     "bytes_on_disk": 24e9, "kv_values_per_token": 2 * 48 * 8 * 256}}
    sets = {"lm/cot": {"model": "lm", "samples": 8, "batch_size": 4, "new_tokens": 1000.0, "max_new_tokens": 4096,
                       "prompt_tokens": 200}}
    kaggle = {"accelerator": "h100", "time_limit_hours": 5, "seconds_per_problem": None}
    plan = answers_estimate(sets, models, 50, kaggle, "vllm")
    step = 12e9 * BYTES_PER_WEIGHT["bf16"] / 1e9 / GPU_BANDWIDTH_GBS["H100"] + DECODE_STEP_OVERHEAD_SECONDS["vllm"]
    assert plan["seconds_per_problem"] == pytest.approx(2 * 1000 * step, abs=1e-3)  # 2 batches x 1000 tokens
    assert plan["member_seconds"]["answer problems"] == pytest.approx(50 * 2 * 1000 * step, rel=1e-3)
    capped = answers_estimate(sets, models, 50, dict(kaggle, seconds_per_problem=10), "vllm")
    assert capped["member_seconds"]["answer problems"] == pytest.approx(500)
    # weights + the KV cache of a batch of 4 at 4296 tokens, in fp16
    kv = 4 * 4296 * 2 * 48 * 8 * 256 * 2 / 1e9
    assert plan["memory"]["members"]["lm"]["kv_cache_gb"] == pytest.approx(kv, abs=1e-3)


def test_a_problem_is_sampled_with_the_same_seeds_whatever_comes_with_it():
    from workflow_scripts.generated.answers import problem_seed, sample_problem

    calls = []

    def generate(prompts, seed):
        calls.append((prompts[0], len(prompts), seed))
        return [f"{seed}-{k}" for k in range(len(prompts))]

    first = sample_problem(generate, "p1", "id-1", 5, 2, seed=7)
    assert [size for _, size, _ in calls] == [2, 2, 1]
    assert [seed for *_, seed in calls] == [problem_seed(7, "id-1", b) for b in range(3)]
    calls.clear()
    sample_problem(generate, "p2", "id-2", 5, 2, seed=7)
    assert sample_problem(generate, "p1", "id-1", 5, 2, seed=7) == first  # another problem before it: the same
    assert problem_seed(7, "id-1", 0) != problem_seed(7, "id-2", 0) != problem_seed(8, "id-2", 0)
    # a spent budget: the first batch still runs (an answer for every problem), no later one
    assert len(sample_problem(generate, "p1", "id-1", 5, 2, seed=7, until=0.0)) == 2
