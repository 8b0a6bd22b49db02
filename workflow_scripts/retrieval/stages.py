"""Every stage of a retrieval pipeline scored on the valid fold, and the stage the submission uses.

Stages, cheapest first: `zero_shot` (the embedder iteration 0 mines with, not fine-tuned), then per iteration
`iterN/embedder` (its fine-tuned embedder alone) and `iterN/reranked` (that embedder's top_n reordered by its
reranker). Each stage's MAP@k and Recall@k come from the score.json its evaluation wrote.

`submit` picks the submission's stage: `best` (the highest valid-fold MAP@k, ties to the earlier, cheaper stage;
that fold's score of the chosen stage is then optimistic, flagged `selected_on_valid_fold`), `last` (the last
iteration, reranked: the whole loop as configured), or a stage by name (`zero_shot`, `iter0/embedder`, ...).
A submitted stage that scored below the zero-shot embedder gets a WARNING (log, stages.json, leaderboard).

stages.json: every stage's scores and lift over zero-shot. submission_stage.json: the submitted stage, its
iteration, whether reranking applies, the model folders and test rankings it uses, and the evidence it was
chosen on; `submission_stage(path)` reads it (the Kaggle package and the submission step both do).
"""
from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from workflow_scripts.errors import OoflineError, run_cli
from workflow_scripts.io import read_json, write_json

ZERO_SHOT = "zero_shot"
SUBMIT_CHOICES = ("best", "last")  # or a stage name
STAGE_PATTERN = re.compile(r"zero_shot|iter(\d+)/(embedder|reranked)")
STAGE_KINDS = ("embedder", "reranked")  # an iteration's stages, as score.json's `overall` names them
SUBMISSION_STAGE_KEYS = ("pipeline", "stage", "iteration", "reranked", "embedder", "reranker", "test_rankings",
                         "ranking_column", "submit", "selected_on_valid_fold", "metric", "score", "evidence",
                         "warnings")


def stage_names(n_iterations: int) -> list[str]:
    """Every stage of a pipeline with `n_iterations` iterations, cheapest first."""
    return [ZERO_SHOT] + [f"iter{i}/{kind}" for i in range(n_iterations) for kind in STAGE_KINDS]


def default_submit(valid_fold: int | None) -> str:
    """best where there is a valid fold to choose on; last on a final fit (nothing is scored)."""
    return "last" if valid_fold is None else "best"


def resolve_submit(submit: str, n_iterations: int) -> str:
    """The stage `submit` names: `last` is the last iteration's reranked stage; `best` stays (chosen on scores)."""
    return f"iter{n_iterations - 1}/reranked" if submit == "last" else submit


def submit_problem(submit: Any, n_iterations: int, valid_fold: int | None) -> str | None:
    """Why `submit` cannot be used (a sentence), or None."""
    allowed = f"best, last or a stage: {', '.join(stage_names(n_iterations))}"
    if not isinstance(submit, str):
        return f"expected {allowed}, got {submit!r}"
    if submit in SUBMIT_CHOICES:
        if submit == "best" and valid_fold is None:
            return ("best chooses the stage on the valid fold, but valid_fold is null (a final fit scores nothing); "
                    "name a stage, e.g. iter0/embedder, or last")
        return None
    match = STAGE_PATTERN.fullmatch(submit)
    if not match or (match.group(1) is not None and int(match.group(1)) >= n_iterations):
        return f"{submit!r} is not a stage of this pipeline (expected {allowed})"
    return None


def stage_plan(out_dir: str, pipeline: str, zero_shot_model: str | None, n_iterations: int) -> list[dict]:
    """Where each stage's score, test rankings and models are: one entry per stage, cheapest first; no zero-shot
    entry when `zero_shot_model` is None (a final fit that does not submit it)."""
    root = f"{out_dir}/retrieval/{pipeline}"
    plan = []
    if zero_shot_model is not None:
        plan.append({"stage": ZERO_SHOT, "iteration": None, "reranked": False,
                     "embedder": f"{root}/base/{zero_shot_model}", "reranker": None,
                     "score": f"{root}/{ZERO_SHOT}/score.json", "test_rankings": f"{root}/{ZERO_SHOT}/test.parquet",
                     "ranking_column": "embedder_ids"})
    for i in range(n_iterations):
        for kind in STAGE_KINDS:
            reranked = kind == "reranked"
            plan.append({"stage": f"iter{i}/{kind}", "iteration": i, "reranked": reranked,
                         "embedder": f"{root}/iter{i}/embedder/merged",
                         "reranker": f"{root}/iter{i}/reranker/merged" if reranked else None,
                         "score": f"{root}/iter{i}/score.json", "test_rankings": f"{root}/iter{i}/test.parquet",
                         "ranking_column": "reranked_ids" if reranked else "embedder_ids"})
    return plan


