"""The tiny movies classification configs that the workflow tests run through Snakemake."""
from __future__ import annotations

from typing import Any

import polars as pl


def movies_config(n_train: int = 90, n_test: int = 20, **sections: Any) -> dict[str, Any]:
    """Demo movies data (multiclass, MAP@3, 2 group-stratified folds) plus the given config sections."""
    config = {
        "demo": {"dataset": "movies", "n_train": n_train, "n_test": n_test, "seed": 0},
        "data": {"train": "results/demo/train.csv", "test": "results/demo/test.csv",
                 "sample_submission": "results/demo/sample_submission.csv"},
        "task": {"type": "multiclass", "text_template": "Review: {text}", "label_column": "category",
                 "metric": "map@3"},
        "folds": {"scheme": "stratified_group", "group_column": "movie_name", "n_folds": 2, "seed": 1},
    }
    config.update(sections)
    return config


# QLoRA 4-bit and a full fine-tune of the tiny Llama, their mean, and a top-3 submission
TWO_MODELS_AND_A_SUBMISSION = movies_config(
    model_defaults={"max_length": 32, "epochs": 1, "batch_size": 8, "resources": {"threads": 1}},
    models={
        "qlora": {"source": "tiny:llama", "kind": "decoder_lora", "quantization": "4bit", "r": 4, "alpha": 8,
                  "lr": 2e-3, "merge": True},
        "full": {"source": "tiny:llama", "kind": "encoder_full", "lr": 1e-3},
    },
    ensembles={"pair": {"members": {"qlora": 1.0, "full": 1.2}, "method": "mean"}},
    submissions={"pair_top3": {"source": "pair", "format": "top_k", "top_k": 3, "prediction_columns": ["category"]}},
)


def hand_map_at_3(oof: pl.DataFrame, labels: pl.Series, classes=("fresh", "plot", "rotten")) -> float:
    """Kaggle's MAP@3 written out: 1, 1/2 or 1/3 when the true class is ranked 1st, 2nd or 3rd (ties: the
    class listed first)."""
    classes = list(classes)
    total = 0.0
    for row, label in zip(oof.select(classes).iter_rows(), labels):
        ranked = sorted(classes, key=lambda name: -row[classes.index(name)])
        total += 1 / (ranked.index(label) + 1) if label in ranked[:3] else 0.0
    return total / len(labels)
