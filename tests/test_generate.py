"""Few-shot generation: prompt building within the word budget, parsing, failures counted, never-parsing
generators fail with nothing written, and a real tiny Llama producing a parquet."""
import json

import numpy as np
import polars as pl
import pytest
import torch

from workflow_scripts.errors import OoflineError, run_cli
from workflow_scripts.generated.generate import (Completion, GeneratorSettings, build_prompts, generate_rows, main,
                                       parse_output)


TRAIN = pl.DataFrame({
    "id": [f"t{i}" for i in range(12)],
    "story": [f"the child felt {w} after school number {i}" for i, w in enumerate(["sad", "angry", "calm"] * 4)],
    "mood": [0, 1, 2] * 4,
})
TEMPLATE = "Write one new record like these.\n{examples}Answer with one JSON object."


def test_parse_json_lines_and_text():
    fields = ["story", "mood"]
    assert parse_output('Sure! {"story": "x y", "mood": 1} done', fields, "json") == ({"story": "x y", "mood": "1"}, None)
    assert parse_output('{"story": "x"', fields, "json") == (None, "no JSON object")
    assert parse_output('{"story": "x"}', fields, "json") == (None, "missing field 'mood'")
    assert parse_output('{"story": "  ", "mood": 1}', fields, "json") == (None, "empty field 'story'")
    assert parse_output("Story: line one\nline two\nmood: 2\nstory: second record", fields, "lines") == (
        {"story": "line one\nline two", "mood": "2"}, None)
    assert parse_output("mood: 2", fields, "lines") == (None, "missing field 'story'")
    assert parse_output("  free text  ", ["story"], "text") == ({"story": "free text"}, None)
    assert parse_output("   ", ["story"], "text") == (None, "empty output")


def test_prompts_draw_fresh_examples_within_the_word_budget():
    rng = np.random.default_rng(0)
    prompts = build_prompts(TRAIN, 60, TEMPLATE, ["story", "mood"], "json", 5, 60, rng)
    drawn = set()
    for text, ids in prompts:
        assert 1 <= len(ids) <= 5 and len(set(ids)) == len(ids)
        assert len(text.split()) <= 60 or len(ids) == 1  # the first example always goes in
        for example_id in ids:
            row = TRAIN.filter(pl.col("id") == example_id).to_dicts()[0]
            assert json.dumps({"story": row["story"], "mood": row["mood"]}) in text
        drawn.update(ids)
    assert len(drawn) == 12  # random draws per prompt cover the training rows
    big = build_prompts(TRAIN, 1, TEMPLATE, ["story", "mood"], "json", 5, 10_000, np.random.default_rng(0))
    assert len(big[0][1]) == 5


def _fake_sampler(outputs):
    """Cycles through canned outputs; records the seeds it was called with."""
    calls = []

    def sample(prompts, seed):
        calls.append((len(prompts), seed))
        start = sum(n for n, _ in calls[:-1])
        return [Completion(outputs[(start + i) % len(outputs)], [], []) for i in range(len(prompts))]

    sample.calls = calls
    return sample


def test_failures_are_counted_and_kept_not_dropped():
    outputs = ['{"story": "a new story", "mood": 1}', "garbage", '{"story": "b", "mood": "x"}',
               '{"story": "c", "mood": 7}', '{"story": "another one", "mood": 2}']
    settings = GeneratorSettings(fields=["story", "mood"], template=TEMPLATE, n_rows=4, batch_size=5,
                                 label_fields=["mood"], name="g", seed=3, text_template="Story: {story}")
    frame, report = generate_rows(TRAIN, settings, _fake_sampler(outputs))
    assert report["valid"] == 4 and report["attempts"] == 10 and report["failed"] == 6
    assert report["failures"] == {"field 'mood' has a label never seen in training": 2,
                                  "field 'mood' is not a Int64": 2, "no JSON object": 2}
    assert frame.height == 10 and frame["parse_error"].null_count() == 4
    valid = frame.filter(pl.col("parse_error").is_null())
    assert valid["mood"].dtype == TRAIN["mood"].dtype and valid["mood"].to_list() == [1, 2, 1, 2]
    assert valid["text"].to_list()[0] == "Story: a new story"
    assert frame["id"].to_list()[0] == "g-s3-00000"


def test_echoed_examples_count_as_failures_and_sampling_goes_on():
    echo = '{"story": "The child felt SAD after school, number 0", "mood": 0}'  # training row t0, re-cased
    settings = GeneratorSettings(fields=["story", "mood"], template=TEMPLATE, n_rows=2, batch_size=2, label_fields=["mood"])
    frame, report = generate_rows(TRAIN, settings, _fake_sampler([echo, '{"story": "brand new", "mood": 1}']))
    assert report["valid"] == 2 and report["failures"] == {"copy of a training row": 2}
    assert frame.filter(pl.col("parse_error").is_null())["story"].to_list() == ["brand new", "brand new"]


