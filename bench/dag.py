"""Snakemake planning overhead of the oofline graph: a dry run (`snakemake -n`) of a generated config with
8 models x 5 folds, and a no-op rerun (`snakemake --cores 1`) after a finished tiny real run.

    PYTHONPATH=. .venv/bin/python bench/dag.py [--models 8] [--folds 5] [--repeats 3] [--min-jobs 600]

Every timing is the wall time of a fresh `python -m snakemake` process, as a user would type it (startup
included); the medians are compared with the targets (dry run <= 3 s for >= 600 jobs, no-op
rerun <= 5 s). When the 8 x 5 graph has fewer than --min-jobs jobs, the dry run is also timed on a config
with enough models to reach that many jobs. `python -m snakemake --version` is timed as the floor.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
DRY_RUN_TARGET_S = 3.0
NOOP_TARGET_S = 5.0


def generated_config(n_models: int, n_folds: int, n_train: int = 60, n_test: int = 20) -> dict:
    """A demo config with `n_models` tiny decoder-LoRA models over `n_folds` folds (every model merges)."""
    return {
        "demo": {"dataset": "movies", "n_train": n_train, "n_test": n_test, "seed": 0},
        "data": {"train": "results/demo/train.csv", "test": "results/demo/test.csv",
                 "sample_submission": "results/demo/sample_submission.csv"},
        "task": {"type": "multiclass", "text_template": "Review: {text}", "label_column": "category",
                 "metric": "map@3"},
        "folds": {"scheme": "stratified_group", "group_column": "movie_name", "n_folds": n_folds, "seed": 1},
        "model_defaults": {"max_length": 32, "epochs": 1, "batch_size": 8, "seed": 0, "resources": {"threads": 1}},
        "models": {
            f"model{i}": {"source": "tiny:llama", "kind": "decoder_lora", "quantization": "none", "r": 4,
                          "alpha": 8, "lr": 2e-3 * (1 + i / 10), "merge": True}
            for i in range(n_models)
        },
    }


def snakemake(workdir: Path, *args: str, timeout: int = 1800) -> tuple[float, float, subprocess.CompletedProcess]:
    """(wall seconds, CPU seconds (user + sys of it and its children), result) of one fresh snakemake process.

    On a shared machine the wall time grows with other people's load; the CPU time mostly does not."""
    env = dict(os.environ)
    # jobs run `python -m workflow_scripts...`: this interpreter's venv must come first on PATH
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("OMP_NUM_THREADS", "1")
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir), *args]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=workdir, env=env, timeout=timeout)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, result


def job_count(result: subprocess.CompletedProcess) -> int:
    """Jobs a dry run plans, from its `Job stats` table (`total N`); 0 when there is nothing to do."""
    match = re.search(r"^total\s+(\d+)\s*$", result.stdout + result.stderr, re.MULTILINE)
    return int(match.group(1)) if match else 0


def write_config(workdir: Path, config: dict) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=True))
    return workdir


def time_dry_run(workdir: Path, repeats: int) -> tuple[float, float, int, list[float]]:
    """(median wall s, median CPU s, jobs, wall times) of `snakemake -n` in `workdir`."""
    times, cpus, jobs = [], [], 0
    for _ in range(repeats):
        seconds, cpu, result = snakemake(workdir, "-n", "--cores", "1")
        if result.returncode != 0:
            raise SystemExit(f"dry run failed in {workdir}:\n{result.stderr[-3000:]}")
        times.append(seconds)
        cpus.append(cpu)
        jobs = job_count(result)
    return statistics.median(times), statistics.median(cpus), jobs, times


def run(n_models: int = 8, n_folds: int = 5, repeats: int = 3, min_jobs: int = 600, noop: bool = True,
        root: Path | None = None, log=print) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench_dag_") as tmp:
        return _run(n_models, n_folds, repeats, min_jobs, noop, Path(root or tmp), log)


