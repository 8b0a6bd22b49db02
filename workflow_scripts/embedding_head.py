"""`kind: embedding_head`: a frozen encoder or decoder embeds train and test once; a logistic regression per fold.

`embed` writes results/embeddings/{model}.safetensors (tensors `train`, `test`: (n_rows, hidden) float32;
the row ids in its metadata), pooled `mean` (over real tokens), `cls` (first token) or `last` (last real
token, for decoders), in length-sorted batches on the job's device. Every fold's `fit` reads that one
file, so the encoder runs once per model, not once per fold. The heads are linear_heads' logistic
regressions, saved as safetensors + JSON and predicted from the saved folder.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from workflow_scripts.errors import OoflineError, run_cli
from workflow_scripts.io import atomic_path, read_table, write_inference_speed, write_parquet
from workflow_scripts.labels import LabelSpec
from workflow_scripts.linear_heads import fit_heads, fold_rows, load_heads, predict_heads, prediction_frame, save_heads
from workflow_scripts.metrics import aligned_targets
from workflow_scripts.model_spec import EmbeddingHeadSpec

POOLINGS = ("mean", "cls", "last")
# the spec holds the defaults (an entry the rules hand over has them all; tests may leave keys out)
EMBEDDING_DEFAULTS = EmbeddingHeadSpec(kind="embedding_head").to_config()
HEAD_DEFAULTS = {key: EMBEDDING_DEFAULTS[key] for key in ("C", "max_iter", "seed")}


def pool(hidden, attention_mask, pooling: str):
    """(batch, hidden) from (batch, tokens, hidden) hidden states; right padding (mask 1 = real token)."""
    import torch

    if pooling == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "last":
        last = attention_mask.sum(dim=1) - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise OoflineError(f"models: pooling {pooling!r} is not one of {', '.join(POOLINGS)}")


def embed_texts(model, tokenizer, texts: list[str], pooling: str, max_length: int, batch_size: int, device,
                label: str = "embed", stats: dict | None = None) -> np.ndarray:
    """Pooled embeddings (n_rows, hidden) float32 in the input order; batches sorted by length. `stats`, when
    given, gets the rows, tokens (after truncation) and seconds of the pass."""
    import torch

    from workflow_scripts.batching import pad_batch, sorted_batches

    token_ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    batches = sorted_batches(np.array([len(ids) for ids in token_ids]), batch_size)
    embeddings = None
    started, started_cpu = time.time(), time.process_time()
    with torch.inference_mode():
        for number, rows in enumerate(batches, start=1):
            inputs = {k: v.to(device) for k, v in pad_batch(token_ids, rows, tokenizer.pad_token_id).items()}
            hidden = model(**inputs).last_hidden_state
            pooled = pool(hidden, inputs["attention_mask"], pooling).float().cpu().numpy()
            if embeddings is None:
                embeddings = np.zeros((len(texts), pooled.shape[1]), dtype=np.float32)
            embeddings[rows] = pooled
            if number % 20 == 0 or number == len(batches):
                done = sum(len(b) for b in batches[:number])
                print(f"{label}: batch {number}/{len(batches)} {done / max(1e-9, time.time() - started):.1f} rows/s",
                      flush=True)
    if stats is not None:
        stats.update(rows=len(texts), tokens=int(sum(len(ids) for ids in token_ids)),
                     seconds=round(time.time() - started, 4), cpu_seconds=round(time.process_time() - started_cpu, 4))
    return embeddings if embeddings is not None else np.zeros((0, 0), dtype=np.float32)


def load_encoder(base: str, model_config: dict[str, Any]):
    """(frozen model without a head, tokenizer, device) on the job's device and precision."""
    import torch
    from transformers import AutoModel

    from workflow_scripts.execution.device import resolve_device, resolve_precision, torch_dtype_of
    from workflow_scripts.modeling import check_attn_implementation, load_tokenizer, resolve_model_path

    trust = bool(model_config.get("trust_remote_code", False))
    device = resolve_device(model_config.get("device", "auto"))
    precision = resolve_precision(model_config.get("precision", "auto"), device)
    name, revision = resolve_model_path(base)
    attention = model_config.get("attn_implementation")
    check_attn_implementation(attention)
    model = AutoModel.from_pretrained(name, revision=revision, trust_remote_code=trust, dtype=torch_dtype_of(precision),
                                      **({"attn_implementation": attention} if attention else {}))
    model.to(device).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    print(f"embed: {base} on {device} in {precision}", flush=True)
    return model, load_tokenizer(base, trust_remote_code=trust), device


def embedding_settings(model_config: dict[str, Any]) -> tuple[str, int, int]:
    """(pooling, max_length, batch size) of a model's embed pass (the embed step and a Kaggle package)."""
    settings = {**EMBEDDING_DEFAULTS, **model_config}
    pooling = settings["pooling"]
    if pooling not in POOLINGS:
        raise OoflineError(f"models: pooling {pooling!r} is not one of {', '.join(POOLINGS)}")
    return pooling, int(settings["max_length"]), int(settings["embed_batch_size"])


