"""CV next to LB: one table with a row per model, per model fold, per ensemble and per submission.

Reads per-model score JSONs (results/scores/{model}.json), ensemble score JSONs, submission manifests and a
user-edited lb_scores.yaml (submission name -> {public: score, private: score}); writes leaderboard.csv/.md.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any, Sequence

import polars as pl

from workflow_scripts.errors import OoflineError, run_cli
from workflow_scripts.io import atomic_path, read_json

KINDS = ("prior", "model", "fold", "ensemble", "submission")
SCHEMA = {
    "kind": pl.String, "name": pl.String, "fold": pl.String, "metric": pl.String, "cv": pl.Float64,
    "cv_fold_mean": pl.Float64, "cv_fold_std": pl.Float64, "cv_in_sample": pl.Float64,
    "cv_thresholded": pl.Float64, "cv_thresholded_nested": pl.Float64, "lb_public": pl.Float64, "lb_private": pl.Float64,
    "lift_over_prior": pl.Float64, "beats_prior": pl.Boolean, "source": pl.String,
}
# where a model's test predictions come from; its CV always comes from its fold models
SCHEMA["test_predictions"] = pl.String
# select_epoch: best. cv_optimistic is true on a row whose CV rests on epochs picked on the folds they score (the
# model, its folds, ensembles over it, submissions from them); cv_plain is the model's CV with its last epochs.
# Honest rows leave both empty, so a board without such models has the columns it always had, empty.
# Teacher-made labels that are not nested (a teacher that saw the held-out fold labelled the rows a student fold
# trained on) flag the same way, without a plain CV; cv_optimistic_reason says which cause, per row.
SCHEMA["cv_optimistic"] = pl.Boolean
SCHEMA["cv_plain"] = pl.Float64
SCHEMA["cv_optimistic_reason"] = pl.String
OPTIMISTIC_NOTE = ("**Optimistic CV** (select_epoch: best: each fold's epoch was picked on that fold's labels, "
                   "compare cv_plain, the last epoch's CV, with other rows (a model's lift over the prior is taken "
                   "from it); teacher labels: a fold model learnt from labels made by teachers that saw its "
                   "held-out fold, see cv_optimistic_reason; a sweep's best variant: picked as the best of "
                   "selected_of variants on the OOF it is scored on, cv_nested is the nested pick's score; read "
                   "ensembles and submissions over these models as optimistic too): ")
SELECT_EPOCH_REASON = "select_epoch: best (each fold's epoch picked on that fold's labels)"
# sweeps (results/sweeps/NAME.json): the sweep a row is a variant (or a per-seed model) of, on the best variant
# the number of variants it was picked from (its CV is then optimistic) and, with select: nested, the out-of-fold
# score of picking per fold; on a seeded variant (the seeds' mean) the seeds and the spread of their CVs. Each
# swept key is one more column after these (named as the key; sweep.KEY where a column has that name already).
SCHEMA["sweep"] = pl.String
SCHEMA["selected_of"] = pl.Int64
SCHEMA["cv_nested"] = pl.Float64
SCHEMA["seeds"] = pl.String
SCHEMA["cv_seed_mean"] = pl.Float64
SCHEMA["cv_seed_std"] = pl.Float64


# Retrieval pipelines (stages.json): a `retrieval` row per stage (zero-shot, each iteration's embedder alone and
# reranked) with MAP@k as cv, its Recall@k and its lift over the zero-shot embedder on the valid fold; `submitted`
# marks the stage the pipeline's submission ranks with, and a `submission` row per pipeline carries that stage.
KINDS = KINDS + ("retrieval",)
SCHEMA["recall_at_k"] = pl.Float64
SCHEMA["lift_over_zero_shot"] = pl.Float64
SCHEMA["below_zero_shot"] = pl.Boolean
SCHEMA["submitted"] = pl.Boolean
SCHEMA["retrieval_stage"] = pl.String
# a row's position among its kind's rows where the name alone would misorder it (retrieval stages: cheapest first)
SORT_NAME = "_sort_name"
CHOSEN_ON_VALID_FOLD_NOTE = ("**Chosen on the valid fold** (retrieval: these scores picked a stage or an epoch on the "
                             "fold they are measured on, so they are optimistic): ")
BELOW_ZERO_SHOT_NOTE = ("**Below the zero-shot embedder** (retrieval stages that rank the valid fold worse than the "
                        "embedder before any fine-tune): ")


def load_lb_scores(path: str | Path | None) -> dict[str, dict[str, float | None]]:
    """lb_scores.yaml: {submission, model or ensemble name: {public: float, private: float}} (or name: public
    score); a missing file means no LB yet."""
    if not path or not Path(path).exists():
        return {}
    import yaml

    try:
        payload = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as error:
        raise OoflineError(f"{path}: not valid YAML ({error})") from error
    if not isinstance(payload, dict):
        raise OoflineError(f"{path}: expected a mapping submission name -> {{public: score, private: score}}")
    scores = {}
    for name, entry in payload.items():
        if isinstance(entry, (int, float)) and not isinstance(entry, bool):
            entry = {"public": entry}
        if not isinstance(entry, dict):
            raise OoflineError(f"{path}: entry {name!r} must be a mapping with public/private scores")
        unknown = sorted(set(entry) - {"public", "private"})
        if unknown:
            raise OoflineError(f"{path}: entry {name!r} has unknown keys {unknown} (expected public, private)")
        for key, value in entry.items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise OoflineError(f"{path}: {name}.{key} must be a number, got {value!r}")
        scores[str(name)] = {"public": entry.get("public"), "private": entry.get("private")}
    return scores


# a row's own prior score (on the rows it was scored on), read by add_lift; not a leaderboard column
PRIOR_ON_ROWS = "_prior_on_rows"


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _row(**values: Any) -> dict:
    row = {key: None for key in SCHEMA}
    row.update(values)
    return row


def model_rows(path: str | Path) -> list[dict]:
    payload = read_json(path)
    name = payload.get("model") or Path(path).stem
    if "score" not in payload:
        raise OoflineError(f"{path}: model score file has no 'score' key")
    from workflow_scripts.oof import OPTIMISTIC_SELECTION

    selected = payload.get("selection") == OPTIMISTIC_SELECTION
    plain = (payload.get("plain") or {}) if selected else {}
    reasons = ([SELECT_EPOCH_REASON] if selected else []) + list(payload.get("cv_optimistic_reasons") or [])
    flag = True if selected or payload.get("cv_optimistic") else None
    reason = "; ".join(reasons) or None
    rows = [_row(kind="model", name=name, metric=payload.get("metric"), cv=_number(payload["score"]),
                 cv_fold_mean=_number(payload.get("fold_mean")), cv_fold_std=_number(payload.get("fold_std")),
                 test_predictions=payload.get("test_predictions"), cv_optimistic=flag,
                 cv_plain=_number(plain.get("score")), cv_optimistic_reason=reason, source=Path(path).as_posix(),
                 **{PRIOR_ON_ROWS: _number(payload.get("prior_score"))})]
    for fold, scores in sorted(payload.get("folds", {}).items(), key=lambda item: int(item[0])):
        rows.append(_row(kind="fold", name=name, fold=str(fold), metric=payload.get("metric"),
                         cv=_number(scores.get("score")), cv_optimistic=flag,
                         cv_plain=_number((plain.get("folds") or {}).get(fold, {}).get("score")),
                         cv_optimistic_reason=reason, source=Path(path).as_posix()))
    return rows


def ensemble_rows(path: str | Path) -> list[dict]:
    payload = read_json(path)
    name = payload.get("ensemble") or Path(path).parent.name
    return [_row(kind="ensemble", name=name, metric=payload.get("metric"), cv=_number(payload.get("score")),
                 cv_fold_mean=_number(payload.get("fold_mean")), cv_fold_std=_number(payload.get("fold_std")),
                 cv_in_sample=_number(payload.get("in_sample_score")), source=Path(path).as_posix(),
                 **{PRIOR_ON_ROWS: _number(payload.get("prior_score"))})]


def ensemble_members_of(path: str | Path) -> tuple[str, list[str]]:
    payload = read_json(path)
    return payload.get("ensemble") or Path(path).parent.name, list(payload.get("members") or [])


def flag_optimistic_sources(rows: list[dict], members: dict[str, list[str]]) -> None:
    """Mark ensembles with an optimistic member (a model or ensemble, at any depth) cv_optimistic."""
    optimistic = {row["name"] for row in rows if row["kind"] in ("model", "ensemble") and row["cv_optimistic"]}
    changed = True
    while changed:  # members may be ensembles listed later
        changed = False
        for name, names in members.items():
            if name not in optimistic and optimistic & set(names):
                optimistic.add(name)
                changed = True
    for row in rows:
        below = sorted(optimistic & set(members.get(row["name"], [])))
        if row["kind"] == "ensemble" and row["name"] in optimistic and below:
            row["cv_optimistic"] = True
            # a sweep's pick over optimistic members keeps both reasons
            row["cv_optimistic_reason"] = "; ".join(filter(None, [
                row["cv_optimistic_reason"], "over optimistic members: " + ", ".join(below)]))


def submission_row(path: str | Path, optimistic_models: set[str] = frozenset()) -> dict:
    manifest = read_json(path)
    hashed = manifest.get("hashed", {})
    name = hashed.get("submission") or Path(path).parent.name
    cv = thresholded = thresholded_nested = in_sample = metric = plain = prior = None
    for scores in hashed.get("oof_scores", {}).values():
        metric = metric or scores.get("metric")
        if cv is None and "score" in scores:
            cv, in_sample = _number(scores["score"]), _number(scores.get("in_sample_score"))
            plain, prior = _number(scores.get("plain_score")), _number(scores.get("prior_score"))
        if "oof_score_after" in scores:
            thresholded = _number(scores["oof_score_after"])
            thresholded_nested = _number(scores.get("oof_score_after_nested"))
    # its source's models, as hashed: one picked its epochs on the folds it is scored on
    # (or learnt from teacher labels that saw it: a model row of this board flagged so)
    models = (hashed.get("config") or {}).get("models") or {}
    flagged = sorted(name for name, m in models.items()
                     if name in optimistic_models or (isinstance(m, dict) and m.get("select_epoch") == "best"))
    source = (hashed.get("config") or {}).get("submission", {}).get("source")
    if source in optimistic_models and source not in flagged:  # e.g. the best of a sweep's variants
        flagged.append(source)
    return _row(kind="submission", name=name, metric=metric, cv=cv, cv_in_sample=in_sample,
                cv_thresholded=thresholded, cv_thresholded_nested=thresholded_nested, cv_optimistic=bool(flagged) or None,
                cv_optimistic_reason=("from optimistic models: " + ", ".join(flagged)) if flagged else None,
                cv_plain=plain, source=Path(path).as_posix(), **{PRIOR_ON_ROWS: prior})


def prior_row(path: str | Path) -> dict:
    payload = read_json(path)
    if "score" not in payload:
        raise OoflineError(f"{path}: prior score file has no 'score' key")
    return _row(kind="prior", name="prior", metric=payload.get("metric"), cv=_number(payload["score"]),
                cv_fold_mean=_number(payload.get("fold_mean")), cv_fold_std=_number(payload.get("fold_std")),
                source=Path(path).as_posix())


def add_lift(rows: list[dict], prior: dict) -> None:
    """Fill lift_over_prior / beats_prior of every scored row (not the prior's own, not per-fold rows)."""
    from workflow_scripts.prior import lift_over_prior

    for row in rows:
        if row["kind"] in ("prior", "fold") or row["cv"] is None or row["metric"] != prior["metric"]:
            continue
        # a best-epoch model (and a submission of it) is measured by its plain CV: the optimistic one would flatter it
        honest = row["cv_plain"] if row["cv_plain"] is not None else row["cv"]
        # against the prior on the same rows (a model over some folds scores only their rows)
        baseline = row.get(PRIOR_ON_ROWS) if row.get(PRIOR_ON_ROWS) is not None else prior["cv"]
        row["lift_over_prior"] = lift_over_prior(honest, baseline, prior["metric"])
        row["beats_prior"] = row["lift_over_prior"] > 0


def optimistic_rows(board: pl.DataFrame) -> list[str]:
    """`kind name` of every model, ensemble and submission row whose CV is optimistic (select_epoch: best);
    retrieval rows have their own note (chosen_on_valid_fold)."""
    flagged = board.filter((pl.col("cv_optimistic") == True) & (pl.col("kind") != "fold")  # noqa: E712
                           & ~retrieval_row())
    return [f"{kind} {name}" for kind, name in flagged.select("kind", "name").iter_rows()]


def retrieval_row() -> pl.Expr:
    """A retrieval stage's row, or a retrieval pipeline's submission row."""
    return (pl.col("kind") == "retrieval") | pl.col("retrieval_stage").is_not_null()


def chosen_on_valid_fold(board: pl.DataFrame) -> list[str]:
    """`kind name (reason)` of every retrieval row whose valid-fold score was used to choose it (submit: best, or
    a fine-tune's select_checkpoint: best), so it is optimistic."""
    flagged = board.filter((pl.col("cv_optimistic") == True) & retrieval_row())  # noqa: E712
    return [f"{kind} {name} ({reason})"
            for kind, name, reason in flagged.select("kind", "name", "cv_optimistic_reason").iter_rows()]


def not_beating_prior(board: pl.DataFrame) -> list[str]:
    """`kind name` of every row whose CV does not beat the prior baseline."""
    flagged = board.filter(pl.col("beats_prior") == False)  # noqa: E712 (polars expression)
    return [f"{kind} {name}" for kind, name in flagged.select("kind", "name").iter_rows()]


def retrieval_rows(path: str | Path) -> list[dict]:
    """stages.json: a `retrieval` row per stage, cheapest first, and the pipeline's `submission` row (the submitted
    stage's score; optimistic where `submit: best` chose it on the valid fold, or its fine-tunes chose epochs there)."""
    payload = read_json(path)
    pipeline = payload.get("pipeline") or Path(path).parent.name
    rows = []
    for index, stage in enumerate(payload.get("stages") or []):
        reasons = [stage.get("optimistic_reason")]
        if stage.get("submitted") and payload.get("selected_on_valid_fold"):
            reasons.insert(0, "submit: best chose this stage on the valid fold")
        reason = "; ".join(filter(None, reasons)) or None
        rows.append(_row(kind="retrieval", name=f"{pipeline}/{stage['stage']}", metric=stage.get("metric"),
                         cv=_number(stage.get("map")), recall_at_k=_number(stage.get("recall")),
                         lift_over_zero_shot=_number(stage.get("lift_over_zero_shot")),
                         below_zero_shot=stage.get("below_zero_shot"), submitted=bool(stage.get("submitted")),
                         cv_optimistic=True if reason else None, cv_optimistic_reason=reason,
                         source=Path(path).as_posix(), **{SORT_NAME: f"{pipeline}/{index:04d}"}))
    submitted = next((row for row in rows if row["submitted"]), None)
    if submitted is not None:
        rows.append(_row(kind="submission", name=pipeline, metric=submitted["metric"], cv=submitted["cv"],
                         recall_at_k=submitted["recall_at_k"], lift_over_zero_shot=submitted["lift_over_zero_shot"],
                         below_zero_shot=submitted["below_zero_shot"], cv_optimistic=submitted["cv_optimistic"],
                         cv_optimistic_reason=submitted["cv_optimistic_reason"],
                         retrieval_stage=submitted["name"].split("/", 1)[1], source=Path(path).as_posix()))
    return rows


def retrieval_warnings(paths: Sequence[str | Path]) -> list[str]:
    """The warnings of every retrieval pipeline's stage choice (a submitted stage below zero-shot)."""
    return [warning for path in paths for warning in read_json(path).get("warnings") or []]


def below_zero_shot(board: pl.DataFrame) -> list[str]:
    """`name (lift)` of every retrieval stage that scored below the zero-shot embedder."""
    if "below_zero_shot" not in board.columns:
        return []
    flagged = board.filter((pl.col("kind") == "retrieval") & (pl.col("below_zero_shot") == True))  # noqa: E712
    return [f"{name} ({lift:+.4f})" for name, lift in flagged.select("name", "lift_over_zero_shot").iter_rows()]


SWEEP_REASON = "best of {n} variants of sweep {sweep}, picked on the OOF it is scored on"


def apply_sweeps(rows: list[dict], sweeps: Sequence[dict]) -> list[str]:
    """Mark each sweep's variant rows (and per-seed model rows) with the sweep, its swept values, the seeds'
    spread and, on the best of several variants, selected_of and cv_optimistic; returns the swept keys'
    column names, in order. sweeps: results/sweeps/NAME.json payloads (workflow_scripts.sweep_table)."""
    by_name = {}
    for row in rows:
        if row["kind"] in ("model", "ensemble"):
            by_name[row["name"]] = row
    columns: list[str] = []
    for sweep in sweeps:
        for name, values in (sweep.get("values") or {}).items():
            for key in values:
                column = key if key not in SCHEMA else f"sweep.{key}"
                if column not in columns:
                    columns.append(column)
        for record in sweep.get("rows") or []:
            row = by_name.get(record["variant"])
            if row is None:
                continue
            row["sweep"] = sweep["name"]
            for key, value in (sweep.get("values") or {}).get(record["variant"], {}).items():
                row[key if key not in SCHEMA else f"sweep.{key}"] = value
            if record.get("seeds"):
                seeds = [r["seed"] for r in sweep.get("seed_rows") or [] if r["variant"] == record["variant"]]
                row.update(seeds=" ".join(map(str, seeds)), cv_seed_mean=_number(record.get("cv_seed_mean")),
                           cv_seed_std=_number(record.get("cv_seed_std")))
            if record.get("selected"):
                nested = sweep.get("nested") or {}
                reason = SWEEP_REASON.format(n=record["selected_of"], sweep=sweep["name"])
                if nested.get("score") is not None:
                    reason += f" (nested selection: {nested['score']:.5f})"
                row.update(selected_of=record["selected_of"], cv_optimistic=True, cv_nested=_number(nested.get("score")),
                           cv_optimistic_reason="; ".join(filter(None, [row.get("cv_optimistic_reason"), reason])))
        for record in sweep.get("seed_rows") or []:
            row = by_name.get(record["name"])
            if row is not None:
                row["sweep"], row["seeds"] = sweep["name"], str(record["seed"])
                for key, value in (sweep.get("values") or {}).get(record["variant"], {}).items():
                    row[key if key not in SCHEMA else f"sweep.{key}"] = value
    return columns


def build_leaderboard(model_scores: Sequence[str | Path] = (), ensemble_scores: Sequence[str | Path] = (),
                      manifests: Sequence[str | Path] = (), lb_scores: dict | None = None,
                      prior_scores: str | Path | None = None, retrieval_stages: Sequence[str | Path] = (),
                      sweeps: Sequence[dict] = ()) -> pl.DataFrame:
    """The leaderboard frame (columns as SCHEMA, then each sweep's swept keys), rows ordered by kind then name
    then fold."""
    rows = [prior_row(prior_scores)] if prior_scores else []
    rows += [row for path in model_scores for row in model_rows(path)]
    rows += [row for path in ensemble_scores for row in ensemble_rows(path)]
    flag_optimistic_sources(rows, dict(ensemble_members_of(path) for path in ensemble_scores))
    # after: a sweep's pick flags its own row and its submissions, not every ensemble a sweep builds over it
    swept = apply_sweeps(rows, sweeps)
    optimistic_models = {row["name"] for row in rows if row["kind"] in ("model", "ensemble") and row["cv_optimistic"]}
    rows += [submission_row(path, optimistic_models) for path in manifests]
    # another task's rows: measured against the zero-shot embedder, never the classification prior
    retrieval = [row for path in retrieval_stages for row in retrieval_rows(path)]
    lb_scores = lb_scores or {}
    submitted = {row["name"] for row in rows + retrieval if row["kind"] == "submission"}
    # an LB score may name a model or an ensemble (a write-up's table scores blends), else a submission
    scored = {row["name"] for row in rows if row["kind"] in ("model", "ensemble")}
    for name in lb_scores:
        if name not in submitted and name not in scored:  # a submission built elsewhere still belongs in the table
            rows.append(_row(kind="submission", name=name, source="lb_scores"))
    for row in rows + retrieval:
        if row["kind"] in ("submission", "model", "ensemble") and row["name"] in lb_scores:
            row["lb_public"] = _number(lb_scores[row["name"]].get("public"))
            row["lb_private"] = _number(lb_scores[row["name"]].get("private"))
    if prior_scores:
        add_lift(rows, rows[0])
    rows += retrieval
    rows.sort(key=lambda r: (KINDS.index(r["kind"]), r.get(SORT_NAME) or r["name"], int(r["fold"]) if r["fold"] else -1))
    schema = {**SCHEMA, **{column: pl.String for column in swept}}
    return pl.DataFrame([{key: row.get(key) for key in schema} for row in rows], schema=schema, orient="row")


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.5f}" if isinstance(value, float) else str(value)