def _run(n_models, n_folds, repeats, min_jobs, noop, root: Path, log) -> dict:
    versions = [snakemake(root, "--version") for _ in range(repeats)]
    floor, floor_cpu = (statistics.median(v[i] for v in versions) for i in (0, 1))
    log(f"`python -m snakemake --version` (startup floor): {floor:.2f} s wall, {floor_cpu:.2f} s CPU")
    out: dict = {"startup_floor_s": floor, "startup_floor_cpu_s": floor_cpu}

    median, cpu, jobs, times = time_dry_run(write_config(root / "dag", generated_config(n_models, n_folds)), repeats)
    out.update(dry_run_s=median, dry_run_cpu_s=cpu, dry_run_jobs=jobs, dry_run_times=times, models=n_models,
               folds=n_folds)
    log(f"dry run, {n_models} models x {n_folds} folds: {jobs} jobs, median {median:.2f} s wall {fmt(times)}, "
        f"{cpu:.2f} s CPU")
    if jobs < min_jobs:
        _, _, one_model_jobs, _ = time_dry_run(write_config(root / "dag1", generated_config(1, n_folds)), 1)
        per_model = (jobs - one_model_jobs) / max(1, n_models - 1)
        scaled_models = n_models + math.ceil((min_jobs - jobs) / per_model)
        scaled, scaled_cpu, scaled_jobs, scaled_times = time_dry_run(
            write_config(root / "dag_scaled", generated_config(scaled_models, n_folds)), repeats)
        out.update(scaled_models=scaled_models, scaled_jobs=scaled_jobs, scaled_dry_run_s=scaled,
                   scaled_dry_run_cpu_s=scaled_cpu, scaled_dry_run_times=scaled_times)
        log(f"  {jobs} < {min_jobs} jobs ({per_model:.0f} per model): dry run with {scaled_models} models x "
            f"{n_folds} folds: {scaled_jobs} jobs, median {scaled:.2f} s wall {fmt(scaled_times)}, "
            f"{scaled_cpu:.2f} s CPU")

    if noop:
        workdir = write_config(root / "tiny", generated_config(1, 2, n_train=40, n_test=10))
        seconds, _, result = snakemake(workdir, "--cores", "1")
        if result.returncode != 0:
            raise SystemExit(f"tiny real run failed in {workdir}:\n{result.stderr[-3000:]}")
        log(f"tiny real run (1 model x 2 folds, 40 rows): {seconds:.1f} s")
        out["tiny_run_s"] = seconds
        seconds, _, result = snakemake(workdir, "--cores", "1")
        if "Nothing to be done" not in result.stdout + result.stderr:
            # the Snakefile changed between the run and this rerun (people edit rules while this runs): settle once
            log(f"  first rerun was not a no-op (the graph changed during the bench?); ran it ({seconds:.1f} s)")
            out["settled"] = True
        times, cpus = [], []
        for _ in range(repeats):
            seconds, cpu, result = snakemake(workdir, "--cores", "1")
            if result.returncode != 0 or "Nothing to be done" not in result.stdout + result.stderr:
                raise SystemExit(f"the rerun was not a no-op:\n{(result.stdout + result.stderr)[-3000:]}")
            times.append(seconds)
            cpus.append(cpu)
        out.update(noop_s=statistics.median(times), noop_cpu_s=statistics.median(cpus), noop_times=times)
        log(f"no-op rerun `snakemake --cores 1`: median {out['noop_s']:.2f} s wall {fmt(times)}, "
            f"{out['noop_cpu_s']:.2f} s CPU")
    return out


def fmt(times: list[float]) -> str:
    return "(" + ", ".join(f"{t:.2f}" for t in times) + ")"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=8)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--min-jobs", type=int, default=600, help="also time a graph with at least this many jobs")
    parser.add_argument("--no-noop", action="store_true", help="skip the tiny real run and the no-op rerun")
    args = parser.parse_args(argv)
    result = run(args.models, args.folds, args.repeats, args.min_jobs, not args.no_noop,
                 log=lambda line: print(line, flush=True))
    def report(name, wall, cpu, target):
        print(f"{name}: {wall:.2f} s wall = {wall / target:.2f} x the {target:g} s target; "
              f"{cpu:.2f} s CPU = {cpu / target:.2f} x the target")

    report(f"dry run {args.models}x{args.folds} ({result['dry_run_jobs']} jobs)", result["dry_run_s"],
           result["dry_run_cpu_s"], DRY_RUN_TARGET_S)
    if "scaled_dry_run_s" in result:
        report(f"dry run {result['scaled_models']}x{args.folds} ({result['scaled_jobs']} jobs)",
               result["scaled_dry_run_s"], result["scaled_dry_run_cpu_s"], DRY_RUN_TARGET_S)
    if "noop_s" in result:
        report("no-op rerun", result["noop_s"], result["noop_cpu_s"], NOOP_TARGET_S)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