def embed_main(args) -> None:
    import torch
    from safetensors.numpy import save_file

    if args.threads:
        torch.set_num_threads(args.threads)
    # the settings the embeddings depend on, and how the job runs (rows per forward pass)
    model_config = {**EMBEDDING_DEFAULTS, **json.loads(args.model_config), **json.loads(args.run_settings)}
    pooling, max_length, batch_size = embedding_settings(model_config)
    train, test = read_table(args.train), read_table(args.test)
    # imported before the clock: the load time is the model's, imports are paid once
    from transformers import AutoModel, AutoTokenizer  # noqa: F401

    loading, loading_cpu = time.time(), time.process_time()
    model, tokenizer, device = load_encoder(args.base, model_config)
    speed = {"load_seconds": round(time.time() - loading, 4),
             "load_cpu_seconds": round(time.process_time() - loading_cpu, 4), "device": str(device), "threads": torch.get_num_threads(),
             "batch_size": batch_size,  # what the embeddings were made with: a Kaggle package embeds the same way
             "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    tensors = {split: embed_texts(model, tokenizer, frame["text"].to_list(), pooling, max_length, batch_size, device,
                                  label=f"embed {split}", stats=speed if split == "test" else None)
               for split, frame in (("train", train), ("test", test))}
    metadata = {"train_ids": json.dumps(train["id"].to_list()), "test_ids": json.dumps(test["id"].to_list()),
                "pooling": pooling, "max_length": str(max_length)}
    with atomic_path(args.out) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    write_inference_speed(args.out, speed)
    print(f"embed: {train.height} train and {test.height} test rows -> {args.out} "
          f"({tensors['train'].shape[1]} dimensions)", flush=True)


def read_embeddings(path: str | Path) -> tuple[np.ndarray, list, np.ndarray, list]:
    """(train embeddings, train ids, test embeddings, test ids) from an embeddings file."""
    from safetensors import safe_open

    if not Path(path).exists():
        raise OoflineError(f"embeddings file not found: {path}")
    with safe_open(str(path), framework="numpy") as handle:
        metadata = handle.metadata() or {}
        if "train_ids" not in metadata or "test_ids" not in metadata:
            raise OoflineError(f"{path}: metadata has no train_ids/test_ids (expected the embed step's file)")
        return (handle.get_tensor("train"), json.loads(metadata["train_ids"]), handle.get_tensor("test"),
                json.loads(metadata["test_ids"]))


def fit_main(args) -> None:
    started = time.time()
    spec = LabelSpec.load(args.labels)
    settings = {key: json.loads(args.model_config).get(key, default) for key, default in HEAD_DEFAULTS.items()}
    train_x, train_ids, test_x, test_ids = read_embeddings(args.embeddings)
    import polars as pl

    targets = aligned_targets(pl.DataFrame({"id": train_ids}), args.targets, spec)
    training, held_out = fold_rows(read_table(args.folds), train_ids, args.fold)
    heads = fit_heads(spec, train_x[training], targets[training], c=float(settings["C"]),
                      max_iter=int(settings["max_iter"]), seed=int(settings["seed"]))
    save_heads(heads, args.model_out, {"kind": "embedding_head", "settings": settings,
                                       "n_training_rows": int(training.sum()), "embeddings": str(args.embeddings)})
    saved, _ = load_heads(args.model_out)  # predict with what was saved
    valid_ids = [i for i, keep in zip(train_ids, held_out) if keep]
    write_parquet(prediction_frame(valid_ids, predict_heads(spec, saved, train_x[held_out]), spec, args.fold),
                  args.valid_out)
    predicting, predicting_cpu = time.time(), time.process_time()
    write_parquet(prediction_frame(test_ids, predict_heads(spec, saved, test_x), spec, None), args.test_out)
    # the head alone: the embed step records the encoder's pass over the test rows
    write_inference_speed(args.test_out, {"rows": len(test_ids), "seconds": round(time.time() - predicting, 4),
                                          "cpu_seconds": round(time.process_time() - predicting_cpu, 4),
                                          "load_seconds": 0.0, "device": "cpu", "threads": 1})
    print(f"embedding_head fold {args.fold}: fitted on {int(training.sum())} rows, predicted {len(valid_ids)} "
          f"held-out and {len(test_ids)} test rows in {time.time() - started:.1f}s", flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    steps = parser.add_subparsers(dest="step", required=True)
    embed = steps.add_parser("embed", help="embed train and test texts once")
    embed.add_argument("--train", required=True)
    embed.add_argument("--test", required=True)
    embed.add_argument("--base", required=True, help="model folder or hub id")
    embed.add_argument("--model-config", required=True)
    embed.add_argument("--run-settings", default="{}", help="embed_batch_size as JSON (does not change the output)")
    embed.add_argument("--out", required=True, help="embeddings .safetensors")
    embed.add_argument("--threads", type=int, default=0)
    fit = steps.add_parser("fit", help="fit one fold's head and predict its held-out and test rows")
    fit.add_argument("--embeddings", required=True)
    fit.add_argument("--folds", required=True)
    fit.add_argument("--targets", required=True)
    fit.add_argument("--labels", required=True)
    fit.add_argument("--fold", type=int, required=True)
    fit.add_argument("--model-config", required=True)
    fit.add_argument("--model-out", required=True)
    fit.add_argument("--valid-out", required=True)
    fit.add_argument("--test-out", required=True)
    args = parser.parse_args(argv)
    embed_main(args) if args.step == "embed" else fit_main(args)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
