"""A retrieval submission: the top-k passage ids per test query, space-joined, with a manifest.

With --stage (stages.py's submission_stage.json) the rankings are the submitted stage's: its test rankings file
and column; its warnings (a stage below the zero-shot embedder) are printed as WARNING lines."""
from __future__ import annotations

import argparse
from typing import Sequence

import polars as pl

from workflow_scripts.errors import OoflineError, run_cli
from workflow_scripts.io import read_table, write_json
from workflow_scripts.submission import _config_option, build_manifest, write_csv


def submission_frame(test: pl.DataFrame, id_column: str, prediction_column: str) -> pl.DataFrame:
    """test: `id`, `ranked_ids` (list[str], best first) -> `id_column`, `prediction_column` (space-joined)."""
    missing = [c for c in ("id", "ranked_ids") if c not in test.columns]
    if missing:
        raise OoflineError(f"test rankings: columns {missing} are missing")
    return test.select(pl.col("id").alias(id_column), pl.col("ranked_ids").list.join(" ").alias(prediction_column))


def stage_rankings(stage: dict) -> pl.DataFrame:
    """The submitted stage's test rankings as `id`, `ranked_ids` (its column of its test.parquet)."""
    path, column = stage["test_rankings"], stage["ranking_column"]
    test = read_table(path)
    if column not in test.columns or test[column].null_count():
        raise OoflineError(f"{path}: column {column!r} (stage {stage['stage']}) is missing or has missing rankings")
    return test.select("id", pl.col(column).alias("ranked_ids"))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--test", help="test rankings parquet (id, ranked_ids)")
    source.add_argument("--stage", help="submission_stage.json: the stage whose test rankings are submitted")
    parser.add_argument("--id-column", default="id")
    parser.add_argument("--prediction-column", default="ranked_ids")
    parser.add_argument("--name", default="")
    parser.add_argument("--config-slice", default=None)
    parser.add_argument("--inputs", nargs="*", default=[])
    parser.add_argument("--artifacts", nargs="*", default=[])
    parser.add_argument("--scores", nargs="*", default=[])
    parser.add_argument("--base-models", nargs="*", default=[], help="base model ids (name=source)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--manifest-out", required=True)
    args = parser.parse_args(argv)
    if args.stage:
        from workflow_scripts.retrieval.stages import submission_stage

        stage = submission_stage(args.stage)
        test = stage_rankings(stage)
        print(f"stage {stage['stage']} (submit: {stage['submit']}): {stage['test_rankings']} {stage['ranking_column']}",
              flush=True)
        for warning in stage["warnings"]:
            print(f"WARNING: {warning}", flush=True)
    else:
        test = read_table(args.test)
    write_csv(submission_frame(test, args.id_column, args.prediction_column), args.out)
    manifest = build_manifest(_config_option(args.config_slice), args.inputs, args.artifacts, [args.out],
                              score_files=args.scores, base_models=args.base_models, name=args.name)
    write_json(manifest, args.manifest_out)
    print(f"wrote {args.out} and {args.manifest_out}", flush=True)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
