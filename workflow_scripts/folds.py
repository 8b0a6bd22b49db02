"""Assign every training id to one fold, deterministically: stratified, multilabel, group, stratified group."""
from __future__ import annotations

import argparse
from typing import Sequence

import numpy as np
import polars as pl

from workflow_scripts.errors import OoflineError, run_cli
from workflow_scripts.io import read_table, write_parquet
from workflow_scripts.labels import LabelSpec

SCHEMES = ("stratified", "multilabel_stratified", "group", "stratified_group", "random")


def stratum_labels(spec: LabelSpec, targets: np.ndarray) -> np.ndarray:
    """One label per row for single-label stratification: the first multiclass head, else the label combination."""
    for head, columns in spec.head_slices():
        if head.type == "multiclass":
            return targets[:, columns].argmax(axis=1)
    _, combination = np.unique(targets.astype(np.int8), axis=0, return_inverse=True)
    return combination.ravel()


def assign_folds(ids: Sequence[str], targets: np.ndarray, spec: LabelSpec, scheme: str, n_folds: int,
                 seed: int, groups: Sequence | None = None) -> pl.DataFrame:
    """Return `id`, `fold` in the input order. targets: (n_rows, n_columns) 0/1 float."""
    from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

    n_rows = len(ids)
    if scheme not in SCHEMES:
        raise OoflineError(f"folds.scheme: unknown {scheme!r} (expected one of {', '.join(SCHEMES)})")
    if n_folds < 2 or n_folds > n_rows:
        raise OoflineError(f"folds.n_folds must be between 2 and the number of rows ({n_rows}), got {n_folds}")
    if scheme in ("group", "stratified_group") and groups is None:
        raise OoflineError(f"folds.scheme {scheme!r} needs folds.group_column")
    placeholder = np.zeros((n_rows, 1))
    if scheme == "stratified":
        splitter = StratifiedKFold(n_folds, shuffle=True, random_state=seed)
        splits = splitter.split(placeholder, stratum_labels(spec, targets))
    elif scheme == "multilabel_stratified":
        from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

        splitter = MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        splits = splitter.split(placeholder, targets.astype(np.int64))
    elif scheme == "group":
        n_groups = len(set(groups))
        if n_groups < n_folds:
            raise OoflineError(f"folds.group_column has {n_groups} groups, fewer than folds.n_folds={n_folds}")
        splits = GroupKFold(n_folds, shuffle=True, random_state=seed).split(placeholder, groups=groups)
    elif scheme == "stratified_group":
        splitter = StratifiedGroupKFold(n_folds, shuffle=True, random_state=seed)
        splits = splitter.split(placeholder, stratum_labels(spec, targets), groups=groups)
    else:
        splits = KFold(n_folds, shuffle=True, random_state=seed).split(placeholder)
    fold_index = np.full(n_rows, -1, dtype=np.int64)
    for fold, (_, valid_rows) in enumerate(splits):
        fold_index[valid_rows] = fold
    if (fold_index < 0).any():
        raise OoflineError("folds: some rows were assigned to no fold")
    return pl.DataFrame({"id": list(ids), "fold": fold_index})


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train", required=True, help="clean training data (id, text, labels) or retrieval queries")
    parser.add_argument("--targets", help="targets parquet (classification)")
    parser.add_argument("--labels", help="label spec json (classification; without it only random/group schemes)")
    parser.add_argument("--scheme", required=True)
    parser.add_argument("--n-folds", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--group-column")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    train = read_table(args.train)
    if args.labels:
        spec = LabelSpec.load(args.labels)
        targets = read_table(args.targets).select(spec.probability_columns).to_numpy()
    else:  # retrieval queries have no class labels to stratify on
        if args.scheme not in ("random", "group"):
            raise OoflineError(f"folds.scheme {args.scheme!r} needs class labels; use random or group for queries")
        spec, targets = LabelSpec("multilabel", ()), np.zeros((train.height, 0), dtype=np.float32)
    groups = None
    if args.group_column:  # empty means no groups
        if args.group_column not in train.columns:
            raise OoflineError(f"{args.train}: folds.group_column {args.group_column!r} is missing")
        groups = train[args.group_column].cast(pl.String).fill_null("").to_list()
    folds = assign_folds(train["id"].to_list(), targets, spec, args.scheme, args.n_folds, args.seed, groups)
    write_parquet(folds, args.out)
    counts = folds.group_by("fold").len().sort("fold")
    print("rows per fold: " + ", ".join(f"{f}: {n}" for f, n in counts.iter_rows()), flush=True)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