def test_never_parsing_generator_fails_after_max_attempts_and_writes_nothing(tmp_path, monkeypatch):
    settings = GeneratorSettings(fields=["story", "mood"], template=TEMPLATE, n_rows=3, batch_size=4, max_attempts=10)
    sampler = _fake_sampler(["I cannot do that."])
    with pytest.raises(OoflineError, match=r"none of 10 outputs parsed as format 'json'.*no JSON object"):
        generate_rows(TRAIN, settings, sampler)
    assert sum(n for n, _ in sampler.calls) == 10


def test_bad_settings_name_the_key():
    with pytest.raises(OoflineError, match="'feeling'"):
        generate_rows(TRAIN, GeneratorSettings(fields=["story", "feeling"], template=TEMPLATE), _fake_sampler(["x"]))
    with pytest.raises(OoflineError, match=r"\{examples\}"):
        generate_rows(TRAIN, GeneratorSettings(fields=["story"], template="no slot"), _fake_sampler(["x"]))


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    from workflow_scripts.prepare_model import materialise

    root = tmp_path_factory.mktemp("tiny")
    corpus = pl.DataFrame({"text": TRAIN["story"].to_list() * 5 + ['{"story": "x", "mood": 1}']})
    corpus.write_csv(root / "corpus.csv")
    return materialise("tiny:llama", root / "model", seed=0, corpus=root / "corpus.csv")


def _cli_args(model, tmp_path, fmt, out_name):
    TRAIN.write_csv(tmp_path / "train.csv")
    fields = ["story"] if fmt == "text" else ["story", "mood"]
    return ["--model", str(model), "--train", str(tmp_path / "train.csv"), "--generator", "tiny",
            "--fields", *fields, "--format", fmt, "--template", TEMPLATE, "--n-rows", "4", "--batch-size", "4",
            "--max-new-tokens", "12", "--max-attempts", "8", "--seed", "1", "--threads", "1",
            "--output", str(tmp_path / f"{out_name}.parquet"), "--report", str(tmp_path / f"{out_name}.json")]


@pytest.mark.slow
def test_tiny_llama_generates_a_parquet_deterministically(tiny_llama, tmp_path):
    assert run_cli(main, _cli_args(tiny_llama, tmp_path, "text", "a")) == 0
    assert run_cli(main, _cli_args(tiny_llama, tmp_path, "text", "b")) == 0
    frame = pl.read_parquet(tmp_path / "a.parquet")
    assert frame.height >= 4 and frame["parse_error"].null_count() >= 4
    assert set(frame.columns) >= {"id", "story", "raw_text", "parse_error", "example_ids"}
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    assert json.loads((tmp_path / "a.json").read_text())["backend"] == "transformers"


@pytest.mark.slow
def test_tiny_llama_that_never_writes_json_fails_cleanly(tiny_llama, tmp_path, capsys):
    assert run_cli(main, _cli_args(tiny_llama, tmp_path, "json", "c")) == 2
    assert "none of 8 outputs parsed as format 'json'" in capsys.readouterr().err
    assert not (tmp_path / "c.parquet").exists() and not (tmp_path / "c.json").exists()


def test_generation_runs_in_the_jobs_precision_on_the_cpu(tiny_llama, tmp_path, monkeypatch, capsys):
    from workflow_scripts.generated.generate import load_causal_lm, sample_completions

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    model, _ = load_causal_lm(tiny_llama)
    assert model.dtype == torch.float32 and model.device.type == "cpu"  # auto on the CPU
    model, tokenizer = load_causal_lm(tiny_llama, "bf16")
    assert model.dtype == torch.bfloat16
    completions = sample_completions(model, tokenizer, ["the child felt"], temperature=1.0, top_p=0.95,
                                     max_new_tokens=4, seed=0, batch_size=1)
    assert len(completions) == 1 and all(0 <= p <= 1 for p in completions[0].token_probs)
    args = _cli_args(tiny_llama, tmp_path, "text", "p")
    args[args.index("--max-new-tokens") + 1] = "4"
    assert run_cli(main, args + ["--precision", "fp16"]) == 2
    assert "precision 'fp16' needs a GPU" in capsys.readouterr().err


