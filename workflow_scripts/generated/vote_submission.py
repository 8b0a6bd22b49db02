"""A test-set submission from voted answers: one answer per unlabelled problem, with a manifest.

The strategy is the configured one, or `best`: the strategy with the highest accuracy on the labelled dev
problems (the votes step's score.json), so the dev split chooses and the test split only receives.
Problems with no extracted answer in any sample get `default_answer` and are counted in the log.

    python -m workflow_scripts.generated.vote_submission --answers a.parquet b.parquet --test-problems t.parquet \
        --dev-score score.json --strategy best --out submission.csv --manifest-out manifest.json
"""
from __future__ import annotations

import argparse
from typing import Sequence

import polars as pl

from workflow_scripts.errors import OoflineError, run_cli
from workflow_scripts.generated.voting import STRATEGIES, read_answer_files, vote_all
from workflow_scripts.io import read_json, read_table, write_json
from workflow_scripts.submission import _config_option, build_manifest, write_csv


def chosen_strategy(requested: str, dev_score: dict) -> str:
    """`requested` itself, or for `best` the dev split's best strategy (score.json's `best`)."""
    if requested != "best":
        if requested not in STRATEGIES:
            raise OoflineError(f"votes: submit_strategy {requested!r} is not 'best' or one of {', '.join(STRATEGIES)}")
        return requested
    best = dev_score.get("best")
    if best not in STRATEGIES:
        raise OoflineError("votes: the dev score has no best strategy (no dev problems were voted)")
    return best


def submission_answers(answers: pl.DataFrame, test_ids: Sequence[str], strategy: str, fallback: str,
                       default_answer: str) -> tuple[pl.DataFrame, int]:
    """(`id`, `answer` for every test id in order, number of ids that got `default_answer`)."""
    votes = vote_all(answers, list(test_ids), [strategy], fallback)
    missing = int(votes["answer"].is_null().sum())
    frame = votes.select(pl.col("id"), pl.col("answer").fill_null(default_answer))
    return frame, missing


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="the votes entry (names the submission)")
    parser.add_argument("--answers", nargs="+", required=True, help="answers on the test problems (id, answer, confidence)")
    parser.add_argument("--test-problems", required=True, help="unlabelled problems: id column, one row per answer to submit")
    parser.add_argument("--dev-score", required=True, help="the votes step's score.json on the labelled dev problems")
    parser.add_argument("--strategy", default="best")
    parser.add_argument("--fallback", default="majority", choices=[s for s in STRATEGIES if s != "unanimous"])
    parser.add_argument("--default-answer", default="0")
    parser.add_argument("--id-column", default="id")
    parser.add_argument("--answer-column", default="answer")
    parser.add_argument("--config-slice", default=None)
    parser.add_argument("--inputs", nargs="*", default=[], help="more input files the manifest hashes (dev problems, "
                        "fine-tuning rows)")
    parser.add_argument("--artifacts", nargs="*", default=[], help="upstream artifacts the manifest hashes (dev answers, "
                        "votes, fine-tuned language models)")
    parser.add_argument("--base-models", nargs="*", default=[], help="sourced language models (name=source)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--manifest-out", required=True)
    args = parser.parse_args(argv)

    test = read_table(args.test_problems)
    if "id" not in test.columns:
        raise OoflineError(f"{args.test_problems}: missing column 'id'")
    dev_score = read_json(args.dev_score)
    strategy = chosen_strategy(args.strategy, dev_score)
    answers = read_answer_files(args.answers).with_columns(pl.col("id").cast(test.schema["id"]))
    frame, missing = submission_answers(answers, test["id"].to_list(), strategy, args.fallback, args.default_answer)
    write_csv(frame.rename({"id": args.id_column, "answer": args.answer_column}), args.out)
    config_slice = _config_option(args.config_slice)
    config_slice["chosen_strategy"] = strategy  # the dev split's choice, recorded beside the config
    manifest = build_manifest(config_slice, sorted({args.test_problems, *args.inputs}),
                              sorted({*args.answers, *args.artifacts, args.dev_score}), [args.out],
                              score_files=[args.dev_score], base_models=args.base_models, name=args.name)
    write_json(manifest, args.manifest_out)
    dev_accuracy = dev_score.get("strategies", {}).get(strategy, {}).get("accuracy")
    print(f"vote submission {args.name}: strategy {strategy} (dev accuracy {dev_accuracy}); {frame.height} problems, "
          f"{missing} without an extracted answer got {args.default_answer!r}", flush=True)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
