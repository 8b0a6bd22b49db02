"""What a Kaggle package's notebook runs: the submission rebuilt on a test file, offline, from the dataset alone.

Every step is the workflow's own function, not a copy: the test rows are read and rendered by
`data.read_rows_as_trained` (as training rendered the template's columns; no row stops the run), each member predicts as its step did (`predict.load_for_prediction` +
`predict_probabilities`, `linear_models.predict_saved`, `embedding_head.load_encoder` + `embed_texts` +
the fold heads), fold predictions are averaged by `oof.average_test`, ensembles are applied from their
weights.json by `ensemble.ensemble_test_predictions`, and the CSV is written by `submission.build_submission`
with the thresholds `submission.load_thresholds` reads. On the public test the CSV is byte-identical to
results/submissions/{name}/submission.csv.

`python -m workflow_scripts.kaggle.inference --package DATASET_DIR --test TEST.csv --out-dir DIR`
"""
from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import polars as pl

from workflow_scripts.errors import OoflineError, run_cli

PACKAGE_FILE = "oofline_package.json"
FORMAT_VERSION = 1


def load_package(dataset_dir: str | Path) -> dict[str, Any]:
    """The package description (oofline_package.json) with every folder it names checked to exist."""
    dataset_dir = Path(dataset_dir)
    path = dataset_dir / PACKAGE_FILE
    if not path.exists():
        raise OoflineError(f"{dataset_dir}: {PACKAGE_FILE} is missing (not an oofline Kaggle package dataset)")
    package = json.loads(path.read_text())
    if package.get("format_version") != FORMAT_VERSION:
        raise OoflineError(f"{path}: format_version {package.get('format_version')!r}, this oofline reads {FORMAT_VERSION}")
    needed = [package["labels"]] + list(package["ensembles"].values())
    needed += [package["submission"]["thresholds"]] if package["submission"].get("thresholds") else []
    for name, member in package["models"].items():
        needed += list(member["splits"].values()) + ([member["base"]] if member.get("base") else [])
    missing = [relative for relative in needed if not (dataset_dir / relative).exists()]
    if missing:
        raise OoflineError(f"{dataset_dir}: the package lacks {missing[:3]} (a member's files are missing; rebuild "
                           "the package)")
    return package


def read_test_rows(path: str | Path, task: dict[str, Any], column_types: dict[str, str] | None = None,
                   log: Callable[[str], None] = print, prepare: dict[str, Any] | None = None,
                   dataset_dir: Path | None = None) -> pl.DataFrame:
    """The hidden test's `id` and `text`, every row in file order, never stopping on one (`data.read_rows_as_trained`):
    the template's columns rendered as training rendered them (after the shipped data.prepare function, when the
    package has one), blank rows predicted from the template's fixed words and counted in the log."""
    from workflow_scripts.data import frame_rows_as_trained, read_rows_as_trained

    if prepare:
        from workflow_scripts.kaggle.shared import prepared_rows
        from workflow_scripts.prepare import classification_required

        frame = prepared_rows(dataset_dir, prepare, path, "test", classification_required(task, "test"))
        rows, blank = frame_rows_as_trained(frame.cast({name: pl.String for name in frame.columns}), str(path), task,
                                            column_types or {})
    else:
        rows, blank = read_rows_as_trained(path, task, column_types or {})
    if rows.height == 0:
        raise OoflineError(f"{path}: the file has a header but no rows")
    if blank:
        log(f"oofline: {len(blank)} test row(s) have every column of the text template blank; predicted from the "
            f"template's fixed text (ids {blank[:5]}{', ...' if len(blank) > 5 else ''})")
    empty_ids = rows.filter(pl.col("id") == "").height
    if empty_ids:
        log(f"oofline: {empty_ids} test row(s) have an empty id; kept in place")
    return rows


def model_test_probabilities(dataset_dir: Path, name: str, member: dict[str, Any], spec, texts: list[str],
                             log: Callable[[str], None]) -> tuple[np.ndarray, dict[str, Any]]:
    """One model's test probabilities (n_rows, n_columns) float32, its fold models' mean as the oof step takes it
    (or the full-data model's), and what it cost: {seconds, load_seconds, tokens}."""
    from workflow_scripts.oof import average_test

    started = time.time()
    cost = {"load_seconds": 0.0, "tokens": 0}
    ids = [str(i) for i in range(len(texts))]
    kind, config = member["kind"], member["config"]
    frames = []
    if kind == "tfidf_linear":
        from workflow_scripts.linear_models import predict_saved

        for split, folder in member["splits"].items():
            frames.append(_frame(ids, predict_saved(spec, dataset_dir / folder, texts), spec))
    elif kind == "embedding_head":
        from workflow_scripts.embedding_head import embed_texts, embedding_settings, load_encoder
        from workflow_scripts.linear_heads import load_heads, predict_heads

        pooling, max_length, batch_size = embedding_settings(config)
        loading = time.time()
        model, tokenizer, device = load_encoder(str(dataset_dir / member["base"]), config)
        cost["load_seconds"] += time.time() - loading
        stats: dict[str, Any] = {}
        embeddings = embed_texts(model, tokenizer, texts, pooling, max_length, batch_size, device,
                                 label=f"{name} embed", stats=stats)
        cost["tokens"] += stats["tokens"]
        del model
        _free_memory()
        for split, folder in member["splits"].items():
            heads, _ = load_heads(dataset_dir / folder)
            frames.append(_frame(ids, predict_heads(spec, heads, embeddings), spec))
    else:
        from workflow_scripts.model_spec import ModelSpec
        from workflow_scripts.predict import fold_models, predict_probabilities

        model_spec = ModelSpec.from_config(config)
        base = str(dataset_dir / member["base"]) if member.get("base") else ""
        folders = {split: str(dataset_dir / folder) for split, folder in member["splits"].items()}
        # adapters share their base: loaded once, each fold's adapter swapped in
        for split, model, tokenizer, device, precision, load_seconds in fold_models(
                folders, base, model_spec, len(spec.probability_columns)):
            cost["load_seconds"] += load_seconds[0]
            log(f"{name} {split}: loaded in {load_seconds[0]:.1f}s on {device} in {precision}"
                + (f", weights {model_spec.quantization}" if getattr(model_spec, "quantization", "none") != "none"
                   else ""))
            stats = {}
            # the batch size this split's workflow predictions were made with (package.applied_batch_sizes)
            batch_size = (member.get("batch_sizes") or {}).get(split, model_spec.prediction_batch_size)
            probabilities = predict_probabilities(model, tokenizer, texts, spec, model_spec.max_length,
                                                  batch_size, label=f"{name} {split}",
                                                  precision=precision, stats=stats)
            cost["tokens"] += stats["tokens"]
            frames.append(_frame(ids, probabilities, spec))
            del model
            _free_memory()
    mean = average_test(frames, spec.probability_columns)
    cost["seconds"] = time.time() - started
    log(f"{name}: {len(member['splits'])} {'fold models' if len(frames) > 1 else 'model'} predicted "
        f"{len(texts)} rows in {cost['seconds']:.1f}s")
    return mean.select(spec.probability_columns).to_numpy(), cost


