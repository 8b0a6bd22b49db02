"""The table people keep by hand: one row per variant of a sweep, the swept keys as columns, CV, fold and seed
spread, LB where lb_scores.yaml has it, and which row is best and how honestly it was picked.

Picking the best of N variants on the OOF that also scores it is optimistic: the best row is marked
`selected_of: N` and `cv_optimistic`. With `select: nested`, each fold's variant is picked on the other folds
only and scored on that fold; `cv_nested` is the CV of those picks (the out-of-fold score of the procedure
"take the best variant"), as an ensemble's `search` reports its nested weights.

Reads the variants' score files (results/scores/{model}.json, results/ensembles/{e}/score.json), the seeds'
score files, and for `select: nested` the variants' OOF files; writes results/sweeps/{name}.csv, .md and .json
(the leaderboard and the sweep's report figure read the JSON).
"""
from __future__ import annotations

import argparse
import json
import math
from typing import Any, Sequence

import numpy as np
import polars as pl

from workflow_scripts.errors import OoflineError, run_cli
from workflow_scripts.io import atomic_path, read_json, write_json

# the table's own columns; swept keys and member weights come before them
SCORE_COLUMNS = {
    "variant": pl.String, "metric": pl.String, "cv": pl.Float64, "cv_fold_mean": pl.Float64, "cv_fold_std": pl.Float64,
    "cv_in_sample": pl.Float64, "seeds": pl.Int64, "cv_seeds": pl.String, "cv_seed_mean": pl.Float64,
    "cv_seed_std": pl.Float64, "lb_public": pl.Float64, "lb_private": pl.Float64, "rank": pl.Int64,
    "selected": pl.Boolean, "selected_of": pl.Int64, "cv_optimistic": pl.Boolean, "cv_nested": pl.Float64,
}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


# ---------------------------------------------------------------------------------------------- selection

def rank_order(scores: Sequence[float], direction: int) -> list[int]:
    """Indices from best to worst (direction +1: higher is better); ties keep config order, NaN last."""
    keyed = [(math.isnan(s), -direction * s if not math.isnan(s) else 0.0, i) for i, s in enumerate(scores)]
    return [i for _, _, i in sorted(keyed)]


def nested_selection(spec, oof: Sequence[np.ndarray], targets: np.ndarray, folds: np.ndarray, metric: str) -> dict:
    """Pick a variant per fold on the other folds, score the picks out of fold.

    oof: per variant (n_rows, n_columns) probabilities, rows aligned with `targets` (n_rows, n_columns) and
    `folds` (n_rows,). Returns {"score", "folds": {fold: score}, "fold_mean", "fold_std", "picks": {fold:
    variant index}, "other_fold_scores": {fold: [score per variant]}}."""
    from workflow_scripts import metrics

    direction = metrics.metric_direction(metric)
    fold_values = sorted(set(np.asarray(folds).tolist()))
    if len(fold_values) < 2:
        raise OoflineError("select: nested needs OOF rows from at least 2 folds")
    picked = np.zeros_like(oof[0])
    picks, other_scores = {}, {}
    for fold in fold_values:
        held_out = folds == fold
        scores = [metrics.task_scores(spec, probs[~held_out], targets[~held_out], metric)["score"] for probs in oof]
        choice = metrics.best_index(scores, direction)
        picks[str(fold)], other_scores[str(fold)] = choice, scores
        picked[held_out] = oof[choice][held_out]
    scored = metrics.fold_scores(spec, picked, targets, folds, metric)
    return {"score": scored["score"], "folds": {fold: value["score"] for fold, value in scored["folds"].items()},
            "fold_mean": scored["fold_mean"], "fold_std": scored["fold_std"], "picks": picks,
            "other_fold_scores": other_scores}


