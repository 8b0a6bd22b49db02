"""Fine-tuning an answering model: loss on the solution only, the best evaluation step kept, a merged model
that the answers step loads as a language model."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_workflow import snakemake  # noqa: E402

from workflow_scripts.config_check import language_model_problems
from workflow_scripts.errors import OoflineError
from workflow_scripts.generated.finetune_lm import IGNORE, encode_example, split_rows



class CharTokenizer:
    """One token per character, EOS 0: enough to check which positions carry a loss."""

    eos_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}


def test_only_solution_tokens_and_eos_carry_a_loss():
    ids, labels = encode_example(CharTokenizer(), "Q: 2+2?", "4", max_length=64)
    assert ids == [ord(c) for c in "Q: 2+2?"] + [ord("4"), 0]
    assert labels == [IGNORE] * 7 + [ord("4"), 0]
    with pytest.raises(OoflineError, match="leaving none of the solution"):
        encode_example(CharTokenizer(), "a long prompt", "4", max_length=5)


def test_evaluation_rows_are_seeded_disjoint_and_never_empty():
    train, held_out = split_rows(10, 0.2, seed=3)
    assert len(held_out) == 2 and set(train).isdisjoint(held_out) and sorted([*train, *held_out]) == list(range(10))
    assert (split_rows(10, 0.2, seed=3)[1] == held_out).all()
    assert len(split_rows(3, 0.01, seed=0)[1]) == 1
    with pytest.raises(OoflineError, match="at least 2 rows"):
        split_rows(1, 0.5, seed=0)


def test_a_fine_tune_must_start_from_a_configured_model_without_cycles():
    assert language_model_problems({"language_models": {"a": {"source": "tiny:llama"},
                                                        "b": {"finetune": {"base": "a"}}}}) == []
    assert language_model_problems({"language_models": {"b": {"finetune": {"base": "zz"}}}}) == [
        "config: language_models.b.finetune.base: no language model is called 'zz' (have ['b'])"]
    cycle = language_model_problems({"language_models": {"b": {"finetune": {"base": "c"}},
                                                         "c": {"finetune": {"base": "b"}}}})
    assert "config: language_models.b.finetune.base: fine-tunes form a cycle (b -> c -> b)" in cycle


CONFIG = {
    "language_models": {
        "tiny": {"source": "tiny:llama"},
        "tiny_sft": {"finetune": {"base": "tiny", "n_rows": 10, "epochs": 3, "batch_size": 4, "lr": 5.0e-3,
                                  "warmup_steps": 0, "eval_every": 2, "eval_fraction": 0.2, "max_length": 96,
                                  "prompt": "direct", "r": 4, "alpha": 8}},
    },
    "answers": {"n_problems": 2, "samples": 1, "max_new_tokens": 8, "answer_regex": "(\\d+)"},
    "votes": {"sft": {"answers": ["tiny_sft/direct"]}},
}


@pytest.mark.slow
def test_fine_tuned_model_keeps_its_best_step_and_answers_through_the_workflow(tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from workflow_scripts.modeling import resolve_model_path

    (tmp_path / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    run = snakemake(tmp_path, "results/votes/sft/score.json")
    assert run.returncode == 0, run.stderr[-4000:]
    model_dir = tmp_path / "results" / "lms" / "tiny_sft" / "base"
    report = json.loads((model_dir / "finetune.json").read_text())
    evaluations = report["history"]
    assert [e["step"] for e in evaluations] == [0, 2, 4, 6]  # 8 training rows / batch 4 = 2 steps x 3 epochs
    best = min(evaluations, key=lambda e: (e["eval_loss"], e["step"]))
    assert (report["best_step"], report["best_eval_loss"]) == (best["step"], best["eval_loss"])
    assert report["best_eval_loss"] < evaluations[0]["eval_loss"]  # it learned the solutions' format
    assert (model_dir / "adapter" / "adapter_model.safetensors").exists()
    assert not list(model_dir.rglob("*.bin")) and not list(model_dir.rglob("*.pt"))

    # the merged model is the base with the kept adapter applied
    base_name, _ = resolve_model_path(tmp_path / "results" / "lms" / "tiny" / "base")
    tokens = torch.tensor([[5, 6, 7, 8, 9]])
    merged = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_name), model_dir / "adapter").eval()
    with torch.no_grad():
        assert torch.allclose(merged(tokens).logits, adapted(tokens).logits, atol=1e-4)
    answers = pl.read_parquet(tmp_path / "results" / "answers" / "tiny_sft" / "direct.parquet")
    assert answers.height == 2


def test_fine_tune_flags_use_the_answers_prompt_and_refuse_a_category_prompt():
    import shlex

    from workflow_scripts.generated.answers import PROMPTS
    from workflow_scripts.rule_params import language_model_finetune_flags

    flags = shlex.split(language_model_finetune_flags("sft", {"base": "a", "prompt": "direct", "epochs": 2, "data": "x.csv"},
                                                      {"system": "Be brief."}, PROMPTS))
    assert flags == ["--template", PROMPTS["direct"], "--settings", '{"epochs": 2}', "--system", "Be brief."]
    answers = {"prompts": {"by_kind": {"by": "kind", "templates": {"default": "D {problem}"}}}}
    with pytest.raises(OoflineError, match="finetune.prompt: 'by_kind' picks templates by category"):
        language_model_finetune_flags("sft", {"base": "a", "prompt": "by_kind"}, answers, PROMPTS)
    with pytest.raises(OoflineError, match="'nope' is neither built in"):
        language_model_finetune_flags("sft", {"base": "a", "prompt": "nope"}, {}, PROMPTS)
