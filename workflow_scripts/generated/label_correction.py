"""Relabel (or drop) the training rows whose out-of-fold loss is highest.

Per-row loss: the mean over heads of each head's loss, where a multiclass head's loss is the cross-entropy
-log p[true class] and a binary head's loss is the binary cross-entropy (the seed-004 training loss, per row;
probabilities are clipped to [1e-7, 1 - 1e-7]). The k = floor(n * top_percent / 100) rows with the highest loss
are selected; ties at the cut are broken by id (smaller first). A selected row is relabelled to the teacher's
prediction (argmax for a multiclass head, probability >= 0.5 for a binary head) or dropped (`--action drop`).
The report lists every changed (id, label column) with old and new label, and every dropped row.

With --folds and --held-out-folds (a student trained without those folds, generated/teacher_labels.py) only the
rows outside them are candidates: top_percent counts them, the OOF needs only them, and the held-out rows stay
as they are (the student never trains on them; it is scored on every official row of its held-out fold).
With --label-source (or an OOF file that has the column) every candidate row records `label_source`: the
teacher model whose prediction scored it (and made its new label); held-out rows have none.
"""
from __future__ import annotations

import argparse
import math
from typing import Sequence

import numpy as np
import polars as pl

from workflow_scripts.errors import OoflineError, run_cli
from workflow_scripts.io import atomic_path, read_table, write_json, write_parquet
from workflow_scripts.generated.soft_labels import row_label_sources
from workflow_scripts.generated.teacher_labels import LABEL_SOURCE
from workflow_scripts.labels import LabelSpec, aligned_probabilities

EPS = 1e-7


def row_losses(probabilities: np.ndarray, targets: np.ndarray, spec: LabelSpec) -> np.ndarray:
    """Per-row loss, (n_rows,) float64: mean over heads of cross-entropy (multiclass) or BCE (binary)."""
    p = np.clip(probabilities, EPS, 1 - EPS)
    per_head = []
    for head, columns in spec.head_slices():
        if head.type == "binary":
            t, q = targets[:, columns.start], p[:, columns.start]
            per_head.append(-(t * np.log(q) + (1 - t) * np.log(1 - q)))
        else:
            per_head.append(-(targets[:, columns] * np.log(p[:, columns])).sum(axis=1))
    return np.mean(per_head, axis=0)


def select_top(losses: np.ndarray, ids: Sequence[object], top_percent: float) -> np.ndarray:
    """Indices of the floor(n * top_percent / 100) highest losses; ties broken by smaller id first."""
    if not 0 <= top_percent <= 100:
        raise OoflineError(f"label_correction: top_percent must be in [0, 100]; got {top_percent}")
    k = math.floor(len(losses) * top_percent / 100 + 1e-9)
    order = sorted(range(len(losses)), key=lambda i: (-losses[i], ids[i]))
    return np.array(sorted(order[:k]), dtype=np.int64)


def teacher_labels(probabilities: np.ndarray, spec: LabelSpec) -> list[list[object]]:
    """The teacher's hard label per head for every row (class name, or 0/1 for a binary head)."""
    per_head = []
    for head, columns in spec.head_slices():
        if head.type == "binary":
            per_head.append((probabilities[:, columns.start] >= 0.5).astype(int).tolist())
        else:
            per_head.append([head.classes[j] for j in probabilities[:, columns].argmax(axis=1)])
    return per_head


