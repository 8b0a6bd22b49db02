"""Soft pseudo-labels: a teacher's probabilities on an unlabelled dataset, ready to train on.

Output `results/soft_labels/{teacher}/{dataset}.parquet`: `id`, the dataset's text columns (`text` first: the
trainer reads it), then one float32 column per probability column of the label spec, named and ordered exactly as
in prediction and target files, so `train.py --extra NAME=PATH` reads it as soft targets. Hard label columns are
not carried over (a multilabel head's probability column has the same name as its label column).
A teacher is one prediction file (`id` + probability columns, e.g. `results/test/{model}.parquet`, already
fold-averaged) or several averaged with weights (an ensemble). Optional sharpening with temperature T < 1
(T > 1 softens): a multiclass head becomes p**(1/T) renormalised; a binary head sigmoid(logit(p) / T).
With --label-source (or a teacher file that has the column) every row also records `label_source`: the teacher
model(s) that made its label, `teacher/split` (generated/teacher_labels.py); `{fold}` in a value is filled per
row from the teacher file's `fold` column (an OOF file: each row was predicted by that fold's model).
With --folds and --held-out-folds only the dataset's rows outside those folds are labelled (official rows for a
student trained without them).
"""
from __future__ import annotations

import argparse
from typing import Sequence

import numpy as np
import polars as pl

from workflow_scripts.errors import OoflineError, run_cli
from workflow_scripts.io import read_table, write_json, write_parquet
from workflow_scripts.generated.teacher_labels import LABEL_SOURCE
from workflow_scripts.labels import LabelSpec, aligned_probabilities

EPS = 1e-7


def sharpen(probabilities: np.ndarray, spec: LabelSpec, temperature: float) -> np.ndarray:
    """Temperature-scale probabilities per head; (n_rows, n_columns) float64 in, same shape out."""
    if temperature <= 0:
        raise OoflineError(f"soft_labels: temperature must be > 0; got {temperature}")
    if temperature == 1.0:
        return probabilities.copy()
    p = np.clip(probabilities, EPS, 1 - EPS)
    out = np.empty_like(p)
    for head, columns in spec.head_slices():
        if head.type == "binary":
            logit = np.log(p[:, columns]) - np.log1p(-p[:, columns])
            out[:, columns] = 1 / (1 + np.exp(-logit / temperature))
        else:
            scaled = np.log(p[:, columns]) / temperature
            scaled -= scaled.max(axis=1, keepdims=True)
            out[:, columns] = np.exp(scaled) / np.exp(scaled).sum(axis=1, keepdims=True)
    return out


def teacher_probabilities(
    teachers: Sequence[pl.DataFrame], ids: pl.Series, spec: LabelSpec, weights: Sequence[float] | None = None,
    names: Sequence[str] | None = None,
) -> np.ndarray:
    """Weighted mean of the teachers' probability columns, aligned to `ids`: (n_rows, n_columns) float64."""
    names = list(names or [f"teacher {i}" for i in range(len(teachers))])
    weights = np.asarray(weights if weights is not None else [1.0] * len(teachers), dtype=np.float64)
    if len(weights) != len(teachers) or (weights < 0).any() or weights.sum() <= 0:
        raise OoflineError(f"soft_labels: need one non-negative weight per teacher ({len(teachers)}), summing > 0; got {list(weights)}")
    columns = spec.probability_columns
    total = np.zeros((len(ids), len(columns)))
    for frame, weight, name in zip(teachers, weights, names):
        values = aligned_probabilities(frame, spec, ids, name)
        for head, cols in spec.head_slices():
            if head.type == "multiclass" and not np.allclose(values[:, cols].sum(axis=1), 1.0, atol=1e-3):
                raise OoflineError(f"{name}: the columns of multiclass head {head.name!r} must sum to 1 per row")
        total += weight * values
    return total / weights.sum()


def row_label_sources(teachers: Sequence[pl.DataFrame], ids: pl.Series,
                      label_sources: Sequence[str | None] | None) -> list[str] | None:
    """Per dataset row, the teacher models that made its label (comma-joined over averaged teachers); None when
    no teacher names its source."""
    label_sources = list(label_sources) if label_sources is not None else [None] * len(teachers)
    if len(label_sources) != len(teachers):
        raise OoflineError(f"soft_labels: need one label source per teacher ({len(teachers)}); got {label_sources}")
    keys = pl.DataFrame({"_key": ids.cast(pl.String)})
    per_teacher = []
    for frame, source in zip(teachers, label_sources):
        if source is None and LABEL_SOURCE not in frame.columns:
            return None
        column = pl.lit(source).cast(pl.String) if source is not None else pl.col(LABEL_SOURCE)
        if source is not None and "{fold}" in source:
            if "fold" not in frame.columns:
                raise OoflineError(f"soft_labels: label source {source!r} needs a 'fold' column in the teacher file")
            prefix, _, suffix = source.partition("{fold}")
            column = pl.concat_str([pl.lit(prefix), pl.col("fold").cast(pl.String), pl.lit(suffix)])
        values = frame.select(pl.col("id").cast(pl.String).alias("_key"), column.alias(LABEL_SOURCE))
        per_teacher.append(keys.join(values, on="_key", how="left", maintain_order="left")[LABEL_SOURCE].to_list())
    return [",".join(parts) for parts in zip(*per_teacher)]


