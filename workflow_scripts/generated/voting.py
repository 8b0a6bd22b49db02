"""Vote one answer per problem from many sampled answers (prompts x samples x models) and score each strategy.

Input: one or more answer files (`results/answers/{model}/{prompt}.parquet`: `id`, `sample`, `text`, `answer`,
`confidence`). Samples with no extracted answer are ignored. Output: `results/votes/{name}/votes.parquet`
(long format: `id`, `strategy`, `answer`, `support`) and `score.json` (accuracy of each strategy on the dev set).

Strategies (for one problem, over its samples that have an answer):
- majority: the answer given most often.
- confidence_weighted: the answer with the largest summed confidence.
- max_confidence: the answer of the single most confident sample.
- median_confidence: the answer whose samples have the highest median confidence.
- unanimous: the common answer when every sample agrees, else the `fallback` strategy (majority by default).
- numeric_mean: mean of the numeric answers; rounded (half up) when every numeric answer is an integer.

Tie rule (every strategy): more votes first, then larger summed confidence, then the answer that sorts first
(numbers by value and before text, text alphabetically). So a result never depends on file or sample order.
"""
from __future__ import annotations

import argparse
import math
from collections import defaultdict
from pathlib import Path
from statistics import median
from typing import Sequence

import polars as pl

from workflow_scripts.errors import OoflineError, run_cli
from workflow_scripts.io import read_table, write_json, write_parquet

STRATEGIES = (
    "majority",
    "confidence_weighted",
    "max_confidence",
    "median_confidence",
    "unanimous",
    "numeric_mean",
)
ANSWER_COLUMNS = ("id", "answer", "confidence")


def canonical_answer(value: object) -> str | None:
    """One spelling per answer: integer-valued numbers as plain integers ('12.0' -> '12'), text stripped."""
    if value is None:
        return None
    text = str(value).strip()
    if not text:
        return None
    number = _as_number(text)
    if number is not None and math.isfinite(number) and number == int(number) and abs(number) < 2**63:
        return str(int(number))
    return text