def correct_labels(
    train: pl.DataFrame,
    oof: pl.DataFrame,
    spec: LabelSpec,
    top_percent: float,
    action: str = "relabel",
    targets: pl.DataFrame | None = None,
    held_out_ids: Sequence[object] | None = None,
    label_source: str | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame, dict]:
    """Return (corrected training frame, change report, summary).

    Hard targets come from `targets` (id + probability columns as 0/1) when given, else from the label columns
    of `train`. The report has `id`, `loss`, `rank`, `column`, `old`, `new` (strings; `new` is null when dropped).
    held_out_ids: rows that are neither candidates nor changed (a student's held-out folds).
    label_source: the teacher that made the OOF (`{fold}` filled from its fold column), or None to take the OOF's
    own `label_source` column when it has one; the corrected frame then gets a `label_source` column.
    """
    if action not in {"relabel", "drop"}:
        raise OoflineError(f"label_correction: action must be 'relabel' or 'drop'; got {action!r}")
    if "id" not in train.columns:
        raise OoflineError("training data: missing column 'id'")
    full_train = train
    held_out_keys = {str(i) for i in held_out_ids} if held_out_ids is not None else set()
    candidate = ~full_train["id"].cast(pl.String).is_in(pl.Series(sorted(held_out_keys), dtype=pl.String).implode())
    train = full_train.filter(candidate)
    ids = train["id"]
    if targets is None:
        target_matrix = spec.targets(train).astype(np.float64)
    else:
        target_matrix = aligned_probabilities(targets, spec, ids, "targets")
    probabilities = aligned_probabilities(oof, spec, ids, "oof predictions")
    losses = row_losses(probabilities, target_matrix, spec)
    selected = select_top(losses, ids.to_list(), top_percent)
    rank = {int(i): r + 1 for r, i in enumerate(sorted(selected, key=lambda i: (-losses[i], ids[int(i)])))}

    report = {"id": [], "loss": [], "rank": [], "column": [], "old": [], "new": []}
    corrected = train
    if action == "drop":
        for i in selected:
            for head, _ in spec.head_slices():
                report["id"].append(ids[int(i)]); report["loss"].append(float(losses[i])); report["rank"].append(rank[int(i)])
                report["column"].append(head.source_column); report["old"].append(str(train[head.source_column][int(i)])); report["new"].append(None)
        keep = np.ones(train.height, dtype=bool)
        keep[selected] = False
        corrected = train.filter(pl.Series(keep))
    else:
        new_labels = teacher_labels(probabilities, spec)
        replacements = {}
        for (head, _), labels in zip(spec.head_slices(), new_labels):
            old_column = train[head.source_column]
            new_values = old_column.cast(pl.String).to_list()
            for i in selected:
                old, new = new_values[int(i)], str(labels[int(i)])
                old_norm = str(int(float(old))) if head.type == "binary" else old
                if old_norm != new:
                    new_values[int(i)] = new
                    report["id"].append(ids[int(i)]); report["loss"].append(float(losses[i])); report["rank"].append(rank[int(i)])
                    report["column"].append(head.source_column); report["old"].append(old); report["new"].append(new)
            replacements[head.source_column] = pl.Series(head.source_column, new_values).cast(old_column.dtype)
        corrected = train.with_columns(list(replacements.values()))
    sources = row_label_sources([oof], ids, [label_source])
    if sources is not None:
        corrected = corrected.with_columns(pl.Series(LABEL_SOURCE, sources if action == "relabel" else
                                                     [s for s, k in zip(sources, keep) if k], dtype=pl.String))
    if held_out_keys:  # the held-out rows, unchanged, back in their places
        untouched = full_train.filter(~candidate)
        if sources is not None:
            untouched = untouched.with_columns(pl.lit(None, dtype=pl.String).alias(LABEL_SOURCE))
        order = full_train.select(pl.col("id").cast(pl.String).alias("_key"))
        corrected = order.join(pl.concat([corrected, untouched]).with_columns(pl.col("id").cast(pl.String).alias("_key")),
                               on="_key", how="inner", maintain_order="left").drop("_key")
    report_frame = pl.DataFrame(
        report,
        schema={"id": ids.dtype, "loss": pl.Float64, "rank": pl.Int64, "column": pl.String, "old": pl.String, "new": pl.String},
    ).sort(["rank", "column"])
    summary = {
        "action": action,
        "top_percent": top_percent,
        "rows": full_train.height,
        "candidate_rows": train.height,
        "selected_rows": int(len(selected)),
        "changed_rows": int(report_frame["id"].n_unique()) if report_frame.height else 0,
        "changed_labels": report_frame.height if action == "relabel" else 0,
        "dropped_rows": int(len(selected)) if action == "drop" else 0,
        "loss_cutoff": float(min(losses[selected])) if len(selected) else None,
        "mean_loss": float(losses.mean()) if len(losses) else None,
    }
    return corrected, report_frame, summary


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Relabel or drop the training rows with the highest OOF loss.")
    parser.add_argument("--train", required=True, help="training data (id, text and label columns)")
    parser.add_argument("--oof", required=True, help="OOF predictions (id, fold, probability columns)")
    parser.add_argument("--label-spec", required=True, help="label spec json (workflow_scripts/labels.py)")
    parser.add_argument("--targets", default=None, help="optional hard targets (id + probability columns as 0/1)")
    parser.add_argument("--top-percent", type=float, required=True, help="percentage of rows (by loss) to correct")
    parser.add_argument("--action", choices=["relabel", "drop"], default="relabel")
    parser.add_argument("--output", required=True, help="corrected training parquet (same columns as --train)")
    parser.add_argument("--targets-output", required=True,
                        help="targets parquet of the corrected rows (id + probability columns, 0/1), for train.py --targets")
    parser.add_argument("--report", required=True, help="csv: every changed (id, column) with old and new label")
    parser.add_argument("--summary", required=True, help="json: counts and the loss cut-off")
    parser.add_argument("--folds", default=None, help="with --held-out-folds: the folds file")
    parser.add_argument("--held-out-folds", nargs="+", type=int, default=None,
                        help="rows of these folds are neither candidates nor changed (a student's held-out folds)")
    parser.add_argument("--label-source", default=None,
                        help="the teacher model that made --oof (teacher/split; {fold}: per row from its fold column)")
    args = parser.parse_args(argv)

    spec = LabelSpec.load(args.label_spec)
    train = read_table(args.train)
    targets = read_table(args.targets) if args.targets else None
    held_out_ids = None
    if args.held_out_folds:
        if not args.folds:
            raise OoflineError("--held-out-folds needs --folds")
        held_out_ids = read_table(args.folds).filter(pl.col("fold").is_in(args.held_out_folds))["id"].to_list()
    corrected, report, summary = correct_labels(train, read_table(args.oof), spec, args.top_percent, args.action, targets,
                                                held_out_ids, args.label_source)
    summary.update({"train": args.train, "oof": args.oof, "held_out_folds": args.held_out_folds})
    corrected_targets = pl.DataFrame({"id": corrected["id"]}).hstack(
        pl.DataFrame(spec.targets(corrected, args.output), schema=spec.probability_columns)
    )
    write_parquet(corrected, args.output)
    write_parquet(corrected_targets, args.targets_output)
    with atomic_path(args.report) as tmp:
        report.write_csv(tmp)
    write_json(summary, args.summary)
    print(
        f"label_correction: {summary['selected_rows']} of {summary['rows']} rows selected "
        f"(loss >= {summary['loss_cutoff']}); {summary['changed_rows']} changed, {summary['dropped_rows']} dropped",
        flush=True,
    )


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