def soft_label(
    dataset: pl.DataFrame,
    teachers: Sequence[pl.DataFrame],
    spec: LabelSpec,
    text_columns: Sequence[str],
    temperature: float = 1.0,
    weights: Sequence[float] | None = None,
    names: Sequence[str] | None = None,
    label_sources: Sequence[str | None] | None = None,
) -> pl.DataFrame:
    """`id`, text columns and the probability columns (float32) for every dataset row, in dataset order, then
    `label_source` when the teachers name theirs."""
    missing = [c for c in ["id", *text_columns] if c not in dataset.columns]
    if missing:
        raise OoflineError(f"dataset: missing column(s) {missing} (has {dataset.columns})")
    clash = sorted(set(text_columns) & set(spec.probability_columns))
    if clash:
        raise OoflineError(f"dataset: text column(s) {clash} have the name of a probability column; do not carry them")
    probabilities = sharpen(teacher_probabilities(teachers, dataset["id"], spec, weights, names), spec, temperature)
    soft = pl.DataFrame(
        {c: probabilities[:, j].astype(np.float32) for j, c in enumerate(spec.probability_columns)}
    )
    labelled = pl.concat([dataset.select(["id", *text_columns]), soft], how="horizontal")
    sources = row_label_sources(teachers, dataset["id"], label_sources)
    return labelled if sources is None else labelled.with_columns(pl.Series(LABEL_SOURCE, sources, dtype=pl.String))


def rows_outside(dataset: pl.DataFrame, folds: pl.DataFrame, held_out: Sequence[int]) -> pl.DataFrame:
    """The dataset's rows whose fold (in the folds file) is not held out."""
    keep = folds.filter(~pl.col("fold").is_in(list(held_out)))["id"].cast(pl.String)
    return dataset.filter(pl.col("id").cast(pl.String).is_in(keep.implode()))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Label an unlabelled dataset with a teacher's probabilities.")
    parser.add_argument("--dataset", required=True, help="unlabelled rows (id + text columns), e.g. generated data")
    parser.add_argument("--teacher", nargs="+", required=True, help="prediction file(s) on --dataset: id + probability columns")
    parser.add_argument("--weights", nargs="+", type=float, default=None, help="one weight per teacher file (default equal)")
    parser.add_argument("--label-spec", required=True)
    parser.add_argument("--text-columns", nargs="+", required=True)
    parser.add_argument("--temperature", type=float, default=1.0, help="< 1 sharpens, > 1 softens")
    parser.add_argument("--label-source", nargs="+", default=None,
                        help="per teacher file, the model that made it (teacher/split; {fold}: per row from its fold column)")
    parser.add_argument("--folds", default=None, help="with --held-out-folds: the folds file")
    parser.add_argument("--held-out-folds", nargs="+", type=int, default=None,
                        help="label only the dataset rows outside these folds")
    parser.add_argument("--output", required=True)
    parser.add_argument("--summary", default=None, help="optional json: rows, mean probability per column")
    args = parser.parse_args(argv)

    spec = LabelSpec.load(args.label_spec)
    dataset = read_table(args.dataset)
    if args.held_out_folds:
        if not args.folds:
            raise OoflineError("--held-out-folds needs --folds")
        dataset = rows_outside(dataset, read_table(args.folds), args.held_out_folds)
    frame = soft_label(
        dataset, [read_table(p) for p in args.teacher], spec, args.text_columns,
        args.temperature, args.weights, args.teacher, args.label_source,
    )
    write_parquet(frame, args.output)
    if args.summary:
        write_json({
            "rows": frame.height, "teachers": args.teacher, "held_out_folds": args.held_out_folds, "weights": args.weights, "temperature": args.temperature,
            "mean_probability": {c: float(frame[c].mean()) for c in spec.probability_columns},
        }, args.summary)
    print(f"soft_labels: {frame.height} rows labelled by {len(args.teacher)} teacher file(s), T={args.temperature}", flush=True)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
