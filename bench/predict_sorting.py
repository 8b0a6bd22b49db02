"""Inference samples/s of MiniLM on the movies demo's real text with workflow_scripts.predict: length-sorted
batches + dynamic padding (what the predict rule does) vs unsorted batches padded to max_length 256 and
unsorted batches with dynamic padding. Variants run interleaved (a, b, c, a, b, c, ...); medians are
compared. Every variant's probabilities, in the original row order, must match within 1e-5.

    PYTHONPATH=. .venv/bin/python bench/predict_sorting.py [--rows 400] [--repeats 3] [--threads 1] [--texts demo]

The tokens each variant pushes through the model (padding included) are printed: they bound the speed-up.
--texts corpus draws the rows from the unfiltered Rotten Tomatoes corpus (the demo keeps 4-60 word
snippets; the corpus has long plot summaries too), to show how the ratios grow with a longer tail.

Targets: sorted >= 6x unsorted padded to 256, >= 4x unsorted dynamic.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from movies_rates import add_movies_bench_arguments, movies_rows, rate_summary  # noqa: E402

# name -> (sort_by_length, pad_to max_length?)
VARIANTS = {"unsorted_pad_to_max": (False, True), "unsorted_dynamic": (False, False), "sorted_dynamic": (True, False)}
TOLERANCE = 1e-5


def run(rows: int = 400, batch_size: int = 32, max_length: int = 256, repeats: int = 3, threads: int = 1,
        model_dir: str | None = None, seed: int = 0, texts: str = "demo", log=print) -> dict:
    """Median samples/s per variant, the ratios of sorted_dynamic to the others, and the largest
    probability difference between variants (original row order)."""
    import torch
    import transformers

    from workflow_scripts.prepare_model import materialise

    torch.set_num_threads(threads)
    transformers.logging.set_verbosity_error()
    if model_dir is not None:
        return _run(rows, batch_size, max_length, repeats, threads, model_dir, seed, texts, log)
    with tempfile.TemporaryDirectory(prefix="bench_minilm_") as tmp:
        model_dir = str(materialise("packaged:minilm", Path(tmp) / "base"))
        return _run(rows, batch_size, max_length, repeats, threads, model_dir, seed, texts, log)


def _run(rows, batch_size, max_length, repeats, threads, model_dir, seed, text_source, log) -> dict:
    from workflow_scripts import modeling
    from workflow_scripts.predict import predict_probabilities

    from workflow_scripts.batching import sorted_batches

    texts, _, spec = movies_rows(rows, seed, text_source)
    tokenizer = modeling.load_tokenizer(model_dir)
    lengths = np.array([len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]])
    log(f"{rows} {text_source} rows, MiniLM tokens: median {np.median(lengths):.0f}, "
        f"p90 {np.percentile(lengths, 90):.0f}, max {lengths.max()} (max_length {max_length}); batch {batch_size}; "
        f"{threads} torch thread(s)")
    in_order = [np.arange(i, min(i + batch_size, rows)) for i in range(0, rows, batch_size)]
    tokens = {"unsorted_pad_to_max": float(rows * max_length),
              "unsorted_dynamic": float(sum(len(b) * lengths[b].max() for b in in_order)),
              "sorted_dynamic": float(sum(len(b) * lengths[b].max() for b in sorted_batches(lengths, batch_size)))}
    log("tokens incl. padding: " + ", ".join(f"{v} {t:.0f}" for v, t in tokens.items())
        + f" (real {lengths.sum()}); token ratios padded/sorted {tokens['unsorted_pad_to_max'] / tokens['sorted_dynamic']:.2f}"
        f", unsorted/sorted {tokens['unsorted_dynamic'] / tokens['sorted_dynamic']:.2f}")
    # a fresh seeded head on the packaged encoder: the probabilities differ per row, which is all the check needs
    model = modeling.load_classifier(model_dir, num_labels=len(spec.probability_columns), kind="encoder_full", seed=seed)
    model.eval()

    def predict(variant: str, subset: list[str]) -> np.ndarray:
        sort_by_length, pad_to_max = VARIANTS[variant]
        with contextlib.redirect_stdout(io.StringIO()):  # predict's progress lines
            return predict_probabilities(model, tokenizer, subset, spec, max_length, batch_size,
                                         sort_by_length=sort_by_length, pad_to=max_length if pad_to_max else None)

    for variant in VARIANTS:  # warm-up, not timed
        predict(variant, texts[:batch_size])
    rates: dict[str, list[float]] = {v: [] for v in VARIANTS}
    cpu_rates: dict[str, list[float]] = {v: [] for v in VARIANTS}
    outputs: dict[str, np.ndarray] = {}
    for repeat in range(repeats):
        for variant in VARIANTS:
            started, cpu_started = time.perf_counter(), time.process_time()
            probabilities = predict(variant, texts)
            rates[variant].append(len(texts) / (time.perf_counter() - started))
            # with one torch thread, CPU seconds are what the run costs on an idle machine
            cpu_rates[variant].append(len(texts) / (time.process_time() - cpu_started))
            outputs.setdefault(variant, probabilities)
            log(f"  repeat {repeat + 1}/{repeats} {variant:20s} {rates[variant][-1]:7.1f} samples/s wall, "
                f"{cpu_rates[variant][-1]:7.1f} per CPU s")
    reference = outputs["unsorted_pad_to_max"]
    max_difference = max(float(np.abs(outputs[v] - reference).max()) for v in VARIANTS)
    return {
        "rows": rows, "batch_size": batch_size, "max_length": max_length, "threads": threads, "repeats": repeats,
        "texts": text_source, "tokens": tokens, "max_abs_difference": max_difference,
        **rate_summary(rates, cpu_rates, "sorted_dynamic",
                       {"pad_to_max": "unsorted_pad_to_max", "unsorted_dynamic": "unsorted_dynamic"}),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=400, help="demo rows predicted by every variant")
    parser.add_argument("--batch-size", type=int, default=32, help="predict batch (the rule uses 2x batch_size)")
    add_movies_bench_arguments(parser)
    args = parser.parse_args(argv)
    result = run(args.rows, args.batch_size, args.max_length, args.repeats, args.threads, args.model,
                 texts=args.texts, log=lambda line: print(line, flush=True))
    m = result["medians"]
    print(f"median samples/s: unsorted pad to {args.max_length} {m['unsorted_pad_to_max']:.1f} | unsorted dynamic "
          f"{m['unsorted_dynamic']:.1f} | sorted dynamic {m['sorted_dynamic']:.1f}")
    print(f"sorted/padded = {result['ratio_vs_pad_to_max']:.2f}x (target >= 6)   "
          f"sorted/unsorted dynamic = {result['ratio_vs_unsorted_dynamic']:.2f}x (target >= 4)")
    c = result["cpu_medians"]
    print(f"median samples per CPU second: padded {c['unsorted_pad_to_max']:.1f} | unsorted dynamic "
          f"{c['unsorted_dynamic']:.1f} | sorted {c['sorted_dynamic']:.1f}; sorted/padded = "
          f"{result['cpu_ratio_vs_pad_to_max']:.2f}x   sorted/unsorted dynamic = {result['cpu_ratio_vs_unsorted_dynamic']:.2f}x")
    print(f"median of per-repeat ratios: sorted/padded = {result['paired_ratio_vs_pad_to_max']:.2f}x   "
          f"sorted/unsorted dynamic = {result['paired_ratio_vs_unsorted_dynamic']:.2f}x")
    print(f"max |probability difference| between variants, original order: {result['max_abs_difference']:.2e} "
          f"(must be <= {TOLERANCE:g})")
    if result["max_abs_difference"] > TOLERANCE:
        print("FAIL: predictions differ between batching variants", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
