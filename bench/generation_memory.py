"""Memory that generation keeps for the confidences: transformers' `output_logits` (the old path: a (batch, vocab)
fp32 tensor per generated token, then a stacked softmax of them) against `sample_completions` (one log-probability
per sampled token), on a tiny Llama with a Qwen-size vocabulary, in the same process.

    PYTHONPATH=. .venv/bin/python bench/generation_memory.py [--vocab 151936] [--rows 8] [--new-tokens 256]

Prints the bytes each path holds once generate has returned (tensors reachable from its result, the stacked
probabilities, the logits processors' state) and, on a GPU, the allocator's peak during the call; then scales both
to the AIMO recipe's answer batch (8 rows x 8,192 new tokens) by their growth per row and token.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import polars as pl
import torch


def tensor_bytes(value, seen=None) -> int:
    """Bytes of every tensor reachable from `value` (tuples, dicts, model outputs, caches, plain objects)."""
    seen = set() if seen is None else seen
    if id(value) in seen:
        return 0
    seen.add(id(value))
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(tensor_bytes(v, seen) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v, seen) for v in value)
    if hasattr(value, "__dict__") and not isinstance(value, (type, torch.nn.Module)):
        return sum(tensor_bytes(v, seen) for v in vars(value).values())
    return 0


def gpu_peak_reset(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def gpu_peak(device, before: int) -> str:
    return f"{(torch.cuda.max_memory_allocated() - before) / 2**20:,.1f} MiB" if device.type == "cuda" else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(1)

    from workflow_scripts.generated import generate as generation
    from workflow_scripts.prepare_model import materialise

    root = Path(tempfile.mkdtemp())
    pl.DataFrame({"text": ["the child felt sad after school", "there are 3 boxes with 4 apples"] * 20}).write_csv(
        root / "corpus.csv")
    model, tokenizer = generation.load_causal_lm(materialise("tiny:llama", root / "model", seed=0,
                                                             corpus=root / "corpus.csv"))
    model.resize_token_embeddings(args.vocab, mean_resizing=False)
    device = next(model.parameters()).device
    prompts = [f"there are {i} boxes with 4 apples" for i in range(args.rows)]
    settings = dict(temperature=1.0, top_p=1.0, max_new_tokens=args.new_tokens, seed=0)
    results = {}

    # the old path, as sample_completions ran it before
    encoded = {k: v.to(device) for k, v in tokenizer(prompts, return_tensors="pt", padding=True).items()}
    gpu_peak_reset(device)
    base = torch.cuda.memory_allocated() if device.type == "cuda" else 0
    with torch.no_grad():
        out = model.generate(**encoded, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                             pad_token_id=tokenizer.pad_token_id, do_sample=True, return_dict_in_generate=True,
                             output_logits=True)
    probs = torch.stack([torch.softmax(step.float(), dim=-1) for step in out.logits], dim=1)
    results["output_logits (before)"] = (tensor_bytes(out) + tensor_bytes(probs), gpu_peak(device, base))
    del out, probs

    # the new path
    kept = []
    real_generate = model.generate

    def recording(**kwargs):
        sequences = real_generate(**kwargs, min_new_tokens=args.new_tokens)  # every row the full length
        kept.append((sequences, kwargs["logits_processor"]))
        return sequences

    model.generate = recording
    gpu_peak_reset(device)
    generation.sample_completions(model, tokenizer, prompts, batch_size=args.rows, **settings)
    [(sequences, processors)] = kept
    results["sample_completions (now)"] = (tensor_bytes(sequences) + tensor_bytes(list(processors)),
                                           gpu_peak(device, base))

    print(f"tiny Llama, vocab {args.vocab:,}, {args.rows} rows x {args.new_tokens} new tokens, on {device}")
    print(f"{'path':<26} {'kept after generate':>20} {'per row x new token':>20} {'GPU peak':>12} {'AIMO 8 x 8,192':>16}")
    for name, (kept_bytes, peak) in results.items():
        per_token = kept_bytes / (args.rows * args.new_tokens)
        aimo = per_token * 8 * 8192
        print(f"{name:<26} {kept_bytes / 2**10:>16,.1f} KiB {per_token:>18,.1f} B {peak:>12} {aimo / 2**20:>12,.1f} MiB")
    before, now = results["output_logits (before)"][0], results["sample_completions (now)"][0]
    print(f"ratio before / now: {before / now:,.0f}x")


if __name__ == "__main__":
    main()
