"""Few-shot synthetic rows from a local causal LM, parsed and validated, every attempt kept.

Each prompt shows official rows drawn at random (a new draw per prompt; never rows of --held-out-folds) as examples, rendered in the output format
the model must answer in, added while the prompt stays within a word budget (the first example always goes in).
Sampling runs in batches with `transformers` generate, or with vLLM when it is importable and a GPU is present.

Output (`results/generated/{generator}/raw/seed{s}.parquet`): one row per attempt: `id`, the fields (null when the
attempt did not parse), `text` (rendered with --text-template when given), `raw_text`, `parse_error` (null when
the row is valid) and `example_ids`. An output whose non-label fields equal a training row (after dedup.py's
normalisation) counts as a failure ("copy of a training row"), so sampling goes on until n_rows new rows parse.
Nothing is dropped here; `dedup.py` removes unparsed rows and duplicates and
reports counts. If no attempt parses within --max-attempts, the step fails and writes nothing.

Output formats (--format): `json` (the first JSON object in the output holding every field), `lines`
(`field: value` lines; a value runs until the next field line), `text` (the whole output is the one field).
"""
from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import polars as pl

from workflow_scripts.errors import OoflineError, run_cli
from workflow_scripts.execution.device import PRECISIONS
from workflow_scripts.io import read_table, write_json, write_parquet
from workflow_scripts.modeling import QUANTIZATIONS

FORMATS = ("json", "lines", "text")
EXAMPLES_PLACEHOLDER = "{examples}"


# ----------------------------------------------------------------------------------------------- sampling
@dataclass
class Completion:
    """One sampled continuation: its text, token ids and the model's probability of each token (T = 1)."""

    text: str
    token_ids: list[int]
    token_probs: list[float] = field(default_factory=list)


def generation_device_and_precision(precision: str = "auto") -> tuple[str, str]:
    """(device, resolved precision) of a generation job: its GPU when it has one; auto is bf16 there, fp32 on the CPU."""
    from workflow_scripts.execution.device import resolve_device, resolve_precision

    device = resolve_device("auto")
    return str(device), resolve_precision(precision, device)


def load_causal_lm(model_path: str | Path, precision: str = "auto", quantization: str = "none",
                   device: str | None = None):
    """(model, tokenizer) from a local folder (or a prepare_model pointer) on the job's device in `precision`
    (4-bit nf4 / 8-bit bitsandbytes weights with `quantization`), eval mode, left padding. `device` with a
    resolved `precision` places it elsewhere (a merge in host memory keeps the dtype its GPU would use)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from workflow_scripts.execution.device import torch_dtype_of
    from workflow_scripts.modeling import _quantization_config, resolve_model_path

    device, resolved = generation_device_and_precision(precision) if device is None else (device, precision)
    name, revision = resolve_model_path(model_path)
    kwargs = {"device_map": {"": device}} if device != "cpu" else {}  # weights go straight to the GPU
    quantization_config = _quantization_config(quantization, torch_dtype_of(resolved))
    if quantization_config is not None:  # bitsandbytes places quantized weights itself, the CPU included
        kwargs = {"device_map": {"": device}, "quantization_config": quantization_config}
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, revision=revision)
        model = AutoModelForCausalLM.from_pretrained(name, revision=revision, dtype=torch_dtype_of(resolved), **kwargs)
    except OSError as error:
        raise OoflineError(f"cannot load causal LM from {model_path}: {error}") from error
    print(f"causal LM {model_path} on {device} in {resolved}"
          + (f", weights {quantization}" if quantization_config is not None else ""), flush=True)
    model.eval()
    tokenizer.padding_side = "left"  # decoder-only batches must end where generation starts
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


# vLLM's `dtype` argument for a resolved precision.
VLLM_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def render_prompt(tokenizer, user: str, system: str | None = None) -> str:
    """The model's chat template around `user` when it has one, the bare text otherwise."""
    if getattr(tokenizer, "chat_template", None):
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return f"{system}\n\n{user}" if system else user


def prompt_token_ids(tokenizer, prompt: str) -> list[int]:
    """The token ids a rendered prompt is fed to the model as, when answering and when fine-tuning alike: a chat
    template already spells its special tokens in the text; a bare prompt gets the tokenizer's own (BOS)."""
    return list(tokenizer(prompt, add_special_tokens=not getattr(tokenizer, "chat_template", None))["input_ids"])