def test_generation_on_a_gpu_loads_onto_the_device_in_its_precision(tiny_llama, monkeypatch):
    """transformers gets device_map + dtype, vLLM gets dtype: checked on a faked GPU (no CUDA call is made)."""
    import sys
    import types

    from transformers import AutoModelForCausalLM

    from workflow_scripts.generated.generate import load_causal_lm, load_vllm

    seen = {}
    real = AutoModelForCausalLM.from_pretrained

    def recording(name, **kwargs):
        seen.update(kwargs)
        kwargs.pop("device_map")  # no GPU here: build it on the CPU
        return real(name, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", recording)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))  # an A100: native bf16
    load_causal_lm(tiny_llama)
    assert seen["device_map"] == {"": "cuda:0"} and seen["dtype"] is torch.bfloat16
    load_causal_lm(tiny_llama, "fp16")
    assert seen["dtype"] is torch.float16
    engines = []
    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=lambda **kwargs: engines.append(kwargs)))
    load_vllm(tiny_llama)
    load_vllm(tiny_llama, "fp16")
    assert [engine["dtype"] for engine in engines] == ["bfloat16", "float16"]


# ------------------------------------------------------------------- confidences without full-vocabulary logits
def _old_full_vocabulary_probs(model, tokenizer, prompts, *, temperature, top_p, max_new_tokens, seed):
    """The computation sample_completions used before: every step's (batch, vocab) logits kept, softmaxed, stacked."""
    encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=True)
    torch.manual_seed(seed * 1_000_003)
    with torch.no_grad():
        out = model.generate(**encoded, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                             return_dict_in_generate=True, output_logits=True, do_sample=True,
                             temperature=temperature, top_p=top_p)
    new_tokens = out.sequences[:, encoded["input_ids"].shape[1]:]
    probs = torch.stack([torch.softmax(step.float(), dim=-1) for step in out.logits], dim=1)
    return new_tokens, probs.gather(2, new_tokens.unsqueeze(-1)).squeeze(-1)


def test_confidences_equal_the_full_vocabulary_computation(tiny_llama):
    from workflow_scripts.generated.generate import load_causal_lm, sample_completions

    model, tokenizer = load_causal_lm(tiny_llama)
    prompts = ["the child felt", "after school number three the child"]  # two lengths: left padding in play
    settings = dict(temperature=0.7, top_p=0.8, max_new_tokens=12, seed=5)
    new_tokens, old_probs = _old_full_vocabulary_probs(model, tokenizer, prompts, **settings)
    completions = sample_completions(model, tokenizer, prompts, batch_size=2, **settings)
    for row, completion in enumerate(completions):
        n = len(completion.token_ids)
        assert n >= 1 and completion.token_ids == new_tokens[row, :n].tolist()  # the same samples
        # raw (T = 1, before top-p) probabilities, exactly as before
        np.testing.assert_allclose(completion.token_probs, old_probs[row, :n].numpy(), rtol=1e-5, atol=1e-7)
    assert any(p < 0.5 for c in completions for p in c.token_probs)  # not the tempered/top-p distribution's 1.0s


def _tensor_bytes(value) -> int:
    """bench/generation_memory.py's measure: bytes of every tensor reachable from `value`."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "generation_memory.py"
    spec = importlib.util.spec_from_file_location("bench_generation_memory", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench.tensor_bytes(value)


def test_generation_keeps_per_token_floats_not_vocabulary_rows(tiny_llama, monkeypatch):
    """What a generate call hands back and what its logits processors hold, after the call and at every step,
    grows with batch x new tokens, never with vocabulary x new tokens (AIMO: 8,192 x 8 x 151,936 fp32 = 37 GiB)."""
    from workflow_scripts.generated import generate as generation
    from workflow_scripts.generated.generate import load_causal_lm, prompt_token_ids, sample_completions

    batch, new_tokens, prompts = 2, 24, ["the child", "the child felt sad"]
    retained, held_during = {}, {}
    for vocab in (4_000, 64_000):
        model, tokenizer = load_causal_lm(tiny_llama)
        model.resize_token_embeddings(vocab, mean_resizing=False)  # a big vocabulary; the tokenizer decodes ids < 282
        real_generate = model.generate
        calls = []

        def recording_generate(*args, **kwargs):
            result = real_generate(*args, **kwargs)
            calls.append((result, kwargs.get("logits_processor") or []))
            return result

        monkeypatch.setattr(model, "generate", recording_generate)
        steps = []
        real_call = generation.ChosenTokenLogProbs.__call__

        def recording_call(self, input_ids, scores):
            out = real_call(self, input_ids, scores)
            steps.append(_tensor_bytes(self))
            return out

        monkeypatch.setattr(generation.ChosenTokenLogProbs, "__call__", recording_call)
        completions = sample_completions(model, tokenizer, prompts, temperature=1.0, top_p=1.0,
                                         max_new_tokens=new_tokens, seed=0, batch_size=batch)
        assert [len(c.token_probs) for c in completions] == [len(c.token_ids) for c in completions]
        [(result, processors)] = calls
        retained[vocab] = _tensor_bytes(result) + _tensor_bytes(list(processors))
        held_during[vocab] = max(steps)
        monkeypatch.undo()
    # after the call: the sequences (int64) and nothing per vocabulary entry
    prompt_length = max(len(prompt_token_ids(tokenizer, p)) for p in prompts)
    assert retained[4_000] == retained[64_000] <= batch * (prompt_length + new_tokens) * 8
    # during it: one step's (batch, vocab) log-softmax plus a float per row and step, whatever the length
    for vocab, held in held_during.items():
        assert held <= batch * vocab * 4 + batch * new_tokens * 4, (vocab, held)


# ------------------------------------------------------------------------------ vLLM or transformers
FAKE_VLLM = '''
"""A stand-in for vllm: records what it is given, answers with the prompt's last token and logprob -0.5."""
import math
from types import SimpleNamespace

