"""Language models for generation and answers: 4-bit / 8-bit weights and per-model sampling settings."""
from __future__ import annotations

import shlex

import pytest

from workflow_scripts.rule_params import answer_flags, language_model_flags


def test_a_quantized_language_model_loads_4bit_weights_and_still_samples(tiny_llama_dir, monkeypatch):
    import bitsandbytes as bnb
    import torch

    from workflow_scripts.generated.generate import load_causal_lm, sample_completions

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    model, tokenizer = load_causal_lm(tiny_llama_dir, "auto", "4bit")
    assert any(isinstance(module, bnb.nn.Linear4bit) for module in model.modules())
    plain, _ = load_causal_lm(tiny_llama_dir)
    assert not any(isinstance(module, bnb.nn.Linear4bit) for module in plain.modules())
    completions = sample_completions(model, tokenizer, ["Review: a fine film"], temperature=0.7, top_p=0.95,
                                     max_new_tokens=4, seed=0, batch_size=1)
    assert len(completions) == 1 and 1 <= len(completions[0].token_ids) <= 4
    assert all(0.0 < p <= 1.0 for p in completions[0].token_probs)


def test_a_models_own_sampling_settings_come_after_and_so_win_over_the_steps():
    answers = {"temperature": 0.7, "max_new_tokens": 256}
    flags = shlex.split(answer_flags(answers, "cot_boxed") + " "
                        + language_model_flags({"source": "x", "quantization": "4bit", "max_new_tokens": 4096,
                                                "precision": "bf16"}))
    assert flags == ["--temperature", "0.7", "--max-new-tokens", "256",
                     "--precision", "bf16", "--quantization", "4bit", "--max-new-tokens", "4096"]
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--max-new-tokens", type=int)
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--precision")
    parser.add_argument("--quantization")
    assert parser.parse_args(flags).max_new_tokens == 4096  # argparse keeps the last value


@pytest.mark.parametrize("settings", [{"source": "x"}, {"finetune": {"base": "y"}}])
def test_a_model_without_settings_adds_no_flags(settings):
    assert language_model_flags(settings) == ""