def generation_backend(quantization: str = "none") -> tuple[str, str]:
    """("vllm" | "transformers", why): vLLM when it imports and the job has a GPU, and the weights are not
    8-bit (vLLM has no 8-bit bitsandbytes path); transformers' generate otherwise."""
    import importlib
    import importlib.util

    import torch

    if importlib.util.find_spec("vllm") is None:
        return "transformers", "vllm is not installed (make setup CUDA=1 VLLM=1 adds it)"
    if not torch.cuda.is_available():
        return "transformers", "no GPU (vLLM runs on GPUs only)"
    if quantization == "8bit":
        return "transformers", "8-bit weights (vLLM has no 8-bit bitsandbytes path)"
    try:
        importlib.import_module("vllm")
    except Exception as error:  # a vLLM built for another torch or CUDA: say so, generate without it
        return "transformers", f"vllm is installed but does not import ({type(error).__name__}: {error})"
    return "vllm", "vllm imports and the job has a GPU"


class ChosenTokenLogProbs:
    """A logits processor that keeps, per generated token, the log-probability the model gave the token that was
    chosen: (batch, new tokens) floats, instead of a (batch, vocab) tensor per step (`output_logits` or
    `output_scores` keep 8,192 x 8 x 151,936 fp32 = 37 GiB for a Qwen3 answer batch).

    generate calls it with the ids so far, whose last column is the token chosen after the previous call; so only
    the previous step's log-softmax is held, one (batch, vocab) tensor at a time. It passes the scores on
    unchanged; generate runs it after the rules the model's own generation config sets, if any (a repetition
    penalty, say), and before temperature, top-k and top-p: the model's probabilities at T = 1.
    """

    def __init__(self):
        self.chosen: list = []  # (batch,) float32 per step whose token is known
        self.pending = None  # (batch, vocab) log-softmax of the last step, its token not yet known

    def __call__(self, input_ids, scores):
        import torch

        self._gather(input_ids[:, -1])
        self.pending = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def _gather(self, tokens) -> None:
        if self.pending is not None:
            self.chosen.append(self.pending.gather(1, tokens[:, None]).squeeze(1))
            self.pending = None

    def finish(self, new_tokens):
        """(batch, n_new) log-probabilities of `new_tokens` (the generated columns of the returned sequences)."""
        import torch

        n_new = new_tokens.shape[1]
        if len(self.chosen) < n_new:
            self._gather(new_tokens[:, len(self.chosen)])
        self.pending = None
        # generate may drop its last step (deferred stop checks): keep the steps the sequences hold
        if not self.chosen:
            return torch.zeros((new_tokens.shape[0], 0), dtype=torch.float32, device=new_tokens.device)
        log_probs = torch.stack(self.chosen, dim=1)[:, :n_new]
        self.chosen = []
        return log_probs


def sample_completions(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    seed: int,
    batch_size: int,
    label: str = "sample",
) -> list[Completion]:
    """Sample one completion per prompt in batches; batch b is seeded with (seed, b), so reruns are identical.

    Memory beyond the model and its KV cache: the sequences and one float per generated token, (batch, new tokens);
    never a full-vocabulary tensor per step (see ChosenTokenLogProbs)."""
    import torch
    from transformers import LogitsProcessorList

    if temperature < 0 or not 0 < top_p <= 1 or max_new_tokens < 1 or batch_size < 1:
        raise OoflineError(
            f"sampling settings: need temperature >= 0, 0 < top_p <= 1, max_new_tokens >= 1, batch_size >= 1; "
            f"got {temperature}, {top_p}, {max_new_tokens}, {batch_size}"
        )
    device = next(model.parameters()).device
    eos_ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    generation_eos = getattr(model.generation_config, "eos_token_id", None)
    eos_ids |= set(generation_eos if isinstance(generation_eos, list) else [generation_eos] if generation_eos is not None else [])
    completions: list[Completion] = []
    n_batches = (len(prompts) + batch_size - 1) // batch_size
    for b in range(n_batches):
        batch = list(prompts[b * batch_size : (b + 1) * batch_size])
        # the ids fine-tuning trains on (prompt_token_ids), left-padded: a batch must end where generation starts
        encoded = tokenizer.pad({"input_ids": [prompt_token_ids(tokenizer, p) for p in batch]}, padding=True,
                                padding_side="left", return_tensors="pt")
        encoded = {k: v.to(device) for k, v in encoded.items()}
        torch.manual_seed(seed * 1_000_003 + b)
        sampling = dict(do_sample=True, temperature=temperature, top_p=top_p) if temperature > 0 else dict(do_sample=False)
        log_probs = ChosenTokenLogProbs()
        with torch.no_grad():
            # sequences only: a dict output would also hand back the KV cache, alive until the next batch's is built
            sequences = model.generate(
                **encoded, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                logits_processor=LogitsProcessorList([log_probs]), return_dict_in_generate=False, **sampling,
            )
        new_tokens = sequences[:, encoded["input_ids"].shape[1] :]
        chosen = log_probs.finish(new_tokens).exp()
        for row in range(new_tokens.shape[0]):
            ids = new_tokens[row].tolist()
            end = next((i for i, t in enumerate(ids) if t in eos_ids), len(ids))
            ids = ids[:end]
            completions.append(Completion(tokenizer.decode(ids, skip_special_tokens=True), ids, chosen[row, :end].tolist()))
        print(f"{label}: batch {b + 1}/{n_batches} done ({len(completions)} completions)", flush=True)
    return completions


