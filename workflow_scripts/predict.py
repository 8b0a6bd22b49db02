"""Predict class probabilities with one trained fold model: its held-out rows and the test set.

Rows are sorted by length into batches (little padding), then returned in their original order.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import polars as pl

from workflow_scripts.errors import OoflineError, run_cli
from workflow_scripts.io import read_table, write_inference_speed, write_parquet
from workflow_scripts.labels import LabelSpec
from workflow_scripts.model_spec import ModelSpec


def predict_probabilities(model, tokenizer, texts: list[str], spec: LabelSpec, max_length: int,
                          batch_size: int, sort_by_length: bool = True, pad_to: int | None = None,
                          label: str = "predict", precision: str = "fp32", stats: dict | None = None) -> np.ndarray:
    """Probabilities (n_rows, n_columns) float32 in the input order.

    Batches go to wherever the model's inputs live; `precision` (resolved: bf16 | fp16 | fp32) is the
    autocast dtype of the forward, the probabilities are taken in float32. `stats`, when given, gets the
    rows, tokens (after truncation) and seconds of the pass."""
    import contextlib

    import torch

    from workflow_scripts.batching import pad_batch, sorted_batches
    from workflow_scripts.execution.device import torch_dtype_of
    from workflow_scripts.losses import head_probabilities
    from workflow_scripts.modeling import model_input_device

    token_ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    lengths = np.array([len(ids) for ids in token_ids])
    if sort_by_length:
        batches = sorted_batches(lengths, batch_size)
    else:
        batches = [np.arange(i, min(i + batch_size, len(texts))) for i in range(0, len(texts), batch_size)]
    probabilities = np.zeros((len(texts), len(spec.probability_columns)), dtype=np.float32)
    model.eval()
    device = model_input_device(model)
    autocast = (torch.autocast(device.type, dtype=torch_dtype_of(precision)) if precision != "fp32"
                else contextlib.nullcontext())
    started, started_cpu = time.time(), time.process_time()
    with torch.inference_mode(), autocast:
        for number, rows in enumerate(batches, start=1):
            inputs = pad_batch(token_ids, rows, tokenizer.pad_token_id, pad_to=pad_to)
            logits = model(**{name: tensor.to(device) for name, tensor in inputs.items()}).logits
            probabilities[rows] = head_probabilities(logits.float(), spec).cpu().numpy()
            if number % 20 == 0 or number == len(batches):
                done = sum(len(b) for b in batches[:number])
                print(f"{label}: batch {number}/{len(batches)} {done / max(1e-9, time.time() - started):.1f} rows/s",
                      flush=True)
    if stats is not None:
        stats.update(rows=len(texts), tokens=int(lengths.sum()), seconds=round(time.time() - started, 4),
                     cpu_seconds=round(time.process_time() - started_cpu, 4))
    return probabilities


LORA_KINDS = ("encoder_lora", "decoder_lora")


def load_trained(model_dir: str, base: str, model_spec: ModelSpec | dict[str, Any], num_labels: int,
                 device: Any = "cpu", precision: str = "fp32"):
    """A trained fold model and its tokenizer on `device`: base + adapter for LoRA kinds (the frozen base
    in the precision's dtype and quantized, as in training); a LoRA member's merged model the same way (in the
    precision's dtype, quantized as the member was trained: a merged QLoRA 7B stays 4-bit); a full fine-tune's
    saved model otherwise."""
    from workflow_scripts import modeling
    from workflow_scripts.execution.device import torch_dtype_of

    model_spec = ModelSpec.from_config(model_spec)
    trust = model_spec.trust_remote_code
    tokenizer = modeling.load_tokenizer(model_dir, trust_remote_code=trust)
    if (Path(model_dir) / "adapter_config.json").exists():
        from peft import PeftModel

        model = modeling.load_base_classifier(base, num_labels, model_spec.quantization, trust,
                                              dtype=torch_dtype_of(precision), device=device,
                                              attn_implementation=model_spec.attn_implementation)
        model = PeftModel.from_pretrained(model, model_dir)
        # LoRA layers follow their base layer's device; a head saved in full may load on the CPU
        return (model.to(device) if model_spec.quantization == "none" else model), tokenizer
    if model_spec.kind in LORA_KINDS:  # a merged model: the base with the adapter in, loaded as the base was
        model = modeling.load_base_classifier(model_dir, num_labels, model_spec.quantization, trust,
                                              dtype=torch_dtype_of(precision), device=device,
                                              attn_implementation=model_spec.attn_implementation)
        return model, tokenizer
    model = modeling.load_base_classifier(model_dir, num_labels, "none", trust, device=device,
                                          attn_implementation=model_spec.attn_implementation)
    return model, tokenizer


def fold_models(model_dirs: dict[str, str], base: str, model_spec: ModelSpec, num_labels: int
                ) -> Iterator[tuple[str, Any, Any, Any, str, tuple[float, float]]]:
    """(split, model, tokenizer, device, precision, (load wall seconds, load CPU seconds)) for each fold model,
    one at a time, as `load_for_prediction` loads them; LoRA adapters share one base: it is loaded (and quantized)
    once, each fold's adapter is attached in turn and the previous one deleted (a 14B base is read once, not once a
    fold). The caller drops its reference to a model before asking for the next one."""
    from workflow_scripts.execution.device import resolve_device, resolve_precision

    splits = list(model_dirs)
    adapters = bool(base) and all((Path(folder) / "adapter_config.json").exists() for folder in model_dirs.values())
    if not adapters or len(splits) < 2:
        for split in splits:
            yield (split, *load_for_prediction(model_dirs[split], base, model_spec, num_labels))
        return
    from peft import PeftModel

    from workflow_scripts import modeling
    from workflow_scripts.execution.device import torch_dtype_of

    device = resolve_device("auto")
    precision = resolve_precision(model_spec.precision, device)
    loading, loading_cpu = time.time(), time.process_time()
    shared = modeling.load_base_classifier(base, num_labels, model_spec.quantization, model_spec.trust_remote_code,
                                           dtype=torch_dtype_of(precision), device=device,
                                           attn_implementation=model_spec.attn_implementation)
    base_seconds = (time.time() - loading, time.process_time() - loading_cpu)
    model = None
    for number, split in enumerate(splits):
        loading, loading_cpu = time.time(), time.process_time()
        if model is None:
            model = PeftModel.from_pretrained(shared, model_dirs[split], adapter_name=split)
        else:
            model.load_adapter(model_dirs[split], adapter_name=split)
            model.set_adapter(split)
            model.delete_adapter(splits[number - 1])
        if model_spec.quantization == "none":
            model = model.to(device)  # a head saved in full may load on the CPU
        tokenizer = modeling.load_tokenizer(model_dirs[split], trust_remote_code=model_spec.trust_remote_code)
        seconds = (time.time() - loading + (base_seconds[0] if number == 0 else 0.0),
                   time.process_time() - loading_cpu + (base_seconds[1] if number == 0 else 0.0))
        yield split, model, tokenizer, device, precision, seconds


def load_for_prediction(model_dir: str, base: str, model_spec: ModelSpec, num_labels: int):
    """(model, tokenizer, device, precision, (load wall seconds, load CPU seconds)): a fold model on this
    process's device in the model's resolved precision, as the predict step and a Kaggle package load it."""
    from workflow_scripts.execution.device import resolve_device, resolve_precision

    # imported before the clock: a notebook pays imports once, the load time is paid per fold model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer  # noqa: F401

    if (Path(model_dir) / "adapter_config.json").exists():
        import peft  # noqa: F401

    device = resolve_device("auto")
    precision = resolve_precision(model_spec.precision, device)
    loading, loading_cpu = time.time(), time.process_time()
    model, tokenizer = load_trained(model_dir, base, model_spec, num_labels, device=device, precision=precision)
    return model, tokenizer, device, precision, (time.time() - loading, time.process_time() - loading_cpu)


def prediction_frame(ids: list[str], probabilities: np.ndarray, spec: LabelSpec, fold: int | None) -> pl.DataFrame:
    frame = pl.DataFrame({"id": ids})
    if fold is not None:
        frame = frame.with_columns(pl.lit(fold, dtype=pl.Int64).alias("fold"))
    return frame.hstack(pl.DataFrame(probabilities, schema=spec.probability_columns))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train", help="clean training data (needed with --valid-out)")
    parser.add_argument("--test", help="rows to predict: the test set or any file with id and text (with --test-out)")
    parser.add_argument("--folds", help="folds file (needed with --valid-out)")
    parser.add_argument("--labels", required=True)
    parser.add_argument("--fold", required=True, help="fold number, or 'full' (test only)")
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--base", required=True)
    parser.add_argument("--model-config", required=True, help="the settings prediction reads, as JSON")
    parser.add_argument("--run-settings", default="{}", help="predict_batch_size as JSON (not what it makes)")
    parser.add_argument("--valid-out", help="held-out fold predictions (omit to predict --test only)")
    parser.add_argument("--test-out", help="test predictions (omit to predict the held-out fold only)")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    model_spec = ModelSpec.from_json(args.model_config, args.run_settings)
    spec = LabelSpec.load(args.labels)
    if bool(args.test) != bool(args.test_out) or not (args.test_out or args.valid_out):
        raise OoflineError("predict: give --test with --test-out, --valid-out, or both")
    test = read_table(args.test) if args.test else None
    for column in ("id", "text"):
        if test is not None and column not in test.columns:
            raise OoflineError(f"{args.test}: column {column!r} is missing (rows to predict need id and text)")
    model, tokenizer, device, precision, load_seconds = load_for_prediction(args.model_dir, args.base, model_spec,
                                                                           len(spec.probability_columns))
    print(f"predicting on {device} in {precision}, {model_spec.prediction_batch_size} rows a batch", flush=True)
    max_length = model_spec.max_length
    batch_size = model_spec.prediction_batch_size
    if args.fold == "full" or not args.valid_out:
        valid, fold = None, None
    else:
        if not (args.train and args.folds):
            raise OoflineError("--valid-out needs --train and --folds")
        train, folds = read_table(args.train), read_table(args.folds)
        fold = int(args.fold)
        valid_ids = set(folds.filter(pl.col("fold") == fold)["id"].to_list())
        if not valid_ids:
            raise OoflineError(f"{args.folds}: fold {fold} has no rows")
        valid = train.filter(pl.col("id").is_in(list(valid_ids)))
    if valid is not None:
        valid_probs = predict_probabilities(model, tokenizer, valid["text"].to_list(), spec, max_length, batch_size,
                                            label="held-out", precision=precision)
        write_parquet(prediction_frame(valid["id"].to_list(), valid_probs, spec, fold), args.valid_out)
    elif args.valid_out:  # the full-data model has no held-out rows
        write_parquet(prediction_frame([], np.zeros((0, len(spec.probability_columns)), np.float32), spec, None),
                      args.valid_out)
    if test is None:
        return
    # batch_size: the rows a batch these predictions were made with (a run setting: a Kaggle package predicts the
    # same way, so its notebook writes these numbers, without a rebuild when the setting changes later)
    speed = {"load_seconds": round(load_seconds[0], 4), "load_cpu_seconds": round(load_seconds[1], 4),
             "device": str(device), "precision": precision, "batch_size": batch_size,
             "threads": torch.get_num_threads(),
             "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    test_probs = predict_probabilities(model, tokenizer, test["text"].to_list(), spec, max_length, batch_size, label="test",
                                       precision=precision, stats=speed)
    write_parquet(prediction_frame(test["id"].to_list(), test_probs, spec, None), args.test_out)
    write_inference_speed(args.test_out, speed)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
