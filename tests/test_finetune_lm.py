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
from workflow_scripts.generated.finetune_lm import IGNORE, SftSettings, encode_example, finetune, sft_examples, split_rows



class CharTokenizer:
    """One token per character, EOS 0: enough to check which positions carry a loss."""

    eos_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}


def test_only_solution_tokens_and_eos_carry_a_loss():
    prompt_ids = [ord(c) for c in "Q: 2+2?"]
    ids, labels = encode_example(CharTokenizer(), prompt_ids, "4", max_length=64)
    assert ids == prompt_ids + [ord("4"), 0]
    assert labels == [IGNORE] * 7 + [ord("4"), 0]
    with pytest.raises(OoflineError, match="leaving none of the solution"):
        encode_example(CharTokenizer(), [ord(c) for c in "a long prompt"], "4", max_length=5)


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


# A chat template that spells BOS itself, as Llama-3's and Gemma's do: a second BOS would be a mismatch.
CHAT_TEMPLATE = ("<s>{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")


@pytest.mark.parametrize("chat", [False, True], ids=["no_chat_template", "chat_template"])
def test_fine_tuning_trains_on_the_prompt_ids_that_answering_feeds_the_model(tiny_llama_dir, monkeypatch, chat):
    from workflow_scripts.generated.answers import PROMPTS, problem_prompts
    from workflow_scripts.generated.generate import load_causal_lm, render_prompt, sample_completions

    model, tokenizer = load_causal_lm(tiny_llama_dir)
    if chat:
        tokenizer.chat_template = CHAT_TEMPLATE
    problems = pl.DataFrame({"id": ["a", "b"], "problem": ["What is 2 + 3?", "Tom has 4 boxes of 6 apples. How many?"]})
    template, system = PROMPTS["cot_boxed"], "Be brief."

    fed = []
    real_generate = model.generate

    def recording_generate(**kwargs):  # the ids answering hands to generate, left padding removed
        fed.extend(ids[mask.bool()].tolist() for ids, mask in zip(kwargs["input_ids"], kwargs["attention_mask"]))
        return real_generate(**kwargs)

    monkeypatch.setattr(model, "generate", recording_generate)
    prompts = [render_prompt(tokenizer, p, system) for p in problem_prompts(problems, "problem", template)]
    sample_completions(model, tokenizer, prompts, temperature=0, top_p=1, max_new_tokens=1, seed=0, batch_size=2)

    trained = []
    for ids, labels in sft_examples(tokenizer, problems["problem"].to_list(), ["5", "24"], template, system, 256):
        n_prompt = next(i for i, label in enumerate(labels) if label != IGNORE)
        trained.append(ids[:n_prompt])
    assert trained == fed
    assert len(fed[0]) != len(fed[1])  # two lengths: left padding was in play and removed
    for ids in fed:  # one BOS, first: added by the tokenizer without a template, spelled by the template with one
        assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1


def test_the_merge_loads_one_base_after_training_in_the_models_precision(tiny_llama_dir, tmp_path, monkeypatch):
    """The merge loads the base once more only after the trained model is gone, in the model's precision
    (bf16 here), and the merged model answers as the adapter on that base does."""
    import gc

    import torch
    from peft import PeftModel
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    loads = []
    real = AutoModelForCausalLM.from_pretrained.__func__

    def recording(cls, name, *args, **kwargs):
        gc.collect()
        alive = sum(isinstance(o, PeftModel) for o in gc.get_objects())
        loads.append({"dtype": kwargs.get("dtype"), "peft_models_alive": alive})
        return real(cls, name, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(recording))
    settings = SftSettings(epochs=1, batch_size=2, lr=5e-3, warmup_steps=0, eval_every=2, eval_fraction=0.25,
                           max_length=64, r=4, alpha=8, precision="bf16")
    problems = [f"What is {i} + {i}?" for i in range(4)]
    report = finetune(tiny_llama_dir, problems, [str(2 * i) for i in range(4)], "Problem: {problem}", settings,
                      tmp_path / "sft")
    assert report["precision"] == "bf16" and len(loads) == 2
    training, merge = loads
    assert merge == {"dtype": torch.bfloat16, "peft_models_alive": 0}
    with safe_open(tmp_path / "sft" / "model.safetensors", "pt") as weights:
        assert {weights.get_tensor(k).dtype for k in weights.keys()} == {torch.bfloat16}
    monkeypatch.undo()
    tokens = torch.tensor([[5, 6, 7, 8, 9]])
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "sft").eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.bfloat16)
    adapted = PeftModel.from_pretrained(base, tmp_path / "sft" / "adapter").eval()
    with torch.no_grad():
        assert torch.allclose(merged(tokens).logits.float(), adapted(tokens).logits.float(), atol=0.05)


def test_an_lm_base_too_large_for_the_gpus_free_memory_merges_in_host_memory(tiny_llama_dir, tmp_path, monkeypatch,
                                                                            capsys):
    """The LM merge, as the classifier merge: on a GPU (queries faked: a T4 with 1 GiB free) whose free memory the
    base does not fit, the merge runs in host memory in the dtype that GPU computes in (fp16), and says why."""
    from types import SimpleNamespace

    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from workflow_scripts.generated.finetune_lm import merge_lm_adapter

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama_dir),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.save_pretrained(tmp_path / "adapter")
    properties = SimpleNamespace(name="Tesla T4", major=7, minor=5, total_memory=16 * 10**9)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: properties)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2**30, 16 * 10**9))
    merge_lm_adapter(tiny_llama_dir, tmp_path / "adapter", tmp_path / "merged", "auto", "none")
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("finetune: merging"))
    assert line.startswith("finetune: merging the adapter on cpu in fp16:") and "merging in host memory" in line
    with safe_open(tmp_path / "merged" / "model.safetensors", "pt") as weights:
        assert {weights.get_tensor(k).dtype for k in weights.keys()} == {torch.float16}
