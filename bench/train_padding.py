"""Training samples/s of MiniLM on the movies demo's real lengths: length-grouped batches + dynamic padding
(what train.py does) vs (a) padding every batch to max_length and (b) random batches + dynamic padding
(the Hugging Face default). Same model, rows and training step (forward + combined_loss + backward +
clip + AdamW, as in workflow_scripts.train); variants run interleaved (a, b, c, a, b, c, ...) and the
medians are compared, so load from other processes hits every variant alike.

    PYTHONPATH=. .venv/bin/python bench/train_padding.py [--rows 400] [--batches 8] [--repeats 3] [--threads 1]

--rows 400 is one training fold of the demo config (600 rows, 3 folds), so the grouping sees the lengths
train.py sees. --batches K times K batches drawn at random from each variant's epoch (K * batch_size
samples for every variant; an unbiased estimate of the epoch's rate, without paying for a whole epoch
padded to 256 on a shared CPU); --batches 0 times the whole epoch. The token count each variant's whole
epoch pushes through the model is printed too: it bounds the speed-up batching alone can give.
--texts corpus draws the rows from the unfiltered Rotten Tomatoes corpus (the demo keeps 4-60 word
snippets; the corpus has long plot summaries too), to show how the ratios grow with a longer tail.

Targets: grouped >= 5x (a) and >= 2x (b).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from movies_rates import add_movies_bench_arguments, movies_rows, rate_summary  # noqa: E402

VARIANTS = ("pad_to_max", "random_dynamic", "grouped_dynamic")


def variant_batches(variant: str, lengths: np.ndarray, batch_size: int, seed: int) -> list[np.ndarray]:
    from workflow_scripts.batching import length_grouped_batches, random_batches

    if variant == "grouped_dynamic":
        return length_grouped_batches(lengths, batch_size, seed)
    return random_batches(len(lengths), batch_size, seed)


def train_epoch(model, optimizer, token_ids, targets, spec, batches, pad_id, pad_to) -> tuple[float, float]:
    """One pass of the real training step over `batches`; returns (samples per wall second, per CPU second).

    With one torch thread, CPU seconds are what the run costs on an idle machine, whatever else runs beside it."""
    import torch

    from workflow_scripts.batching import pad_batch
    from workflow_scripts.losses import combined_loss

    trainable = [p for p in model.parameters() if p.requires_grad]
    target_tensor = torch.from_numpy(targets)
    started, cpu_started, seen = time.perf_counter(), time.process_time(), 0
    for rows in batches:
        inputs = pad_batch(token_ids, rows, pad_id, pad_to=pad_to)
        loss = combined_loss(model(**inputs).logits, target_tensor[rows], spec)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seen += len(rows)
    return seen / (time.perf_counter() - started), seen / (time.process_time() - cpu_started)


def run(rows: int = 400, batches: int = 8, batch_size: int = 16, max_length: int = 256, repeats: int = 3,
        threads: int = 1, model_dir: str | None = None, seed: int = 0, texts: str = "demo", log=print) -> dict:
    """Median samples/s per variant and the ratios of grouped_dynamic to the two baselines."""
    import torch
    import transformers

    from workflow_scripts.prepare_model import materialise

    torch.set_num_threads(threads)
    transformers.logging.set_verbosity_error()
    if model_dir is not None:
        return _run(rows, batches, batch_size, max_length, repeats, threads, model_dir, seed, texts, log)
    with tempfile.TemporaryDirectory(prefix="bench_minilm_") as tmp:
        model_dir = str(materialise("packaged:minilm", Path(tmp) / "base"))
        return _run(rows, batches, batch_size, max_length, repeats, threads, model_dir, seed, texts, log)


def _run(rows, n_batches, batch_size, max_length, repeats, threads, model_dir, seed, text_source, log) -> dict:
    import torch

    from workflow_scripts import modeling

    texts, train, spec = movies_rows(rows, seed, text_source)
    targets = spec.targets(train)
    tokenizer = modeling.load_tokenizer(model_dir)
    token_ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    lengths = np.array([len(ids) for ids in token_ids])
    epoch_tokens = {}  # tokens (padding included) one whole epoch feeds the model, mean over the repeats' seeds
    for variant in VARIANTS:
        widths = [[len(b) * (max_length if variant == "pad_to_max" else int(lengths[b].max()))
                   for b in variant_batches(variant, lengths, batch_size, seed + r)] for r in range(repeats)]
        epoch_tokens[variant] = float(np.mean([sum(w) for w in widths]))
    log(f"{rows} {text_source} rows, MiniLM tokens: median {np.median(lengths):.0f}, "
        f"p90 {np.percentile(lengths, 90):.0f}, max {lengths.max()} (max_length {max_length}); batch {batch_size}; {threads} torch thread(s)")
    grouped = epoch_tokens["grouped_dynamic"]
    log("tokens per epoch incl. padding: " + ", ".join(f"{v} {t:.0f}" for v, t in epoch_tokens.items())
        + f" (real {lengths.sum()}); token ratios (a)/(c) {epoch_tokens['pad_to_max'] / grouped:.2f}, "
        f"(b)/(c) {epoch_tokens['random_dynamic'] / grouped:.2f}")
    model = modeling.load_classifier(model_dir, num_labels=len(spec.probability_columns), kind="encoder_full", seed=seed)
    model.train()
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    pad_id = tokenizer.pad_token_id

    def fresh_optimizer():
        model.load_state_dict(initial)  # every run starts from the same weights
        return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-5)

    # warm-up (allocator, kernel selection): one full-width and one short batch, not timed
    warm = variant_batches("random_dynamic", lengths, batch_size, seed)[:1]
    train_epoch(model, fresh_optimizer(), token_ids, targets, spec, warm, pad_id, max_length)
    train_epoch(model, fresh_optimizer(), token_ids, targets, spec, warm, pad_id, None)

    rates: dict[str, list[float]] = {v: [] for v in VARIANTS}
    cpu_rates: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for repeat in range(repeats):
        for variant in VARIANTS:
            batches = variant_batches(variant, lengths, batch_size, seed + repeat)
            if n_batches and n_batches < len(batches):
                picked = np.random.default_rng(seed + 1000 * repeat).choice(len(batches), n_batches, replace=False)
                batches = [batches[i] for i in sorted(picked)]
            pad_to = max_length if variant == "pad_to_max" else None
            padded = sum(len(b) * (pad_to or int(lengths[b].max())) for b in batches)
            real = sum(int(lengths[b].sum()) for b in batches)
            rate, cpu_rate = train_epoch(model, fresh_optimizer(), token_ids, targets, spec, batches, pad_id, pad_to)
            rates[variant].append(rate)
            cpu_rates[variant].append(cpu_rate)
            log(f"  repeat {repeat + 1}/{repeats} {variant:16s} {rate:7.1f} samples/s wall, {cpu_rate:7.1f} per CPU s "
                f"(padding {1 - real / padded:.0%} of tokens)")
    return {
        "rows": rows, "batches": n_batches, "batch_size": batch_size, "max_length": max_length, "threads": threads,
        "repeats": repeats, "texts": text_source, "median_tokens": float(np.median(lengths)),
        "epoch_tokens": epoch_tokens,
        **rate_summary(rates, cpu_rates, "grouped_dynamic",
                       {"pad_to_max": "pad_to_max", "random_dynamic": "random_dynamic"}),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=400, help="demo rows the batches are drawn from")
    parser.add_argument("--batches", type=int, default=8, help="timed batches per run (0: the whole epoch)")
    parser.add_argument("--batch-size", type=int, default=16)
    add_movies_bench_arguments(parser)
    args = parser.parse_args(argv)
    result = run(args.rows, args.batches, args.batch_size, args.max_length, args.repeats, args.threads, args.model,
                 texts=args.texts, log=lambda line: print(line, flush=True))
    m = result["medians"]
    print(f"median samples/s: (a) pad to {args.max_length} {m['pad_to_max']:.1f} | (b) random + dynamic "
          f"{m['random_dynamic']:.1f} | (c) grouped + dynamic {m['grouped_dynamic']:.1f}")
    print(f"(c)/(a) = {result['ratio_vs_pad_to_max']:.2f}x (target >= 5)   "
          f"(c)/(b) = {result['ratio_vs_random_dynamic']:.2f}x (target >= 2)")
    c = result["cpu_medians"]
    print(f"median samples per CPU second: (a) {c['pad_to_max']:.1f} | (b) {c['random_dynamic']:.1f} | "
          f"(c) {c['grouped_dynamic']:.1f}; (c)/(a) = {result['cpu_ratio_vs_pad_to_max']:.2f}x   "
          f"(c)/(b) = {result['cpu_ratio_vs_random_dynamic']:.2f}x")
    print(f"median of per-repeat ratios: (c)/(a) = {result['paired_ratio_vs_pad_to_max']:.2f}x   "
          f"(c)/(b) = {result['paired_ratio_vs_random_dynamic']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