def load_vllm(model_path: str | Path, precision: str = "auto", quantization: str = "none"):
    """A vLLM engine for a local model folder (GPU hosts only) in `precision`; 4-bit weights through vLLM's
    in-flight bitsandbytes quantization (8-bit has no vLLM path: transformers serves it)."""
    from vllm import LLM

    from workflow_scripts.modeling import resolve_model_path

    _, resolved = generation_device_and_precision(precision)
    name, revision = resolve_model_path(model_path)
    extra = {"quantization": "bitsandbytes"} if quantization == "4bit" else {}
    return LLM(model=name, revision=revision, dtype=VLLM_DTYPES[resolved], **extra)


def sample_completions_vllm(llm, tokenizer, prompts, *, temperature, top_p, max_new_tokens, seed, label="sample",
                            seeds=None):
    """The same as `sample_completions`, through vLLM; prompt i is seeded with (seed, i), or with seeds[i] when
    given; token probabilities come from vLLM's logprobs of the sampled tokens. vLLM gets token ids
    (`prompt_token_ids`), not text, so it sees what transformers and fine-tuning see (left to itself it would add a
    BOS to a chat-templated prompt)."""
    import math

    from vllm import SamplingParams

    seeds = list(seeds) if seeds is not None else [seed * 1_000_003 + i for i in range(len(prompts))]
    params = [SamplingParams(temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, seed=seeds[i],
                             logprobs=0) for i in range(len(prompts))]
    print(f"{label}: vLLM generating {len(prompts)} completions", flush=True)
    completions = []
    inputs = [{"prompt_token_ids": prompt_token_ids(tokenizer, p)} for p in prompts]
    for output in llm.generate(inputs, params):
        best = output.outputs[0]
        ids = list(best.token_ids)
        probs = [math.exp(step[t].logprob) for t, step in zip(ids, best.logprobs)] if best.logprobs else []
        completions.append(Completion(best.text, ids, probs))
    return completions


# ---------------------------------------------------------------------------------------- prompts & parse
def render_example(row: dict, fields: Sequence[str], fmt: str) -> str:
    """An example row written the way the model must answer."""
    if fmt == "json":
        return json.dumps({f: row[f] for f in fields}, ensure_ascii=False)
    if fmt == "lines":
        return "\n".join(f"{f}: {row[f]}" for f in fields)
    return str(row[fields[0]])


def build_prompts(
    examples: pl.DataFrame, n_prompts: int, template: str, fields: Sequence[str], fmt: str,
    examples_per_prompt: int, word_budget: int, rng: np.random.Generator,
) -> list[tuple[str, list[str]]]:
    """n_prompts user prompts (template with {examples} filled) and the example ids each one shows."""
    if EXAMPLES_PLACEHOLDER not in template:
        raise OoflineError("generator template must contain '{examples}' (where the few-shot examples go)")
    rows = examples.to_dicts()
    base_words = len(template.replace(EXAMPLES_PLACEHOLDER, "").split())
    prompts = []
    for _ in range(n_prompts):
        picked = rng.choice(len(rows), size=min(examples_per_prompt, len(rows)), replace=False)
        block, ids, words = "", [], base_words
        for i, index in enumerate(picked):
            piece = f"EXAMPLE {i + 1}:\n{render_example(rows[index], fields, fmt)}\n\n"
            if ids and words + len(piece.split()) > word_budget:
                break  # a prompt holds whole examples only: stop before the word budget would be exceeded
            block, words = block + piece, words + len(piece.split())
            ids.append(str(rows[index]["id"]))
        prompts.append((template.replace(EXAMPLES_PLACEHOLDER, block.rstrip() + "\n"), ids))
    return prompts