def to_markdown(board: pl.DataFrame, warnings: Sequence[str] = ()) -> str:
    """One markdown table per kind, with only the columns that kind fills; `warnings` (retrieval stage choices)
    head the page."""
    titles = {"prior": "Prior baseline (class shares of the training folds)", "model": "Models", "fold": "Folds",
              "ensemble": "Ensembles", "submission": "Submissions",
              "retrieval": "Retrieval stages (valid fold; cv is MAP@k, lift over the zero-shot embedder)"}
    parts = ["# Leaderboard: CV vs LB", ""]
    parts += [line for warning in warnings for line in (f"**WARNING**: {warning}", "")]
    below = below_zero_shot(board)
    if below:
        parts += [BELOW_ZERO_SHOT_NOTE + ", ".join(below), ""]
    chosen = chosen_on_valid_fold(board)
    if chosen:
        parts += [CHOSEN_ON_VALID_FOLD_NOTE + "; ".join(chosen), ""]
    flagged = not_beating_prior(board)
    if flagged:
        parts += ["**Not better than the prior baseline** (learned nothing usable on the task metric): "
                  + ", ".join(flagged), ""]
    optimistic = optimistic_rows(board)
    if optimistic:
        parts += [OPTIMISTIC_NOTE + ", ".join(optimistic), ""]
    for kind in KINDS:
        rows = board.filter(pl.col("kind") == kind).drop("kind", "source")
        if rows.height == 0:
            continue
        columns = [c for c in rows.columns if c == "name" or rows[c].null_count() < rows.height]
        parts += [f"## {titles[kind]}", "", "| " + " | ".join(columns) + " |",
                  "|" + "|".join("---" for _ in columns) + "|"]
        for record in rows.select(columns).iter_rows():
            parts.append("| " + " | ".join(_cell(v) for v in record) + " |")
        parts.append("")
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-scores", nargs="*", default=[], help="results/scores/{model}.json files")
    parser.add_argument("--ensemble-scores", nargs="*", default=[], help="results/ensembles/{name}/score.json files")
    parser.add_argument("--manifests", nargs="*", default=[], help="results/submissions/{name}/manifest.json files")
    parser.add_argument("--lb-scores", default=None, help="lb_scores.yaml (optional; missing file = no LB yet)")
    parser.add_argument("--prior-scores", default=None, help="results/scores/prior.json: a prior row and every row's lift")
    parser.add_argument("--retrieval-stages", nargs="*", default=[],
                        help="results/retrieval/{pipeline}/stages.json files: a row per retrieval stage")
    parser.add_argument("--sweeps", nargs="*", default=[], help="results/sweeps/{name}.json files (sweep_table)")
    parser.add_argument("--out-csv", required=True)
    parser.add_argument("--out-md", required=True)
    args = parser.parse_args(argv)
    board = build_leaderboard(args.model_scores, args.ensemble_scores, args.manifests, load_lb_scores(args.lb_scores),
                              args.prior_scores, args.retrieval_stages, [read_json(path) for path in args.sweeps])
    warnings = retrieval_warnings(args.retrieval_stages)
    with atomic_path(args.out_csv) as tmp:
        board.write_csv(tmp, line_terminator="\n", float_precision=6)
    with atomic_path(args.out_md) as tmp:
        tmp.write_text(to_markdown(board, warnings) + "\n")
    print(f"leaderboard: {board.height} rows -> {args.out_csv}, {args.out_md}", flush=True)
    for row in not_beating_prior(board):
        print(f"WARNING: {row} does not beat the prior baseline", flush=True)
    for row in optimistic_rows(board):
        print(f"NOTE: {row} has an optimistic CV (see cv_optimistic_reason, and cv_plain where given)", flush=True)
    for row in chosen_on_valid_fold(board):
        print(f"NOTE: {row}: its valid-fold score is optimistic", flush=True)
    for row in below_zero_shot(board):
        print(f"NOTE: retrieval stage {row} ranks the valid fold worse than the zero-shot embedder", flush=True)
    for warning in warnings:
        print(f"WARNING: {warning}", flush=True)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