def aligned_oof(frames: Sequence[pl.DataFrame], names: Sequence[str], columns: list[str]
                ) -> tuple[pl.DataFrame, list[np.ndarray]]:
    """(id/fold frame, per-variant arrays) in the first variant's row order; every variant must have the same
    rows in the same folds (a sweep compares variants on the same OOF rows)."""
    base = frames[0].select("id", "fold")
    arrays = []
    for name, frame in zip(names, frames):
        aligned = base.join(frame, on="id", how="left", maintain_order="left", suffix="_variant")
        if frame.height != base.height or aligned[columns[0]].null_count():
            raise OoflineError(f"sweep variant {name!r} has OOF rows for other ids than {names[0]!r}: select: nested "
                               "compares variants on the same rows (do the variants train different folds?)")
        if not aligned["fold_variant"].equals(aligned["fold"], check_names=False):
            raise OoflineError(f"sweep variant {name!r} puts some ids in other folds than {names[0]!r}")
        arrays.append(aligned.select(columns).to_numpy().astype(np.float32))
    return base, arrays


# ---------------------------------------------------------------------------------------------- the table

def _column_names(spec: dict) -> dict[str, str]:
    """Swept value key -> table column: keys as they are, member weights under the member's name."""
    names = {}
    for key in spec["columns"]:
        names[key] = key if key not in SCORE_COLUMNS else f"sweep.{key}"
    for member in spec.get("member_columns", []):
        column = member if member not in SCORE_COLUMNS and member not in names.values() else f"member.{member}"
        names[f"member:{member}"] = column
    return names


def build_table(spec: dict, scores: Sequence[dict], seed_scores: dict[str, dict], lb_scores: dict[str, dict],
                metric: str, nested: dict | None = None) -> tuple[pl.DataFrame, dict]:
    """The sweep's table (one row per variant, in config order) and its summary (best row, selection).

    scores: the variants' score payloads in spec["variants"] order; seed_scores: per-seed model name -> payload;
    nested: nested_selection's result (picks as variant indices) for select: nested."""
    from workflow_scripts.metrics import metric_direction

    variants = spec["variants"]
    if len(scores) != len(variants):
        raise OoflineError(f"sweep {spec['name']}: {len(scores)} score files for {len(variants)} variants")
    names = _column_names(spec)
    direction = metric_direction(metric)
    rows = []
    for variant, payload in zip(variants, scores):
        if payload.get("metric") not in (None, metric):
            raise OoflineError(f"sweep {spec['name']}: {variant['name']} is scored on {payload.get('metric')}, not {metric}")
        seed_values = [_number(seed_scores[model].get("score")) for model in variant["seeds"].values()]
        row = {names[key]: value for key, value in variant["values"].items()}
        row.update({
            "variant": variant["name"], "metric": metric, "cv": _number(payload.get("score")),
            "cv_fold_mean": _number(payload.get("fold_mean")), "cv_fold_std": _number(payload.get("fold_std")),
            "cv_in_sample": _number(payload.get("in_sample_score")) if payload.get("nested") else None,
            "seeds": len(seed_values) or None,
            "cv_seeds": " ".join(f"{value:.5f}" for value in seed_values) or None,
            "cv_seed_mean": float(np.mean(seed_values)) if seed_values else None,
            "cv_seed_std": float(np.std(seed_values)) if seed_values else None,
            "lb_public": _number((lb_scores.get(variant["name"]) or {}).get("public")),
            "lb_private": _number((lb_scores.get(variant["name"]) or {}).get("private")),
            "selected": False, "selected_of": None, "cv_optimistic": None, "cv_nested": None,
        })
        rows.append(row)
    order = rank_order([row["cv"] if row["cv"] is not None else math.nan for row in rows], direction)
    for position, index in enumerate(order, start=1):
        rows[index]["rank"] = position
    best = order[0] if rows else None
    summary = {"name": spec["name"], "section": spec["section"], "metric": metric, "select": spec.get("select"),
               "variants": len(rows), "columns": [names[key] for key in spec["columns"]],
               "member_columns": [names[f"member:{m}"] for m in spec.get("member_columns", [])],
               "best": None, "best_cv": None, "selected_of": None, "nested": None}
    if best is not None and len(rows) > 1:
        rows[best].update(selected=True, selected_of=len(rows), cv_optimistic=True)
        summary.update(best=rows[best]["variant"], best_cv=rows[best]["cv"], selected_of=len(rows))
    if nested is not None:
        picks = {fold: variants[index]["name"] for fold, index in nested["picks"].items()}
        summary["nested"] = {**{key: nested[key] for key in ("score", "folds", "fold_mean", "fold_std")},
                             "picks": picks, "other_fold_scores": nested["other_fold_scores"]}
        if best is not None:
            rows[best]["cv_nested"] = nested["score"]
    value_columns = list(names.values())
    schema = {column: _dtype([row.get(column) for row in rows]) for column in value_columns}
    schema.update(SCORE_COLUMNS)
    ordered = ["variant"] + value_columns + [c for c in SCORE_COLUMNS if c != "variant"]
    frame = pl.DataFrame([{column: _coerce(row.get(column), schema[column]) for column in ordered} for row in rows],
                         schema={column: schema[column] for column in ordered}, orient="row")
    summary["rows"] = frame.to_dicts()
    seed_rows = []
    for variant in variants:
        for seed, model in variant["seeds"].items():
            seed_rows.append({"name": model, "variant": variant["name"], "seed": int(seed),
                              "cv": _number(seed_scores[model].get("score"))})
    summary["seed_rows"] = seed_rows
    # the swept values as leaderboard cells (1e-4, 16, 4bit): the leaderboard's columns are text
    summary["values"] = {variant["name"]: {names[key]: cell_text(value) for key, value in variant["values"].items()
                                           if not key.startswith("member:")} for variant in variants}
    return frame, summary


