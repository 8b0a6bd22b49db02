"""The demo's Kaggle package run as Kaggle runs it: size, estimated vs measured notebook runtime, byte identity.

    .venv/bin/python bench/kaggle_package.py                       # results/kaggle/stacked_top3 (make demo)
    .venv/bin/python bench/kaggle_package.py --package results/kaggle/stacked_top3 --repeats 2

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
    args = parser.parse_args()
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


if __name__ == "__main__":
    main()
