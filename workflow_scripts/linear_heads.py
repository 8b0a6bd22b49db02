"""Logistic-regression heads over fixed features, one per label head, saved as safetensors + JSON.

Shared by `linear_models` (TF-IDF features) and `embedding_head` (frozen-encoder embeddings): a
multiclass head is one multinomial logistic regression, a binary head (every multilabel label, every
binary head of a multihead task) one binary logistic regression, so multilabel is one-vs-rest. What is
saved is only coefficients and intercepts: prediction is softmax / sigmoid of `features @ coef.T +
intercept`, the same arithmetic as sklearn's predict_proba, so no pickle is needed to predict again.
A multiclass head whose training rows hold two classes (a 0/1 task written as multiclass, or a fold that
lacks a class) is one binary model in scikit-learn: one coefficient row scoring the second class.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from workflow_scripts.errors import OoflineError
from workflow_scripts.labels import LabelSpec

HEAD_FILE = "heads.safetensors"
HEAD_META = "heads.json"


@dataclass
class FittedHead:
    """One fitted head: `classes` are the head-column indices the fit saw (a class absent from the training
    rows gets probability 0); `constant` holds the probabilities when the training rows had one class only."""

    name: str
    type: str  # binary | multiclass
    classes: list[int]
    coef: np.ndarray | None  # (n_outputs, n_features) float32
    intercept: np.ndarray | None  # (n_outputs,) float32
    constant: list[float] | None = None


def fit_heads(spec: LabelSpec, features, targets: np.ndarray, c: float = 1.0, max_iter: int = 1000,
              seed: int = 42) -> list[FittedHead]:
    """One logistic regression per head. features: (n_rows, n_features) dense or sparse; targets: 0/1 in
    `spec.probability_columns` order (one-hot per multiclass head)."""
    from sklearn.linear_model import LogisticRegression

    fitted = []
    for head, columns in spec.head_slices():
        block = targets[:, columns]
        if head.type == "binary":
            labels = block[:, 0].astype(np.int64)
            classes = sorted(set(labels.tolist()))
        else:
            labels = block.argmax(axis=1)
            classes = sorted(set(labels.tolist()))
        if len(classes) < 2:  # nothing to separate: predict what the training rows had
            constant = [float(classes[0])] if head.type == "binary" else np.eye(block.shape[1])[classes[0]].tolist()
            fitted.append(FittedHead(head.name, head.type, classes, None, None, constant))
            continue
        model = LogisticRegression(C=c, max_iter=max_iter, random_state=seed)
        model.fit(features, labels)
        fitted.append(FittedHead(head.name, head.type, [int(k) for k in model.classes_],
                                 model.coef_.astype(np.float32), model.intercept_.astype(np.float32)))
    return fitted


def predict_heads(spec: LabelSpec, heads: list[FittedHead], features) -> np.ndarray:
    """Probabilities (n_rows, n_columns) float32 in `spec.probability_columns` order."""
    n_rows = features.shape[0]
    probabilities = np.zeros((n_rows, len(spec.probability_columns)), dtype=np.float32)
    for (head, columns), fitted in zip(spec.head_slices(), heads):
        if fitted.constant is not None:
            probabilities[:, columns] = np.asarray(fitted.constant, dtype=np.float32)
            continue
        scores = np.asarray(features @ fitted.coef.astype(np.float64).T) + fitted.intercept.astype(np.float64)
        if head.type == "binary":
            probabilities[:, columns.start] = _sigmoid(scores[:, 0])
        elif scores.shape[1] == 1:
            # two classes seen: scikit-learn fits one binary model whose score favours the second class
            positive = _sigmoid(scores[:, 0])
            probabilities[:, columns.start + fitted.classes[1]] = positive
            probabilities[:, columns.start + fitted.classes[0]] = 1.0 - positive
        else:
            scores -= scores.max(axis=1, keepdims=True)
            shares = np.exp(scores)
            shares /= shares.sum(axis=1, keepdims=True)
            probabilities[:, [columns.start + k for k in fitted.classes]] = shares
    return probabilities


def _sigmoid(scores: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-s)) without overflow warnings for large negative scores (float64)."""
    out = np.empty_like(scores, dtype=np.float64)
    positive = scores >= 0
    out[positive] = 1.0 / (1.0 + np.exp(-scores[positive]))
    exp_scores = np.exp(scores[~positive])
    out[~positive] = exp_scores / (1.0 + exp_scores)
    return out


def save_heads(heads: list[FittedHead], folder: str | Path, extra: dict[str, Any] | None = None) -> None:
    """heads.safetensors (coefficients, intercepts) + heads.json (which columns each head covers)."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors, meta = {}, []
    for index, head in enumerate(heads):
        if head.coef is not None:
            tensors[f"head{index}.coef"] = np.ascontiguousarray(head.coef)
            tensors[f"head{index}.intercept"] = np.ascontiguousarray(head.intercept)
        meta.append({"name": head.name, "type": head.type, "classes": head.classes, "constant": head.constant})
    save_file(tensors, str(folder / HEAD_FILE))
    (folder / HEAD_META).write_text(json.dumps({"heads": meta, **(extra or {})}, indent=2, sort_keys=True) + "\n")


def load_heads(folder: str | Path) -> tuple[list[FittedHead], dict[str, Any]]:
    """(heads, the extra JSON saved beside them)."""
    from safetensors.numpy import load_file

    folder = Path(folder)
    for name in (HEAD_FILE, HEAD_META):
        if not (folder / name).exists():
            raise OoflineError(f"{folder}: {name} is missing (expected a fitted linear head folder)")
    tensors = load_file(str(folder / HEAD_FILE))
    payload = json.loads((folder / HEAD_META).read_text())
    heads = [FittedHead(m["name"], m["type"], m["classes"], tensors.get(f"head{i}.coef"),
                        tensors.get(f"head{i}.intercept"), m["constant"]) for i, m in enumerate(payload["heads"])]
    return heads, payload


def fold_rows(folds: pl.DataFrame, ids: list, fold: int) -> tuple[np.ndarray, np.ndarray]:
    """(training mask, held-out mask) over `ids` for fold `fold` (ids aligned with the folds file)."""
    fold_of = dict(zip(folds["id"].to_list(), folds["fold"].to_list()))
    missing = [i for i in ids if i not in fold_of]
    if missing:
        raise OoflineError(f"folds file: {len(missing)} training ids have no fold, e.g. {missing[:3]}")
    values = np.array([fold_of[i] for i in ids])
    held_out = values == fold
    if not held_out.any():
        raise OoflineError(f"folds file: fold {fold} has no rows")
    return ~held_out, held_out


def prediction_frame(ids: list, probabilities: np.ndarray, spec: LabelSpec, fold: int | None) -> pl.DataFrame:
    """`id` (+ `fold`) and one probability column per label column: the layout of every prediction file."""
    frame = pl.DataFrame({"id": ids})
    if fold is not None:
        frame = frame.with_columns(pl.lit(fold, dtype=pl.Int64).alias("fold"))
    return frame.hstack(pl.DataFrame(probabilities, schema=spec.probability_columns))