def cell_text(value: Any) -> str | None:
    """A swept value as text: numbers and words as in variant names (1e-4, 0.05, 16, 4bit), lists and
    mappings as JSON."""
    from workflow_scripts.sweeps import value_part

    if value is None or isinstance(value, str):
        return value
    return value_part(value) if isinstance(value, (bool, int, float)) else json.dumps(value, sort_keys=True)


def _dtype(values: list) -> Any:
    """A swept column's type: boolean, whole numbers, numbers, else text (lists and mappings as JSON)."""
    present = [value for value in values if value is not None]
    if present and all(isinstance(v, bool) for v in present):
        return pl.Boolean
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return pl.Float64 if any(isinstance(v, float) for v in present) else pl.Int64
    return pl.String


def _coerce(value: Any, dtype: Any) -> Any:
    if value is None:
        return None
    if dtype == pl.String and not isinstance(value, str):
        return json.dumps(value, sort_keys=True)
    if dtype == pl.Float64 and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _cell(value: Any, column: str, member_columns: set[str], all_ones: bool) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if column in member_columns:
        return "✓" if all_ones else f"{value:g}"
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, float):
        return f"{value:.5f}" if column.startswith(("cv", "lb")) else f"{value:g}"
    return str(value)


def to_markdown(frame: pl.DataFrame, summary: dict) -> str:
    """The table as Markdown, with the selection said in words above it."""
    metric, count = summary["metric"], summary["variants"]
    lines = [f"# Sweep {summary['section']}.{summary['name']}: {count} variant{'s' if count != 1 else ''}, {metric}", ""]
    if summary["best"]:
        lines.append(f"Best of {count}: `{summary['best']}`, CV {summary['best_cv']:.5f}. **Optimistic**: it was picked "
                     f"as the best of {count} on the same OOF that scores it (selected_of: {count}, cv_optimistic); "
                     "a fresh sample would most likely score it lower.")
    seeded = frame.filter(pl.col("seeds").is_not_null())
    if seeded.height and not summary["best"]:
        row = seeded.row(0, named=True)
        lines.append(f"`{row['variant']}` is the mean of {row['seeds']} seeds: CV {row['cv']:.5f}; the seeds score "
                     f"{row['cv_seeds']} (std {row['cv_seed_std']:.5f}): a difference smaller than that is noise.")
    nested = summary.get("nested")
    if nested:
        picks = ", ".join(f"fold {fold}: `{name}`" for fold, name in nested["picks"].items())
        lines.append("")
        lines.append(f"Nested selection (select: nested): picking the variant on the other folds for each fold scores "
                     f"**{nested['score']:.5f}** out of fold (cv_nested; picks: {picks}).")
    elif summary["best"]:
        lines.append("")
        lines.append("`select: nested` on the sweep also reports the out-of-fold score of picking a variant per fold.")
    lines.append("")
    member_columns = set(summary["member_columns"])
    weights = [value for column in member_columns for value in frame[column].to_list() if value is not None]
    all_ones = bool(weights) and all(value == 1.0 for value in weights)
    shown = lambda c: frame[c].null_count() < frame.height and not (frame[c].dtype == pl.Boolean and not frame[c].any())  # noqa: E731
    columns = [c for c in frame.columns if c == "variant" or c in member_columns or shown(c)]
    lines += ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for record in frame.select(columns).iter_rows():
        lines.append("| " + " | ".join(_cell(v, c, member_columns, all_ones) for v, c in zip(record, columns)) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- CLI

def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, help="the sweep as JSON (workflow_scripts.sweeps.Sweep.to_json)")
    parser.add_argument("--scores", nargs="+", required=True, help="each variant's score JSON, in --spec order")
    parser.add_argument("--seed-scores", nargs="*", default=[], help="each per-seed model's score JSON, in --spec order")
    parser.add_argument("--oof", nargs="*", default=None, help="select nested: each variant's OOF parquet")
    parser.add_argument("--targets", default=None, help="select nested: results/targets.parquet")
    parser.add_argument("--labels", default=None, help="select nested: results/labels.json")
    parser.add_argument("--metric", required=True)
    parser.add_argument("--lb-scores", default=None, help="lb_scores.yaml (variant names; optional)")
    parser.add_argument("--out-csv", required=True)
    parser.add_argument("--out-md", required=True)
    parser.add_argument("--out-json", required=True)
    args = parser.parse_args(argv)
    spec = json.loads(args.spec)
    seed_models = [model for variant in spec["variants"] for model in variant["seeds"].values()]
    if len(args.seed_scores) != len(seed_models):
        raise OoflineError(f"--seed-scores: {len(args.seed_scores)} files for {len(seed_models)} per-seed models")
    from workflow_scripts.leaderboard import load_lb_scores

    nested = None
    if spec.get("select") == "nested":
        from workflow_scripts import metrics
        from workflow_scripts.labels import LabelSpec

        if not (args.oof and args.targets and args.labels) or len(args.oof) != len(spec["variants"]):
            raise OoflineError("select: nested needs --oof (one per variant), --targets and --labels")
        labels = LabelSpec.load(args.labels)
        names = [variant["name"] for variant in spec["variants"]]
        frames = [metrics.read_predictions(path, labels, require_fold=True) for path in args.oof]
        keys, arrays = aligned_oof(frames, names, labels.probability_columns)
        targets = metrics.aligned_targets(keys, args.targets, labels)
        nested = nested_selection(labels, arrays, targets, keys["fold"].to_numpy(), args.metric)
    frame, summary = build_table(spec, [read_json(path) for path in args.scores],
                                 dict(zip(seed_models, (read_json(path) for path in args.seed_scores))),
                                 load_lb_scores(args.lb_scores), args.metric, nested)
    with atomic_path(args.out_csv) as tmp:
        frame.write_csv(tmp, line_terminator="\n", float_precision=6)
    with atomic_path(args.out_md) as tmp:
        tmp.write_text(to_markdown(frame, summary))
    write_json(summary, args.out_json)
    print(f"sweep {spec['name']}: {summary['variants']} variants -> {args.out_csv}", flush=True)
    if summary["best"]:
        print(f"sweep {spec['name']}: best of {summary['variants']} is {summary['best']} (CV {summary['best_cv']:.5f}, "
              "optimistic: picked on the OOF it is scored on)", flush=True)
    if summary["nested"]:
        print(f"sweep {spec['name']}: nested selection CV {summary['nested']['score']:.5f} "
              f"(picks: {summary['nested']['picks']})", flush=True)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