def _optimistic_reason(stage: Mapping[str, Any], score: Mapping[str, Any]) -> str | None:
    """Why this stage's valid-fold score is optimistic: a fine-tune it uses chose its epoch on that fold."""
    chosen = score.get("checkpoint_selection") or {}
    roles = [role for role in ("embedder", "reranker") if role in chosen and (role == "embedder" or stage["reranked"])]
    if not roles:
        return None
    return f"select_checkpoint: best ({' and '.join(roles)} epoch chosen on this fold)"


def stage_rows(plan: Sequence[Mapping[str, Any]], scores: Mapping[str, Mapping[str, Any]]) -> list[dict]:
    """One row per planned stage: its MAP@k and Recall@k on the valid fold (None on a final fit), its lift over
    the zero-shot stage's MAP@k and whether it is below it. `scores`: score.json path -> its payload."""
    rows = []
    for stage in plan:
        score = scores[stage["score"]]
        k = score.get("k")
        block = (score.get("overall") or {}).get("reranked" if stage["reranked"] else "embedder") or {}
        rows.append({
            "stage": stage["stage"], "iteration": stage["iteration"], "reranked": stage["reranked"],
            "metric": f"map@{k}", "k": k,
            "map": block.get(f"map@{k}"), "recall": block.get(f"recall@{k}"),
            "n_queries": score.get("n_queries"), "final_fit": bool(score.get("final_fit")),
            "optimistic_reason": _optimistic_reason(stage, score),
        })
    zero = next((row for row in rows if row["stage"] == ZERO_SHOT and row["map"] is not None), None)
    for row in rows:
        scored = zero is not None and row["map"] is not None
        row["lift_over_zero_shot"] = row["map"] - zero["map"] if scored else None
        row["recall_lift_over_zero_shot"] = row["recall"] - zero["recall"] if scored else None
        row["below_zero_shot"] = (row["map"] < zero["map"]) if scored else None
    return rows


def pick_stage(rows: Sequence[Mapping[str, Any]]) -> int:
    """Index of the highest MAP@k; ties go to the earlier (cheaper) stage; a NaN or missing score is never picked."""
    best = None
    for index, row in enumerate(rows):
        value = row["map"]
        if value is None or math.isnan(value):
            continue
        if best is None or value > rows[best]["map"]:
            best = index
    if best is None:
        raise OoflineError("submit: best: no stage has a valid-fold score to choose on")
    return best


def choose_stage(pipeline: str, plan: Sequence[Mapping[str, Any]], rows: Sequence[Mapping[str, Any]], submit: str,
                 top_n: int | None = None) -> dict:
    """submission_stage.json: the stage `submit` gives (best: picked on the valid fold), its models, test rankings,
    score, the evidence (every candidate's score) and the warnings a user must see."""
    n_iterations = sum(1 for stage in plan if stage["stage"].endswith("/embedder"))
    by_stage = {row["stage"]: row for row in rows}
    if submit == "best":
        chosen = rows[pick_stage(rows)]["stage"]
    else:
        chosen = resolve_submit(submit, n_iterations)
        if chosen not in by_stage:
            raise OoflineError(f"submit: {submit!r} is not a stage of retrieval.{pipeline} "
                               f"(stages: {', '.join(by_stage)})")
    entry, row = next(stage for stage in plan if stage["stage"] == chosen), by_stage[chosen]
    zero = by_stage.get(ZERO_SHOT)
    scored = row["map"] is not None
    metric = row["metric"]
    warnings = []
    if scored and row["below_zero_shot"]:
        warnings.append(
            f"retrieval.{pipeline} submits {chosen} (submit: {submit}), which scores {metric} {row['map']:.4f} on the "
            f"valid fold, below the zero-shot embedder's {zero['map']:.4f} (lift {row['lift_over_zero_shot']:+.4f}): "
            f"its fine-tunes make the ranking worse; submit: best would choose "
            f"{rows[pick_stage(rows)]['stage']}")
    reasons = []
    if submit == "best":
        reasons.append(f"submit: best chose this stage by its {metric} on the valid fold")
    if scored and row["optimistic_reason"]:
        reasons.append(row["optimistic_reason"])
    evidence = {
        "metric": metric,
        "n_queries": row["n_queries"],
        "candidates": {r["stage"]: {"map": r["map"], "recall": r["recall"],
                                    "lift_over_zero_shot": r["lift_over_zero_shot"]} for r in rows},
        "zero_shot_score": zero["map"] if zero else None,
        "chosen_score": row["map"],
        "lift_over_zero_shot": row["lift_over_zero_shot"],
    }
    if not scored:
        evidence["note"] = "a final fit (valid_fold: null) has no valid-fold score: the stage was named, not chosen"
    return {
        "pipeline": pipeline, "stage": chosen, "iteration": entry["iteration"], "reranked": entry["reranked"],
        "embedder": entry["embedder"], "reranker": entry["reranker"], "top_n": top_n if entry["reranked"] else None,
        "test_rankings": entry["test_rankings"], "ranking_column": entry["ranking_column"], "submit": submit,
        "selected_on_valid_fold": submit == "best", "optimistic_reason": "; ".join(reasons) or None,
        # the headline numbers a manifest summarises (submission.summarise_scores)
        "metric": metric, "score": row["map"],
        "evidence": evidence, "warnings": warnings,
    }