def _as_number(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def _sort_key(answer: str) -> tuple:
    number = _as_number(answer)
    return (0, number, answer) if number is not None and math.isfinite(number) else (1, 0.0, answer)


def _rank(answers: dict[str, list[float]], primary) -> str:
    """The best answer by `primary(confidences)` (larger wins), then the documented tie rule."""
    return min(
        answers,
        key=lambda a: (-primary(answers[a]), -len(answers[a]), -sum(answers[a]), _sort_key(a)),
    )


def vote(samples: list[tuple[str, float]], strategy: str, fallback: str = "majority") -> tuple[str | None, float]:
    """Vote one answer from (answer, confidence) pairs; returns (answer or None, support in [0, 1])."""
    samples = [(canonical_answer(a), c) for a, c in samples]
    samples = [(a, c) for a, c in samples if a is not None]
    if not samples:
        return None, 0.0
    by_answer: dict[str, list[float]] = defaultdict(list)
    for answer, confidence in samples:
        by_answer[answer].append(confidence)
    total_weight = sum(c for _, c in samples)

    def share(answer: str) -> float:
        return len(by_answer[answer]) / len(samples)

    if strategy == "majority":
        best = _rank(by_answer, len)
        return best, share(best)
    if strategy == "confidence_weighted":
        best = _rank(by_answer, sum)
        return best, (sum(by_answer[best]) / total_weight) if total_weight > 0 else share(best)
    if strategy == "max_confidence":
        best = _rank(by_answer, max)
        return best, max(by_answer[best])
    if strategy == "median_confidence":
        best = _rank(by_answer, median)
        return best, float(median(by_answer[best]))
    if strategy == "unanimous":
        if len(by_answer) == 1:
            return next(iter(by_answer)), 1.0
        if fallback == "unanimous":
            raise OoflineError("voting: fallback strategy cannot be 'unanimous'")
        return vote(samples, fallback)
    if strategy == "numeric_mean":
        numbers = [_as_number(a) for a, _ in samples]
        numbers = [n for n in numbers if n is not None and math.isfinite(n)]
        if not numbers:
            return None, 0.0
        mean = sum(numbers) / len(numbers)
        if all(n == int(n) for n in numbers):
            answer = str(int(math.floor(mean + 0.5)))
        else:
            answer = canonical_answer(repr(mean))
        agree = sum(1 for a, _ in samples if canonical_answer(a) == answer)
        return answer, agree / len(samples)
    raise OoflineError(f"voting: unknown strategy {strategy!r} (expected one of {', '.join(STRATEGIES)})")


def collect_samples(answers: pl.DataFrame, source: str = "answers") -> dict[object, list[tuple[str, float]]]:
    """Group answered samples by problem id: {id: [(canonical answer, confidence), ...]}."""
    missing = [c for c in ANSWER_COLUMNS if c not in answers.columns]
    if missing:
        raise OoflineError(f"{source}: missing column(s) {missing} (expected id, answer, confidence)")
    grouped: dict[object, list[tuple[str, float]]] = defaultdict(list)
    for row_id, answer, confidence in answers.select(ANSWER_COLUMNS).iter_rows():
        answer = canonical_answer(answer)
        if answer is None:
            continue
        if confidence is None or not (0.0 <= float(confidence) <= 1.0):
            raise OoflineError(
                f"{source}: column 'confidence' must be in [0, 1] for answered samples; id {row_id!r} has {confidence!r}"
            )
        grouped[row_id].append((answer, float(confidence)))
    return grouped


def vote_all(
    answers: pl.DataFrame,
    ids: Sequence[object],
    strategies: Sequence[str] = STRATEGIES,
    fallback: str = "majority",
) -> pl.DataFrame:
    """Votes for every id x strategy as a long frame: `id`, `strategy`, `answer` (str, null if none), `support`."""
    for strategy in list(strategies) + [fallback]:
        if strategy not in STRATEGIES:
            raise OoflineError(f"voting: unknown strategy {strategy!r} (expected one of {', '.join(STRATEGIES)})")
    grouped = collect_samples(answers)
    rows = {"id": [], "strategy": [], "answer": [], "support": []}
    for strategy in strategies:
        for row_id in ids:
            answer, support = vote(grouped.get(row_id, []), strategy, fallback)
            rows["id"].append(row_id)
            rows["strategy"].append(strategy)
            rows["answer"].append(answer)
            rows["support"].append(float(support))
    return pl.DataFrame(
        rows, schema={"id": answers.schema["id"], "strategy": pl.String, "answer": pl.String, "support": pl.Float64}
    )


def score_votes(votes: pl.DataFrame, gold: pl.DataFrame, answer_column: str = "answer") -> dict:
    """Accuracy of each strategy against the gold answers (a missing vote counts as wrong)."""
    if answer_column not in gold.columns or "id" not in gold.columns:
        raise OoflineError(f"dev set: needs columns 'id' and {answer_column!r}; has {gold.columns}")
    truth = {row_id: canonical_answer(a) for row_id, a in gold.select("id", answer_column).iter_rows()}
    scores = {}
    for strategy in votes["strategy"].unique(maintain_order=True).to_list():
        part = votes.filter(pl.col("strategy") == strategy)
        correct = sum(1 for row_id, a in part.select("id", "answer").iter_rows() if a is not None and a == truth.get(row_id))
        scores[strategy] = {
            "accuracy": correct / part.height if part.height else 0.0,
            "correct": correct,
            "n": part.height,
            "n_answered": int(part["answer"].is_not_null().sum()),
        }
    best = min(scores, key=lambda s: (-scores[s]["accuracy"], STRATEGIES.index(s))) if scores else None
    return {"metric": "accuracy", "strategies": scores, "best": best}


def read_answer_files(paths: Sequence[str]) -> pl.DataFrame:
    """Answer files concatenated: `id`, `answer` (text), `confidence` (float)."""
    frames = []
    for path in paths:
        frame = read_table(path)
        missing = [c for c in ANSWER_COLUMNS if c not in frame.columns]
        if missing:
            raise OoflineError(f"{path}: missing column(s) {missing} (expected id, answer, confidence)")
        frames.append(frame.select(pl.col("id"), pl.col("answer").cast(pl.String), pl.col("confidence").cast(pl.Float64)))
    return pl.concat(frames)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Vote answers across prompts/samples/models and score each strategy.")
    parser.add_argument("--answers", nargs="+", required=True, help="answer parquet files (id, sample, answer, confidence)")
    parser.add_argument("--dev", required=True, help="problems with gold answers (id + --answer-column)")
    parser.add_argument("--answer-column", default="answer")
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    parser.add_argument("--fallback", default="majority", choices=[s for s in STRATEGIES if s != "unanimous"])
    parser.add_argument("--votes", required=True, help="output parquet: id, strategy, answer, support")
    parser.add_argument("--score", required=True, help="output json: accuracy per strategy")
    args = parser.parse_args(argv)

    answers = read_answer_files(args.answers)
    gold = read_table(args.dev)
    if "id" not in gold.columns:
        raise OoflineError(f"{args.dev}: missing column 'id'")
    answers = answers.with_columns(pl.col("id").cast(gold.schema["id"]))
    votes = vote_all(answers, gold["id"].to_list(), args.strategies, args.fallback)
    score = score_votes(votes, gold, args.answer_column)
    score["answer_files"] = [str(Path(p)) for p in args.answers]
    write_parquet(votes, args.votes)
    write_json(score, args.score)
    print(
        "voting: " + ", ".join(f"{s}={v['accuracy']:.3f}" for s, v in score["strategies"].items()) + f"; best={score['best']}",
        flush=True,
    )


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