engines = []


class SamplingParams:
    def __init__(self, **kwargs):
        self.kwargs = kwargs


class LLM:
    def __init__(self, **kwargs):
        self.kwargs, self.inputs = kwargs, []
        engines.append(self)

    def generate(self, inputs, params):
        self.inputs.extend(inputs)
        outputs = []
        for item in inputs:
            token = item["prompt_token_ids"][-1]
            step = {token: SimpleNamespace(logprob=-0.5)}
            outputs.append(SimpleNamespace(outputs=[SimpleNamespace(text="7", token_ids=[token], logprobs=[step])]))
        return outputs
'''


def _fake_vllm(tmp_path, monkeypatch, source=FAKE_VLLM):
    """A `vllm` package on sys.path for this test only (found and imported the real way)."""
    import importlib
    import sys

    package = tmp_path / "fake_vllm" / "vllm"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(source)
    monkeypatch.syspath_prepend(str(package.parent))
    monkeypatch.setitem(sys.modules, "vllm", None)  # records the state before, restored at the test's end
    del sys.modules["vllm"]  # so that the next import finds the fake package
    importlib.invalidate_caches()


def test_backend_is_transformers_without_vllm_and_vllm_only_where_it_imports_on_a_gpu(tmp_path, monkeypatch):
    import importlib.util

    from workflow_scripts.generated.generate import generation_backend

    if importlib.util.find_spec("vllm") is None:  # this venv: no vLLM
        assert generation_backend() == ("transformers", "vllm is not installed (make setup CUDA=1 VLLM=1 adds it)")
    _fake_vllm(tmp_path, monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert generation_backend() == ("transformers", "no GPU (vLLM runs on GPUs only)")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert generation_backend("4bit")[0] == "vllm"
    assert generation_backend("8bit") == ("transformers", "8-bit weights (vLLM has no 8-bit bitsandbytes path)")


def test_a_vllm_that_does_not_import_falls_back_to_transformers_with_the_reason(tmp_path, monkeypatch):
    from workflow_scripts.generated.generate import generation_backend

    _fake_vllm(tmp_path, monkeypatch, "raise ImportError('libcudart.so.13: cannot open shared object file')")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    backend, why = generation_backend()
    assert backend == "transformers" and "libcudart.so.13" in why


def test_answers_take_the_vllm_path_with_the_prompt_ids_fine_tuning_uses(tiny_llama, tmp_path, monkeypatch, capsys):
    """On a (faked) GPU with vLLM importable, answers go through vLLM with token ids, not text."""
    import sys

    from workflow_scripts.generated import answers
    from workflow_scripts.generated.generate import prompt_token_ids
    from workflow_scripts.generated.math_demo import make_problems

    _fake_vllm(tmp_path, monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))  # an A100: native bf16
    make_problems(3).write_parquet(tmp_path / "problems.parquet")
    args = ["--model", str(tiny_llama), "--problems", str(tmp_path / "problems.parquet"), "--prompt-name", "direct",
            "--samples", "2", "--output", str(tmp_path / "a.parquet")]
    assert run_cli(answers.main, args) == 0
    assert "vllm backend" in capsys.readouterr().out
    [engine] = sys.modules["vllm"].engines
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    prompts = answers.problem_prompts(make_problems(3), "problem", answers.PROMPTS["direct"]) * 2
    assert engine.inputs == [{"prompt_token_ids": prompt_token_ids(tokenizer, p)} for p in prompts]
    assert engine.inputs[0]["prompt_token_ids"][0] == tokenizer.bos_token_id  # no chat template: BOS, once
    frame = pl.read_parquet(tmp_path / "a.parquet")
    assert frame.height == 6 and frame["confidence"].to_list() == pytest.approx([np.exp(-0.5)] * 6)
