"""Fine-tune an answering language model: causal-LM LoRA/QLoRA SFT on (problem, solution) rows.

The problem becomes the very token ids the answers step feeds the model (`sft_examples`: the answers prompt, the
chat template, `prompt_token_ids`), and the loss covers the solution tokens only. A held-out share of the rows is evaluated every `eval_every` optimizer steps
and at the end; the LoRA weights of the lowest evaluation loss are kept (the AIMO write-up's "best
checkpoint"). Output: a merged model folder (safetensors + tokenizer) that a `language_models` entry uses
as its model, with `adapter/` (the LoRA adapter) and `finetune.json` (evaluation history, best step) inside.
The merge runs after the trained model is released, in the model's precision (on the GPU when the base fits it), into the base
loaded as it was trained (4-bit bases dequantised: `modeling.merge_into_loaded_base`, as classifier merges do).

    python -m workflow_scripts.generated.finetune_lm --base results/lms/smol/base --rows sft.parquet \
        --template "Problem: {problem}" --out results/lms/smol_sft/base
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import polars as pl

from workflow_scripts.errors import OoflineError, run_cli
from workflow_scripts.io import atomic_path, read_table

IGNORE = -100  # label of prompt and padding tokens: no loss there


@dataclass(frozen=True)
class SftSettings:
    """Hyper-parameters of one fine-tune (defaults: the AIMO write-up's bs 4, 3 epochs, lr 5e-5, warmup 100)."""

    epochs: int = 3
    batch_size: int = 4
    lr: float = 5e-5
    warmup_steps: int = 100
    eval_every: int = 50
    eval_fraction: float = 0.1
    max_length: int = 1024
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    quantization: str = "none"
    precision: str = "auto"
    seed: int = 42


def split_rows(n_rows: int, eval_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, evaluation indices): a seeded shuffle, at least one row on each side."""
    if n_rows < 2:
        raise OoflineError(f"finetune: needs at least 2 rows (one to train, one to evaluate); got {n_rows}")
    order = np.random.default_rng(seed).permutation(n_rows)
    n_eval = min(n_rows - 1, max(1, int(round(n_rows * eval_fraction))))
    return np.sort(order[n_eval:]), np.sort(order[:n_eval])


def encode_example(tokenizer, prompt_ids: list[int], solution: str, max_length: int) -> tuple[list[int], list[int]]:
    """(input ids, labels): labels are IGNORE on the prompt so the loss covers the solution (and EOS) only."""
    prompt_ids = list(prompt_ids)
    solution_ids = tokenizer(solution, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        solution_ids = solution_ids + [tokenizer.eos_token_id]
    ids = (prompt_ids + solution_ids)[:max_length]
    labels = ([IGNORE] * len(prompt_ids) + solution_ids)[:max_length]
    if all(label == IGNORE for label in labels):
        raise OoflineError(f"finetune: a prompt fills all {max_length} tokens, leaving none of the solution; "
                           "raise max_length or shorten the prompt")
    return ids, labels


def sft_examples(tokenizer, problems: Sequence[str], solutions: Sequence[str], template: str, system: str | None,
                 max_length: int) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels) per row; the prompt ids are exactly what the answers step feeds the model for the problem:
    the same template filling, chat template and special tokens (`generate.prompt_token_ids`)."""
    from workflow_scripts.generated.answers import fill_template
    from workflow_scripts.generated.generate import prompt_token_ids, render_prompt

    return [encode_example(tokenizer, prompt_token_ids(tokenizer, render_prompt(tokenizer, fill_template(template, p),
                                                                                system)), s, max_length)
            for p, s in zip(problems, solutions)]


def merge_lm_adapter(base: str | Path, adapter_dir: str | Path, out_dir: str | Path, precision: str,
                     quantization: str) -> None:
    """Write the base with the adapter merged in to `out_dir` (safetensors): one copy of the base, loaded in the model's
    precision and quantized as it was trained, then dequantised (no fp32 copy in host RAM); on the job's GPU when the
    base fits its free memory in that precision, else in host memory (`execution.device.merge_placement`)."""
    from workflow_scripts.execution.device import merge_placement, torch_dtype_of
    from workflow_scripts.generated.generate import generation_device_and_precision, load_causal_lm
    from workflow_scripts.modeling import merge_into_loaded_base, weights_bytes

    device, resolved = generation_device_and_precision(precision)
    where, why = merge_placement(device, weights_bytes(base, torch_dtype_of(resolved)) if device != "cpu" else None)
    print(f"finetune: merging the adapter on {where} in {resolved}: {why}", flush=True)
    base_model, _ = load_causal_lm(base, resolved, quantization, device=where)
    merged = merge_into_loaded_base(base_model, adapter_dir, quantization, torch_dtype_of(resolved))
    merged.save_pretrained(out_dir, safe_serialization=True)


def release_memory() -> None:
    """Free what the trained model held (host and GPU) before the merge loads the base again."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def pad_examples(examples: list[tuple[list[int], list[int]]], pad_id: int):
    """Right-padded (input_ids, attention_mask, labels) tensors of one batch."""
    import torch

    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (ids, target) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(target)] = torch.tensor(target)
        mask[row, : len(ids)] = 1
    return input_ids, mask, labels


def finetune(base: str | Path, problems: list[str], solutions: list[str], template: str, settings: SftSettings,
             out: str | Path, system: str | None = None, threads: int = 0) -> dict:
    """Train, keep the best evaluation step's LoRA weights, write the merged model; returns the report."""
    import torch
    from transformers import AutoTokenizer

    from workflow_scripts.modeling import resolve_model_path

    if threads:
        torch.set_num_threads(threads)
    name, revision = resolve_model_path(base)
    tokenizer = AutoTokenizer.from_pretrained(name, revision=revision)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    examples = sft_examples(tokenizer, problems, solutions, template, system, settings.max_length)
    with atomic_path(out, durable=True) as tmp:
        report = train_adapter(base, tokenizer, examples, settings, tmp / "adapter")
        release_memory()  # the trained model is gone: the merge holds one copy of the base, not two
        merge_lm_adapter(base, tmp / "adapter", tmp, settings.precision, settings.quantization)
        tokenizer.save_pretrained(tmp)
        (tmp / "finetune.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    print(f"finetune: kept step {report['best_step']} (eval loss {report['best_eval_loss']:.4f}) -> {out}", flush=True)
    return report


def train_adapter(base: str | Path, tokenizer, examples: list[tuple[list[int], list[int]]], settings: SftSettings,
                  adapter_dir: Path) -> dict:
    """LoRA SFT on `examples`; saves the best evaluation step's adapter to `adapter_dir` and returns the report.
    Everything the training held (model, optimizer) is released when it returns."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
    from transformers import AutoModelForCausalLM, get_linear_schedule_with_warmup

    from workflow_scripts.execution.device import process_accelerator, resolve_device, resolve_precision, torch_dtype_of
    from workflow_scripts.modeling import (_disable_cpu_packed_4bit, _quantization_config, normalise_adapter_config,
                                           resolve_model_path)

    torch.manual_seed(settings.seed)
    device = resolve_device("auto")
    precision = resolve_precision(settings.precision, device)
    accelerator = process_accelerator(precision, device)
    name, revision = resolve_model_path(base)
    quantization = _quantization_config(settings.quantization, torch_dtype_of(precision))
    load_kwargs = {"revision": revision, "dtype": torch_dtype_of(precision) if device.type == "cuda" else torch.float32}
    if quantization is not None:
        load_kwargs.update(quantization_config=quantization, device_map={"": str(device)})
    model = AutoModelForCausalLM.from_pretrained(name, **load_kwargs)
    if quantization is not None and device.type == "cpu":
        _disable_cpu_packed_4bit(model)  # evaluation forwards would otherwise stop LoRA gradients on the CPU
    model = get_peft_model(model, LoraConfig(task_type=TaskType.CAUSAL_LM, r=settings.r, lora_alpha=settings.alpha,
                                             lora_dropout=settings.dropout, target_modules="all-linear"))

    train_index, eval_index = split_rows(len(examples), settings.eval_fraction, settings.seed)
    batches_per_epoch = math.ceil(len(train_index) / settings.batch_size)
    total_steps = batches_per_epoch * settings.epochs
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings.lr)
    scheduler = get_linear_schedule_with_warmup(optimizer, min(settings.warmup_steps, total_steps), total_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    def batch_loss(indices: Sequence[int]):
        input_ids, mask, labels = pad_examples([examples[i] for i in indices], tokenizer.pad_token_id)
        device_of_model = accelerator.device
        return model(input_ids=input_ids.to(device_of_model), attention_mask=mask.to(device_of_model),
                     labels=labels.to(device_of_model)).loss

    def evaluation_loss() -> float:
        model.eval()
        with torch.no_grad():
            losses = [float(batch_loss(eval_index[i: i + settings.batch_size]))
                      for i in range(0, len(eval_index), settings.batch_size)]
        model.train()
        return float(np.mean(losses))

    history, best = [], {"step": 0, "eval_loss": evaluation_loss()}
    best_weights = {k: v.detach().clone() for k, v in get_peft_model_state_dict(accelerator.unwrap_model(model)).items()}
    history.append({"step": 0, "eval_loss": best["eval_loss"]})
    print(f"finetune: {len(train_index)} training rows, {len(eval_index)} evaluation rows, {total_steps} steps; "
          f"step 0 eval loss {best['eval_loss']:.4f} on {device} in {precision}", flush=True)
    rng = np.random.default_rng(settings.seed)
    model.train()
    step = 0
    for epoch in range(settings.epochs):
        order = rng.permutation(train_index)
        for start in range(0, len(order), settings.batch_size):
            loss = batch_loss(order[start: start + settings.batch_size])
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            if step % settings.eval_every == 0 or step == total_steps:
                eval_loss = evaluation_loss()
                history.append({"step": step, "epoch": epoch, "train_loss": float(loss), "eval_loss": eval_loss})
                print(f"finetune: step {step}/{total_steps} train loss {float(loss):.4f} eval loss {eval_loss:.4f}",
                      flush=True)
                if eval_loss < best["eval_loss"]:
                    best = {"step": step, "eval_loss": eval_loss}
                    best_weights = {k: v.detach().clone() for k, v in
                                    get_peft_model_state_dict(accelerator.unwrap_model(model)).items()}

    trained = accelerator.unwrap_model(model)
    set_peft_model_state_dict(trained, best_weights)
    trained.save_pretrained(adapter_dir, safe_serialization=True)
    normalise_adapter_config(Path(adapter_dir) / "adapter_config.json")  # a rebuild is byte-identical
    accelerator.free_memory()  # the accelerator's own references to the model and optimizer
    return {"settings": asdict(settings), "train_rows": int(len(train_index)), "eval_rows": int(len(eval_index)),
            "steps": step, "best_step": best["step"], "best_eval_loss": best["eval_loss"], "history": history,
            "device": str(device), "precision": precision}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the base language model folder")
    parser.add_argument("--rows", required=True, help="training rows with problem and solution columns")
    parser.add_argument("--problem-column", default="problem")
    parser.add_argument("--solution-column", default="solution")
    parser.add_argument("--template", required=True, help="the answers prompt with {problem}")
    parser.add_argument("--system", default=None)
    parser.add_argument("--settings", default="{}", help="JSON of SftSettings fields")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    try:
        settings = SftSettings(**json.loads(args.settings))
    except TypeError as error:
        raise OoflineError(f"finetune: {error}") from error
    if "{problem}" not in args.template:
        raise OoflineError("finetune: the prompt template must contain '{problem}'")
    rows = read_table(args.rows)
    missing = [c for c in (args.problem_column, args.solution_column) if c not in rows.columns]
    if missing:
        raise OoflineError(f"{args.rows}: missing column(s) {missing} (finetune.problem_column / solution_column)")
    rows = rows.filter(pl.col(args.problem_column).is_not_null() & pl.col(args.solution_column).is_not_null())
    finetune(args.base, rows[args.problem_column].cast(pl.String).to_list(),
             rows[args.solution_column].cast(pl.String).to_list(), args.template, settings, args.out,
             system=args.system, threads=args.threads)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
