"""QLoRA on the CPU: training samples/s of 4-bit and 8-bit LoRA vs full-precision LoRA (same model, data),
and the eval cost of keeping bitsandbytes' exact fp32 4-bit path (modeling._disable_cpu_packed_4bit) vs
its packed bf16 kernel (which stops gradients after an eval pass).

    .venv/bin/python bench/qlora_cpu.py [--model DIR] [--rows 64] [--max-length 64]
Without --model a tiny llama is built from the demo text (seconds). Single thread.
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import time

import torch


def train_rate(model, batches, labels) -> float:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    model(**batches[0], labels=labels[0]).loss.backward()  # warm-up (kernel selection, lazy init)
    optimizer.zero_grad()
    started, rows = time.perf_counter(), 0
    for batch, label in zip(batches, labels):
        model(**batch, labels=label).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        rows += len(label)
    return rows / (time.perf_counter() - started)


def eval_rate(model, batches) -> float:
    model.eval()
    with torch.no_grad():
        model(**batches[0])
        started, rows = time.perf_counter(), 0
        for batch in batches:
            model(**batch)
            rows += batch["input_ids"].shape[0]
    return rows / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None)
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    import transformers

    transformers.logging.set_verbosity_error()
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    from workflow_scripts import modeling, prepare_model

    texts = prepare_model.demo_texts()[: args.rows]
    path = args.model
    if path is None:
        path = prepare_model.materialise("tiny:llama", tempfile.mkdtemp() + "/tiny", seed=0)
    tokenizer = modeling.load_tokenizer(path)
    batches = [tokenizer(texts[i:i + args.batch_size], padding=True, truncation=True, max_length=args.max_length,
                         return_tensors="pt") for i in range(0, len(texts), args.batch_size)]
    labels = [torch.arange(b["input_ids"].shape[0]) % 3 for b in batches]
    lora = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"}

    rates = {}
    for quantization in ("none", "4bit", "8bit"):
        model = modeling.load_classifier(path, 3, "decoder_lora", quantization, lora, seed=0)
        rates[quantization] = train_rate(model, batches, labels)
        if quantization == "4bit":
            rates["eval_4bit_exact"] = eval_rate(model, batches)
            import bitsandbytes as bnb

            packed = modeling.load_classifier(path, 3, "decoder_lora", "4bit", lora, seed=0)
            for module in packed.modules():
                if isinstance(module, bnb.nn.Linear4bit):
                    module.support_avx512bf16_for_cpu = bnb.nn.Linear4bit(2, 2).support_avx512bf16_for_cpu
            rates["eval_4bit_packed"] = eval_rate(packed, batches)
    print(f"model {path}, {args.rows} rows, batch {args.batch_size}, max_length {args.max_length}, 1 thread")
    for name, rate in rates.items():
        print(f"  {name:18s} {rate:8.1f} samples/s")
    print(f"train 4bit / none: {rates['4bit'] / rates['none']:.2f}x   8bit / none: {rates['8bit'] / rates['none']:.2f}x")
    print(f"eval 4bit exact fp32 path / packed bf16 kernel: {rates['eval_4bit_exact'] / rates['eval_4bit_packed']:.2f}x")


if __name__ == "__main__":
    main()