def submission_stage(path: str | Path) -> dict:
    """The submitted stage of a retrieval pipeline (results/retrieval/{pipeline}/submission_stage.json): `stage`,
    `iteration` (None for zero_shot), `reranked`, the `embedder` and `reranker` model folders (reranker None when
    not reranked), `test_rankings` + `ranking_column`, `submit`, `selected_on_valid_fold`, `score` and `evidence`."""
    payload = read_json(path)
    missing = [key for key in SUBMISSION_STAGE_KEYS if key not in payload]
    if missing:
        raise OoflineError(f"{path}: keys {missing} are missing (expected a retrieval submission_stage.json)")
    return payload


def build_stages(pipeline: str, plan: Sequence[Mapping[str, Any]], submit: str, top_n: int | None = None
                 ) -> tuple[dict, dict]:
    """(stages.json, submission_stage.json) from the plan's score files."""
    scores = {stage["score"]: read_json(stage["score"]) for stage in plan}
    rows = stage_rows(plan, scores)
    chosen = choose_stage(pipeline, plan, rows, submit, top_n)
    for row in rows:
        row["submitted"] = row["stage"] == chosen["stage"]
    stages = {"pipeline": pipeline, "submit": submit, "metric": rows[0]["metric"] if rows else None,
              "stages": rows, "submitted": chosen["stage"], "selected_on_valid_fold": chosen["selected_on_valid_fold"],
              "warnings": chosen["warnings"]}
    return stages, chosen


def describe(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """A line per stage for the log: MAP@k, Recall@k, lift over zero-shot."""
    lines = []
    for row in rows:
        if row["map"] is None:
            lines.append(f"{row['stage']:<16} (final fit: not scored)")
            continue
        lift = "" if row["lift_over_zero_shot"] is None else f"  lift over zero-shot {row['lift_over_zero_shot']:+.4f}"
        mark = "  <- submitted" if row.get("submitted") else ""
        lines.append(f"{row['stage']:<16} {row['metric']} {row['map']:.4f}  recall {row['recall']:.4f}{lift}{mark}")
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Score every retrieval stage and choose the submission's.")
    parser.add_argument("--pipeline", required=True)
    parser.add_argument("--plan", required=True, help="JSON: the stages (rule_params.retrieval_stage_plan)")
    parser.add_argument("--submit", required=True, help="best, last or a stage name")
    parser.add_argument("--top-n", type=int, default=None, help="the reranked stages' candidates per query")
    parser.add_argument("--out-stages", required=True)
    parser.add_argument("--out-submission-stage", required=True)
    args = parser.parse_args(argv)
    plan = json.loads(args.plan)
    stages, chosen = build_stages(args.pipeline, plan, args.submit, args.top_n)
    for line in describe(stages["stages"]):
        print(line, flush=True)
    print(f"submitted stage: {chosen['stage']} (submit: {args.submit})", flush=True)
    for warning in chosen["warnings"]:
        print(f"WARNING: {warning}", flush=True)
    write_json(stages, args.out_stages)
    write_json(chosen, args.out_submission_stage)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
