"""Sample chain-of-thought answers (task type `generative`): problems x samples for one model and one prompt.

Output `results/answers/{model}/{prompt}.parquet`: `id`, `sample` (0..samples-1), `prompt`, `text` (the completion),
`answer` (string, null when none was found), `confidence`, `n_tokens`.
- Answer extraction: with --answer-regex, the first capture group (or the whole match) of its last match; by
  default the number inside the last `\\boxed{...}`, else the last number in the text. Integer-valued numbers are
  written as plain integers ('1,000' and '1000.0' -> '1000').
- Confidence: the mean probability the model itself gave (at temperature 1, before top-p) to the tokens that spell
  the answer; null when there is no answer.
Sampling is seeded per problem: a problem's samples are generated in batches of `batch_size` copies of its own
prompt (no padding, no other problem in the batch), batch j seeded with (seed, problem id, j) (`problem_seed`);
with vLLM, sample k with (seed, problem id, k). So a problem's answers do not depend on which problems are answered
with it or in what order: a Kaggle package's notebook answering the hidden test one problem at a time samples what
this step sampled (same seed, batch size, model, precision and device).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import time
from typing import Sequence

import polars as pl

from workflow_scripts.errors import OoflineError, run_cli
from workflow_scripts.execution.device import PRECISIONS
from workflow_scripts.generated.generate import (Completion, generation_backend, load_causal_lm, load_vllm, render_prompt,
                                                 sample_completions, sample_completions_vllm)
from workflow_scripts.io import read_table, write_parquet
from workflow_scripts.modeling import QUANTIZATIONS
from workflow_scripts.generated.voting import canonical_answer

PROMPTS = {
    "cot_boxed": "Solve the following problem step by step. Put the final integer answer inside \\boxed{{}}.\n\n"
                 "Problem: {problem}",
    "cot_final": "Solve the following problem. Think step by step, then finish with a line "
                 "'The answer is N.' where N is an integer.\n\nProblem: {problem}",
    "direct": "Answer the following problem with a single integer and nothing else.\n\nProblem: {problem}\nAnswer:",
}
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def extract_answer(text: str, pattern: str | None = None) -> tuple[str | None, tuple[int, int] | None]:
    """(canonical answer, (start, end) character span of it in `text`), or (None, None)."""
    if pattern:
        matches = list(re.finditer(pattern, text))
        if not matches:
            return None, None
        last = matches[-1]
        group = 1 if last.re.groups else 0
        return canonical_answer(last.group(group)), last.span(group)
    boxed = list(BOXED.finditer(text))
    if boxed:
        inner = boxed[-1]
        number = list(NUMBER.finditer(inner.group(1)))
        if number:
            start = inner.start(1) + number[-1].start()
            return canonical_answer(number[-1].group()), (start, start + len(number[-1].group()))
        if inner.group(1).strip():
            return canonical_answer(inner.group(1)), inner.span(1)
    numbers = list(NUMBER.finditer(text))
    if numbers:
        return canonical_answer(numbers[-1].group().rstrip(",")), numbers[-1].span()
    return None, None


def answer_confidence(tokenizer, completion: Completion, span: tuple[int, int]) -> float:
    """Mean model probability of the generated tokens overlapping the character span [start, end) of the text."""
    ids, probs = completion.token_ids, completion.token_probs
    if not probs:
        raise OoflineError("answers: the sampler returned no token probabilities (needed for confidence)")
    cache: dict[int, int] = {}

    def end_of(i: int) -> int:  # characters decoded after tokens 0..i (monotone up to byte-merging quirks)
        if i not in cache:
            cache[i] = len(tokenizer.decode(ids[: i + 1], skip_special_tokens=True))
        return cache[i]

    def first_token_ending_after(position: int) -> int:
        lo, hi = 0, len(ids) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if end_of(mid) > position:
                hi = mid
            else:
                lo = mid + 1
        return lo

    start, end = span
    first = first_token_ending_after(start)
    last = max(first, first_token_ending_after(end - 1))
    chosen = probs[first : last + 1]
    return float(sum(chosen) / len(chosen)) if chosen else float(sum(probs) / len(probs))


def keyword_categories(problems: pl.Series, keywords: Sequence[tuple[str, Sequence[str]]]) -> list[str | None]:
    """Each problem's category from its own text: the first category (in the given order) with a keyword that
    starts a word of the problem, case-insensitively (`triangle` matches "Triangles"); None when none does."""
    patterns = [(category, re.compile(r"\b(?:" + "|".join(re.escape(word) for word in words) + ")", re.IGNORECASE))
                for category, words in keywords if words]
    return [next((category for category, pattern in patterns if pattern.search(str(text))), None)
            for text in problems.to_list()]


def problem_prompts(problems: pl.DataFrame, problem_column: str, template: str | None, category_column: str | None = None,
                    category_templates: dict[str, str] | None = None, prompt_name: str = "prompt",
                    category_keywords: Sequence[tuple[str, Sequence[str]]] | None = None) -> list[str]:
    """One user prompt per problem: the template of its category (the AIMO write-up's templates by category),
    else `template`; a category with neither is an error naming it. The category is a problems column
    (`category_column`) or found from keywords in the problem text (`category_keywords`: the competition's test
    has only id and problem)."""
    category_templates = category_templates or {}
    if category_keywords:
        categories = keyword_categories(problems[problem_column], category_keywords)
    elif category_templates:
        if not category_column or category_column not in problems.columns:
            raise OoflineError(f"answers: prompt {prompt_name!r} picks templates by column {category_column!r}, "
                               f"which the problems file lacks (has {problems.columns})")
        categories = problems[category_column].cast(pl.String).to_list()
    else:
        categories = [None] * problems.height
    prompts = []
    for problem, category in zip(problems[problem_column].to_list(), categories):
        chosen = category_templates.get(category, template) if category is not None else template
        if chosen is None:
            raise OoflineError(f"answers: prompt {prompt_name!r} has no template for category {category!r} and no "
                               "default (add it under templates, or a `default` template)")
        prompts.append(fill_template(chosen, problem))
    return prompts


def fill_template(template: str, problem) -> str:
    """The user prompt of one problem (answering and fine-tuning alike): `{problem}` filled, `{{}}` written `{}`."""
    return template.replace("{{}}", "{}").replace("{problem}", str(problem))


def problem_seed(seed: int, problem_id: object, batch: int) -> int:
    """The sampling seed of a problem's batch (or, with vLLM, sample) `batch`: it depends only on the run's seed,
    the problem's id and the batch's index."""
    digest = hashlib.sha256(f"{seed}\0{problem_id}\0{batch}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def sample_batches(samples: int, batch_size: int) -> list[int]:
    """The sizes of a problem's batches of samples: batch_size each, the last one the rest."""
    return [min(batch_size, samples - start) for start in range(0, samples, batch_size)]


def sample_problem(generate, prompt: str, problem_id: object, samples: int, batch_size: int, seed: int,
                   until: float | None = None) -> list:
    """A problem's completions: `generate(prompts, seed)` on each batch of copies of its prompt, seeded by
    `problem_seed`; with `until` (a time.time() deadline) a batch after the first starts only before it."""
    completions = []
    for batch, size in enumerate(sample_batches(samples, batch_size)):
        if batch and until is not None and time.time() >= until:
            break
        completions += generate([prompt] * size, problem_seed(seed, problem_id, batch))
    return completions


def answer_rows(problems: pl.DataFrame, completions: Sequence[Completion], samples: int, prompt_name: str,
                tokenizer, pattern: str | None) -> pl.DataFrame:
    """The answers table for completions ordered sample-major (all problems for sample 0, then sample 1, ...)."""
    ids = problems["id"].to_list()
    rows = {"id": [], "sample": [], "prompt": [], "text": [], "answer": [], "confidence": [], "n_tokens": []}
    for k, completion in enumerate(completions):
        answer, span = extract_answer(completion.text, pattern)
        rows["id"].append(ids[k % len(ids)])
        rows["sample"].append(k // len(ids))
        rows["prompt"].append(prompt_name)
        rows["text"].append(completion.text)
        rows["answer"].append(answer)
        rows["confidence"].append(answer_confidence(tokenizer, completion, span) if answer is not None else None)
        rows["n_tokens"].append(len(completion.token_ids))
    frame = pl.DataFrame(rows, schema={"id": problems.schema["id"], "sample": pl.Int64, "prompt": pl.String,
                                       "text": pl.String, "answer": pl.String, "confidence": pl.Float64,
                                       "n_tokens": pl.Int64})
    return frame.sort(["id", "sample"])


def argument_parser() -> argparse.ArgumentParser:
    """The step's arguments (a Kaggle package's notebook parses the step's flags with it, so both read them alike)."""
    parser = argparse.ArgumentParser(description="Sample answers from a causal LM: problems x samples for one prompt.")
    parser.add_argument("--model", required=True, help="local model folder")
    parser.add_argument("--problems", required=True, help="problems file (id + --problem-column)")
    parser.add_argument("--problem-column", default="problem")
    parser.add_argument("--prompt-name", required=True, help="built-in prompt (%s) or a name for --template" % ", ".join(PROMPTS))
    parser.add_argument("--template", default=None, help="custom prompt with '{problem}' (overrides the built-in)")
    parser.add_argument("--system", default=None)
    parser.add_argument("--category-column", default=None, help="problem column that picks a template per problem")
    parser.add_argument("--category-templates", default=None,
                        help="JSON: category -> template with '{problem}'; --template serves unlisted categories")
    parser.add_argument("--category-keywords", default=None,
                        help="JSON list of [category, [keyword, ...]]: a problem's category is the first whose keyword "
                             "starts a word of its text (instead of --category-column)")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--answer-regex", default=None, help="regex; its first group (or match) is the answer")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N problems (demo on a CPU)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                        help="auto: bf16 on a GPU that supports it, fp32 on the CPU")
    parser.add_argument("--quantization", default="none", choices=QUANTIZATIONS, help="bitsandbytes weights")
    parser.add_argument("--output", required=True)
    return parser


def prompt_settings(args: argparse.Namespace) -> tuple[str | None, dict[str, str]]:
    """(template, category templates) of the step's arguments, checked: one line naming a bad prompt or regex."""
    category_templates = json.loads(args.category_templates) if args.category_templates else {}
    template = args.template or PROMPTS.get(args.prompt_name)
    if template is None and not category_templates:
        raise OoflineError(f"answers: prompt {args.prompt_name!r} is not built in ({', '.join(PROMPTS)}); pass --template")
    for name, text in ([("template", template)] if template else []) + sorted(category_templates.items()):
        if "{problem}" not in text:
            raise OoflineError(f"answers: the prompt template {name!r} of {args.prompt_name!r} must contain '{{problem}}'")
    if args.answer_regex:
        try:
            re.compile(args.answer_regex)
        except re.error as error:
            raise OoflineError(f"answers: answer_regex {args.answer_regex!r} is not a valid regex: {error}") from error
    if args.samples < 1:
        raise OoflineError(f"answers: samples must be >= 1; got {args.samples}")
    return template, category_templates


def main(argv: Sequence[str] | None = None) -> None:
    args = argument_parser().parse_args(argv)
    template, category_templates = prompt_settings(args)
    problems = read_table(args.problems)
    missing = [c for c in ("id", args.problem_column) if c not in problems.columns]
    if missing:
        raise OoflineError(f"{args.problems}: missing column(s) {missing} (has {problems.columns})")
    if args.limit:
        problems = problems.head(args.limit)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    keywords = [(category, words) for category, words in json.loads(args.category_keywords)] if args.category_keywords else None
    user_prompts = problem_prompts(problems, args.problem_column, template, args.category_column, category_templates,
                                   args.prompt_name, keywords)
    settings = dict(temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens,
                    label=f"answers[{args.prompt_name}]")
    backend, why = generation_backend(args.quantization)
    print(f"answers[{args.prompt_name}]: {backend} backend: {why}", flush=True)
    ids = problems["id"].to_list()
    if backend == "vllm":
        from transformers import AutoTokenizer

        from workflow_scripts.modeling import resolve_model_path

        tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(args.model)[0])
        prompts = [render_prompt(tokenizer, p, args.system) for p in user_prompts] * args.samples
        seeds = [problem_seed(args.seed, problem_id, k) for k in range(args.samples) for problem_id in ids]
        completions = sample_completions_vllm(load_vllm(args.model, args.precision, args.quantization), tokenizer, prompts,
                                              seed=args.seed, seeds=seeds, **settings)
    else:
        model, tokenizer = load_causal_lm(args.model, args.precision, args.quantization)

        def generate(prompts, seed):
            return sample_completions(model, tokenizer, prompts, batch_size=len(prompts), seed=seed, **settings)

        per_problem = [sample_problem(generate, render_prompt(tokenizer, prompt, args.system), problem_id, args.samples,
                                      args.batch_size, args.seed) for problem_id, prompt in zip(ids, user_prompts)]
        # sample-major, as answer_rows reads them
        completions = [per_problem[p][k] for k in range(args.samples) for p in range(len(ids))]
    frame = answer_rows(problems, completions, args.samples, args.prompt_name, tokenizer, args.answer_regex)
    write_parquet(frame, args.output)
    answered = frame["answer"].is_not_null().sum()
    message = f"answers[{args.prompt_name}]: {answered}/{frame.height} samples have an answer"
    if "answer" in problems.columns:
        gold = dict(zip(problems["id"].to_list(), [canonical_answer(a) for a in problems["answer"].to_list()]))
        correct = sum(1 for i, a in frame.select("id", "answer").iter_rows() if a is not None and a == gold.get(i))
        message += f", {correct} correct"
    print(message, flush=True)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
