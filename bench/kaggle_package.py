"""The demo's Kaggle package run as Kaggle runs it: size, estimated vs measured notebook runtime, byte identity.

    .venv/bin/python bench/kaggle_package.py                       # results/kaggle/stacked_top3 (make demo)
    .venv/bin/python bench/kaggle_package.py --package results/kaggle/stacked_top3 --repeats 2
    .venv/bin/python bench/kaggle_package.py --package results/kaggle/qlora_top3 --hidden   # merged members
    .venv/bin/python bench/kaggle_package.py --package DIR --compare-loading   # adapters: per-fold vs shared base

--hidden runs the notebook on a hidden test nobody has seen: the public rows with a blank row among them, then
10,030 more rows whose `year` column turns decimal after row 10,000 (rows in the test file's order, no sample
submission). --compare-loading times, in this process, loading each LoRA member's folds as the predict step does
(base + adapter, once a fold) against the notebook's shared base (loaded once, adapters swapped in).

Copies only the package's dataset/ and notebook/ into a temporary /kaggle tree with the public test and sample
submission, runs the notebook's script offline in a subprocess (no PYTHONPATH, cwd /kaggle/working, one torch
thread like the demo's jobs), and prints the package size, the plan's runtime estimate for the public test's
rows on `cpu` with the measured threads, the measured wall time and their ratio, and whether the CSV is
byte-identical to results/submissions/{s}/submission.csv.
"""
from __future__ import annotations

import argparse
import filecmp
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from kaggle_tree import kaggle_tree, run_notebook  # noqa: E402

from workflow_scripts.kaggle.plan import estimate  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", default="results/kaggle/stacked_top3")
    parser.add_argument("--results", default="results")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--hidden", action="store_true", help="a hidden test with a blank row and a late decimal")
    parser.add_argument("--compare-loading", action="store_true", help="per-fold loads vs one shared base")
    args = parser.parse_args()
    if args.compare_loading:
        compare_loading(Path(args.package) / "dataset")
        return
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    package, results = Path(args.package), Path(args.results)
    plan = json.loads((package / "plan.json").read_text())
    submission = plan["submission"]
    demo = json.loads((package / "dataset" / "config.json").read_text())["data"]
    files = {"test.csv": Path(demo["test"])}
    if demo.get("sample_submission"):
        files["sample_submission.csv"] = Path(demo["sample_submission"])
    rows = plan["public_test_rows"]
    estimated = estimate(plan["measured"], rows, "cpu", args.threads, 9,
                         startup_seconds=plan["estimate"]["startup_seconds"])["estimated_seconds"]
    print(f"package {package}: dataset {plan['dataset_bytes'] / 1e6:.1f} MB, "
          f"{plan['bytes_saved_by_shared_bases'] / 1e6:.1f} MB saved by shared bases, bases {plan['bases']}")
    if args.hidden:
        with tempfile.TemporaryDirectory() as scratch:
            hidden = hidden_test(files["test.csv"], Path(scratch) / "hidden.csv")
            tree = kaggle_tree(package, Path(scratch) / "tree", {"test.csv": Path(scratch) / "hidden.csv"})
            result, wall, cpu = run_notebook(tree, "--threads", str(args.threads), "--sample-submission", "none",
                                             timeout=3600)
            if result.returncode != 0:
                raise SystemExit(result.stderr[-3000:])
            import polars as pl

            written = pl.read_csv(tree["working"] / "submission.csv", infer_schema=False)
            blank = [line for line in result.stdout.splitlines() if "blank" in line]
            loads = [line for line in result.stdout.splitlines() if ": loaded in " in line]
        print(f"hidden test: {hidden.height} rows, {wall:.1f} s wall, {cpu:.1f} s CPU; every id in order: "
              f"{written['id'].to_list() == hidden['id'].to_list()}; {blank[0] if blank else 'no blank-row line'}")
        print("\n".join(loads))
        return
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory() as scratch:
            tree = kaggle_tree(package, Path(scratch), files)
            result, wall, cpu = run_notebook(tree, "--threads", str(args.threads))
            if result.returncode != 0:
                raise SystemExit(result.stderr[-3000:])
            identical = filecmp.cmp(tree["working"] / "submission.csv",
                                    results / "submissions" / submission / "submission.csv", shallow=False)
        print(f"run {repeat + 1}: {rows} rows on cpu x {args.threads} thread(s): estimated {estimated:.1f} s, "
              f"measured {wall:.1f} s wall, {cpu:.1f} s CPU (estimate / wall {estimated / wall:.2f}, "
              f"/ CPU {estimated / cpu:.2f}); "
              f"CSV byte-identical to the workflow's: {identical}", flush=True)


def hidden_test(public: Path, out: Path):
    """The public test's rows with a blank row after the 7th and a `year` column, then 10,030 rows whose year turns
    decimal at row 10,010 of them: what a notebook meets on a hidden test nobody has seen."""
    import polars as pl

    test = pl.read_csv(public, infer_schema=False).select("id", "text").with_columns(pl.lit("2000").alias("year"))
    texts = test["text"].to_list()
    filler = pl.DataFrame({"id": [f"x{i}" for i in range(10_030)],
                           "text": [texts[i % len(texts)] for i in range(10_030)],
                           "year": [str(1990 + i % 30) if i != 10_010 else "2001.5" for i in range(10_030)]})
    blank = pl.DataFrame({"id": ["blank-row"], "text": [""], "year": [""]})
    hidden = pl.concat([test.head(7), blank, test.tail(-7), filler])
    hidden.write_csv(out)
    return hidden


def compare_loading(dataset: Path) -> None:
    import gc
    import time

    from workflow_scripts.kaggle.inference import load_package
    from workflow_scripts.labels import LabelSpec
    from workflow_scripts.model_spec import ModelSpec
    from workflow_scripts.predict import LORA_KINDS, fold_models, load_for_prediction

    package = load_package(dataset)
    labels = len(LabelSpec.load(dataset / package["labels"]).probability_columns)
    for name, member in package["models"].items():
        if member["kind"] not in LORA_KINDS or not member.get("base"):
            continue
        spec = ModelSpec.from_config(member["config"])
        folders = {split: str(dataset / folder) for split, folder in member["splits"].items()}
        base = str(dataset / member["base"])
        for _ in fold_models(folders, base, spec, labels):  # warm-up: lazy imports and first-use costs, untimed
            pass
        gc.collect()
        started = time.time()
        per_fold = 0.0
        for folder in folders.values():
            model, *_, seconds = load_for_prediction(folder, base, spec, labels)
            per_fold += seconds[0]
            del model
            gc.collect()
        before_wall = time.time() - started
        started, shared = time.time(), 0.0
        for *_, seconds in fold_models(folders, base, spec, labels):
            shared += seconds[0]
        after_wall = time.time() - started
        print(f"{name}: {len(folders)} folds; load seconds per-fold base + adapter {per_fold:.2f} "
              f"({before_wall:.2f} wall), shared base {shared:.2f} ({after_wall:.2f} wall)")


if __name__ == "__main__":
    main()