def _frame(ids: list[str], probabilities: np.ndarray, spec) -> pl.DataFrame:
    from workflow_scripts.linear_heads import prediction_frame

    return prediction_frame(ids, probabilities, spec, None)


def _free_memory() -> None:
    """Free a member's weights before the next loads (a 14B model and the next one do not both fit)."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def source_test_probabilities(dataset_dir: Path, package: dict[str, Any], source: str, spec,
                              model_probabilities: dict[str, np.ndarray], ids: list[str]) -> np.ndarray:
    """A model's or an ensemble's test probabilities; ensembles through their weights.json, members first."""
    from workflow_scripts.ensemble import aligned_test_members, ensemble_test_predictions

    if source in model_probabilities:
        return model_probabilities[source]
    record = json.loads((dataset_dir / package["ensembles"][source]).read_text())
    columns = spec.probability_columns
    frames = {member: pl.DataFrame({"id": ids}).hstack(pl.DataFrame(
        source_test_probabilities(dataset_dir, package, member, spec, model_probabilities, ids), schema=columns))
        for member in record["members"]}
    _, members = aligned_test_members(frames, record["members"], columns, "mean", None, spec)
    return ensemble_test_predictions(spec, record, members)


def run_package(dataset_dir: str | Path, test_path: str | Path, out_dir: str | Path,
                sample_submission: str | Path | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Write out_dir/submission.csv for the rows of `test_path`; returns timings {total, members: {name: cost}}."""
    from workflow_scripts.kaggle.environment import check_image
    from workflow_scripts.labels import LabelSpec
    from workflow_scripts.submission import (build_submission, check_test_ids, load_thresholds,
                                             read_sample_submission, write_csv)

    started = time.time()
    dataset_dir = Path(dataset_dir)
    package = load_package(dataset_dir)
    check_image(dataset_dir, package, log)  # before any model loads: a known-incompatible image is one line
    spec = LabelSpec.load(dataset_dir / package["labels"])
    test = read_test_rows(test_path, package["task"], package.get("columns"), log, package.get("prepare"), dataset_dir)
    ids, texts = test["id"].to_list(), test["text"].to_list()
    log(f"oofline package {package['package']}: {len(ids)} test rows from {test_path}")
    model_probabilities, costs = {}, {}
    for name, member in package["models"].items():
        model_probabilities[name], costs[name] = model_test_probabilities(dataset_dir, name, member, spec, texts, log)
    probabilities = source_test_probabilities(dataset_dir, package, package["source"], spec, model_probabilities, ids)
    predictions = pl.DataFrame({"id": ids}).hstack(pl.DataFrame(probabilities, schema=spec.probability_columns))
    settings = package["submission"]
    thresholds = load_thresholds(dataset_dir / settings["thresholds"]) if settings.get("thresholds") else None
    sample = read_sample_submission(sample_submission) if sample_submission else None
    frame = build_submission(spec, predictions, settings["format"], settings["id_column"],
                             settings["prediction_columns"], settings["top_k"], thresholds, settings["separator"], sample)
    check_test_ids(frame, settings["id_column"], ids, str(test_path), sample is None)
    out = Path(out_dir) / "submission.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_csv(frame, out)
    timing = {"total_seconds": time.time() - started, "rows": len(ids), "members": costs}
    log(f"oofline package {package['package']}: {frame.height} rows -> {out} ({timing['total_seconds']:.1f}s)")
    return timing


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", required=True, help="the package's dataset folder (holds oofline_package.json)")
    parser.add_argument("--test", required=True, help="the test file: the id column and the text template's columns")
    parser.add_argument("--sample-submission", default=None, help="rows and columns in its order (optional)")
    parser.add_argument("--out-dir", required=True, help="submission.csv is written here")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    parser.add_argument("--timing-out", default=None, help="write the run's timings as JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    timing = run_package(args.package, args.test, args.out_dir, args.sample_submission,
                         log=lambda line: print(line, flush=True))
    if args.timing_out:
        Path(args.timing_out).write_text(json.dumps(timing, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