def parse_output(text: str, fields: Sequence[str], fmt: str) -> tuple[dict[str, str] | None, str | None]:
    """(values, None) when the output holds every field non-empty, else (None, reason)."""
    if not text.strip():
        return None, "empty output"
    if fmt == "text":
        return {fields[0]: text.strip()}, None
    if fmt == "json":
        decoder, found = json.JSONDecoder(), None
        for start in (m.start() for m in re.finditer(r"\{", text)):
            try:
                obj, _ = decoder.raw_decode(text[start:])
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                found = obj
                break
        if found is None:
            return None, "no JSON object"
        values = {f: found.get(f) for f in fields}
    elif fmt == "lines":
        key = re.compile(r"^\s*(" + "|".join(re.escape(f) for f in fields) + r")\s*:\s?(.*)$", re.IGNORECASE)
        canonical = {f.lower(): f for f in fields}
        values, current = {}, None
        for line in text.splitlines():
            match = key.match(line)
            if match:
                current = canonical[match.group(1).lower()]
                if current in values:  # a second record starts: keep the first
                    break
                values[current] = match.group(2)
            elif current is not None:
                values[current] += "\n" + line
    else:
        raise OoflineError(f"generator format {fmt!r} is not known (expected one of {', '.join(FORMATS)})")
    for f in fields:
        if values.get(f) is None:
            return None, f"missing field {f!r}"
        if isinstance(values[f], (dict, list)) or not str(values[f]).strip():
            return None, f"empty field {f!r}"
    return {f: str(values[f]).strip() for f in fields}, None


def typed_rows(parsed: list[dict | None], errors: list[str | None], fields: Sequence[str], train: pl.DataFrame,
               label_fields: Sequence[str]) -> tuple[pl.DataFrame, list[str | None]]:
    """Fields cast to the training column types; a value that does not cast, or a label never seen in training,
    turns the row into a failure with the reason."""
    errors = list(errors)
    columns = {}
    for f in fields:
        raw = pl.Series(f, [p[f] if p else None for p in parsed], dtype=pl.String)
        dtype = train.schema.get(f, pl.String)
        cast = raw.cast(dtype, strict=False) if dtype != pl.String else raw
        allowed = set(train[f].cast(pl.String).to_list()) if f in label_fields else None
        for i, (before, after) in enumerate(zip(raw.to_list(), cast.to_list())):
            if errors[i] is not None or before is None:
                continue
            if after is None:
                errors[i] = f"field {f!r} is not a {dtype}: {before[:40]!r}"
            elif allowed is not None and str(after) not in allowed:
                errors[i] = f"field {f!r} has a label never seen in training: {before[:40]!r}"
        columns[f] = cast
    return pl.DataFrame(columns), errors


def _content_hash(values: dict, fields: Sequence[str]) -> str:
    from workflow_scripts.generated.dedup import text_hash

    return text_hash("\n".join(str(values[f]) for f in fields))


@dataclass
class GeneratorSettings:
    fields: list[str]
    template: str
    fmt: str = "json"
    system: str | None = None
    label_fields: list[str] = field(default_factory=list)
    n_rows: int = 100
    examples_per_prompt: int = 7
    word_budget: int = 2000
    temperature: float = 1.0
    top_p: float = 0.95
    max_new_tokens: int = 256
    batch_size: int = 8
    max_attempts: int | None = None  # default 3 * n_rows
    seed: int = 0
    name: str = "gen"
    text_template: str | None = None


