"""A retrieval submission: the top-k passage ids per test query, space-joined, with a manifest."""
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


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--test", required=True, help="test rankings parquet (id, ranked_ids)")
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
    write_csv(submission_frame(read_table(args.test), args.id_column, args.prediction_column), args.out)
    manifest = build_manifest(_config_option(args.config_slice), args.inputs, args.artifacts, [args.out],
                              score_files=args.scores, base_models=args.base_models, name=args.name)
    write_json(manifest, args.manifest_out)
    print(f"wrote {args.out} and {args.manifest_out}", flush=True)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