def generate_rows(train: pl.DataFrame, settings: GeneratorSettings, sample,
                  held_out_ids: set[str] | None = None) -> tuple[pl.DataFrame, dict]:
    """Prompt, sample and parse until n_rows rows are valid or max_attempts are spent.

    `sample(prompts, seed) -> list[Completion]` does the sampling (a model, vLLM, or a test double).
    Returns every attempt (see the module docstring) and a report with counts per failure reason.
    held_out_ids: rows never shown as examples (the held-out folds of the students the rows are for); they still
    count as training rows an output must not copy.
    """
    s = settings
    if s.fmt not in FORMATS:
        raise OoflineError(f"generator format {s.fmt!r} is not known (expected one of {', '.join(FORMATS)})")
    if s.fmt == "text" and len(s.fields) != 1:
        raise OoflineError(f"generator format 'text' takes exactly one field; got {s.fields}")
    missing = [c for c in ["id", *s.fields] if c not in train.columns]
    if missing:
        raise OoflineError(f"training data: generator field(s) {missing} are not columns (have {train.columns})")
    unknown_labels = [f for f in s.label_fields if f not in s.fields]
    if unknown_labels:
        raise OoflineError(f"generator label_fields {unknown_labels} must also be listed in fields {s.fields}")
    if s.n_rows < 1:
        raise OoflineError(f"generator n_rows must be >= 1; got {s.n_rows}")
    max_attempts = s.max_attempts or 3 * s.n_rows
    rng = np.random.default_rng(s.seed)
    every_row = train.select(["id", *s.fields]).drop_nulls()
    examples = every_row
    if held_out_ids:
        examples = every_row.filter(~pl.col("id").cast(pl.String).is_in(pl.Series(sorted(held_out_ids), dtype=pl.String).implode()))
    if examples.height == 0:
        raise OoflineError(f"training data: no row has every generator field {s.fields} filled (needed as examples)")

    content_fields = [f for f in s.fields if f not in s.label_fields] or list(s.fields)
    training_hashes = {_content_hash(row, content_fields) for row in every_row.to_dicts()}
    attempts = {"raw_text": [], "example_ids": []}
    parsed, errors = [], []
    n_valid, round_index = 0, 0
    while n_valid < s.n_rows and len(parsed) < max_attempts:
        # ask for what is still missing, plus a margin for failures, in whole batches
        want = min(max_attempts - len(parsed), max(s.batch_size, s.n_rows - n_valid))
        prompts = build_prompts(examples, want, s.template, s.fields, s.fmt, s.examples_per_prompt, s.word_budget, rng)
        completions = sample([p for p, _ in prompts], s.seed * 7919 + round_index)
        round_index += 1
        for (_, ids), completion in zip(prompts, completions):
            values, error = parse_output(completion.text, s.fields, s.fmt)
            if values is not None and _content_hash(values, content_fields) in training_hashes:
                # small models often echo a few-shot example; count it and keep sampling instead
                values, error = None, "copy of a training row"
            parsed.append(values)
            errors.append(error)
            attempts["raw_text"].append(completion.text)
            attempts["example_ids"].append(",".join(ids))
        typed, typed_errors = typed_rows(parsed, errors, s.fields, train, s.label_fields)
        n_valid = sum(e is None for e in typed_errors)
        print(f"generate[{s.name} seed {s.seed}]: {len(parsed)} attempts, {n_valid} valid, "
              f"{len(parsed) - n_valid} failed", flush=True)
    typed, errors = typed_rows(parsed, errors, s.fields, train, s.label_fields)
    failures = Counter(e.split(":")[0] for e in errors if e is not None)
    if n_valid == 0:
        example = next((t for t in attempts["raw_text"] if t.strip()), "")[:200]
        raise OoflineError(
            f"generator {s.name!r}: none of {len(parsed)} outputs parsed as format {s.fmt!r} with fields {s.fields} "
            f"(failures: {dict(failures)}); first output: {example!r}. Check the template, format and max_new_tokens."
        )
    frame = pl.DataFrame({"id": [f"{s.name}-s{s.seed}-{i:05d}" for i in range(len(parsed))]}).hstack(typed)
    frame = frame.with_columns(
        pl.Series("raw_text", attempts["raw_text"], dtype=pl.String),
        pl.Series("parse_error", errors, dtype=pl.String),
        pl.Series("example_ids", attempts["example_ids"], dtype=pl.String),
    )
    if s.text_template:
        from workflow_scripts.data import render_texts

        text = render_texts(frame, s.text_template, f"generator {s.name!r}")
        frame = frame.with_columns(pl.when(pl.col("parse_error").is_null()).then(text).otherwise(None).alias("text"))
    report = {
        "generator": s.name, "seed": s.seed, "attempts": len(parsed), "valid": n_valid,
        "failed": len(parsed) - n_valid, "failures": dict(sorted(failures.items())), "requested_rows": s.n_rows,
        "shortfall": max(0, s.n_rows - n_valid), "format": s.fmt, "fields": list(s.fields),
    }
    if n_valid < s.n_rows:
        print(f"generate[{s.name} seed {s.seed}]: warning: only {n_valid} of {s.n_rows} rows valid after "
              f"{len(parsed)} attempts", flush=True)
    return frame, report


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Generate few-shot synthetic training rows with a local causal LM.")
    parser.add_argument("--model", required=True, help="local model folder (results/models/{model}/base)")
    parser.add_argument("--train", required=True, help="official rows to draw examples from (id + fields)")
    parser.add_argument("--generator", required=True, help="generator name (used in ids)")
    parser.add_argument("--fields", nargs="+", required=True, help="columns the model writes (and examples show)")
    parser.add_argument("--label-fields", nargs="*", default=[], help="fields whose values must be training labels")
    parser.add_argument("--format", dest="fmt", choices=FORMATS, default="json")
    parser.add_argument("--template", required=True, help="user prompt; '{examples}' marks where examples go")
    parser.add_argument("--system", default=None, help="system prompt (chat models)")
    parser.add_argument("--text-template", default=None, help="task.text_template, to render `text` from the fields")
    parser.add_argument("--n-rows", type=int, required=True)
    parser.add_argument("--examples-per-prompt", type=int, default=7)
    parser.add_argument("--word-budget", type=int, default=2000)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-attempts", type=int, default=None, help="give up after this many outputs (3 x n-rows)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                        help="auto: bf16 on a GPU that supports it, fp32 on the CPU")
    parser.add_argument("--quantization", default="none", choices=QUANTIZATIONS, help="bitsandbytes weights")
    parser.add_argument("--output", required=True, help="parquet, one row per attempt")
    parser.add_argument("--report", required=True, help="json: attempts, valid, failures by reason")
    parser.add_argument("--folds", default=None, help="with --held-out-folds: the folds file")
    parser.add_argument("--held-out-folds", nargs="+", type=int, default=None,
                        help="never show rows of these folds as examples (rows for students scored on them)")
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    settings = GeneratorSettings(
        fields=args.fields, template=args.template, fmt=args.fmt, system=args.system, label_fields=args.label_fields,
        n_rows=args.n_rows, examples_per_prompt=args.examples_per_prompt, word_budget=args.word_budget,
        temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
        max_attempts=args.max_attempts, seed=args.seed, name=args.generator, text_template=args.text_template,
    )
    train = read_table(args.train)
    held_out_ids = None
    if args.held_out_folds:
        if not args.folds:
            raise OoflineError("--held-out-folds needs --folds")
        folds = read_table(args.folds)
        held_out_ids = set(folds.filter(pl.col("fold").is_in(args.held_out_folds))["id"].cast(pl.String).to_list())
    backend, why = generation_backend(args.quantization)
    print(f"generate[{args.generator} seed {args.seed}]: {backend} backend: {why}", flush=True)
    if backend == "vllm":
        from transformers import AutoTokenizer

        from workflow_scripts.modeling import resolve_model_path

        tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(args.model)[0])
        llm = load_vllm(args.model, args.precision, args.quantization)

        def sample(prompts, seed):
            return sample_completions_vllm(llm, tokenizer, [render_prompt(tokenizer, p, args.system) for p in prompts],
                                           temperature=args.temperature, top_p=args.top_p,
                                           max_new_tokens=args.max_new_tokens, seed=seed, label="generate")
    else:
        model, tokenizer = load_causal_lm(args.model, args.precision, args.quantization)

        def sample(prompts, seed):
            return sample_completions(model, tokenizer, [render_prompt(tokenizer, p, args.system) for p in prompts],
                                      temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens,
                                      seed=seed, batch_size=args.batch_size, label="generate")
    frame, report = generate_rows(train, settings, sample, held_out_ids)
    report.update({"backend": backend, "model": str(args.model), "held_out_folds": args.held_out_folds})
    write_parquet(frame, args.output)
    write_json(report, args.report)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
