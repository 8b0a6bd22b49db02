"""Snakemake planning overhead of the oofline graph: a dry run (`snakemake -n`) of a generated config with
8 models x 5 folds, and a no-op rerun (`snakemake --cores 1`) after a finished tiny real run.

    PYTHONPATH=. .venv/bin/python bench/dag.py [--models 8] [--folds 5] [--repeats 3] [--min-jobs 600]
    PYTHONPATH=. .venv/bin/python bench/dag.py --sweep [--repeats 3]   # a sweep of ~500, ~1,000, ~2,000 jobs

Every timing is the wall time of a fresh `python -m snakemake` process, as a user would type it (startup
included); the medians are compared with the targets (dry run <= 3 s for >= 600 jobs, no-op
rerun <= 5 s; a sweep of 2,000 jobs <= 10 s CPU, growing linearly). When the 8 x 5 graph has fewer than --min-jobs jobs, the dry run is also timed on a config
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


# ---- a sweep: planning cost against its size ----

SWEEP_TARGET_JOBS = 2000
SWEEP_TARGET_CPU_S = 10.0


def sweep_config(n_lr: int, n_folds: int = 5, pool: int = 8) -> dict:
    """The demo config with one sweep: a tiny:llama LoRA model (merged, like a GPU model) over `n_lr`
    learning rates x 2 ranks, and an ensemble sweep over every pair of its first `pool` variants at two Top@k
    values, picked nested. About 17 jobs per model variant (prepare, 5 x train, merge, predict, oof)."""
    config = generated_config(0, n_folds)
    lrs = [round(1e-4 * (1 + i / 10), 8) for i in range(n_lr)]
    config["models"] = {"qwen": {"source": "tiny:llama", "kind": "decoder_lora", "quantization": "none", "alpha": 8,
                                 "merge": True, "grid": {"lr": lrs, "r": [4, 8]}, "select": "nested",
                                 "resources": {"gpu": 1, "gpu_model": "h100", "mem_mb": 64000, "runtime": 720}}}
    from workflow_scripts.sweeps import expand_sweeps

    variants = [v.name for v in expand_sweeps(config).sweeps["qwen"].variants]
    config["ensembles"] = {"pairs": {"grid": {"members": {"pool": variants[:pool], "size": 2}, "member_top_k": [1, 3]},
                                     "select": "nested"}}
    return config


def run_sweep(targets: tuple[int, ...] = (500, 1000, SWEEP_TARGET_JOBS), repeats: int = 1, n_folds: int = 5,
              root: Path | None = None, log=print) -> dict:
    """Dry runs of sweeps of about each target's number of jobs: (jobs, median CPU s, median wall s) each, so
    the cost can be read against the size (the goal: linear, <= 10 s CPU for 2,000 jobs)."""
    with tempfile.TemporaryDirectory(prefix="bench_sweep_") as tmp:
        root = Path(root or tmp)
        probes = {}
        for n_lr in (4, 6):  # jobs grow linearly with the grid (the pool is full from 4 on): two points
            probes[n_lr] = time_dry_run(write_config(root / f"probe{n_lr}", sweep_config(n_lr, n_folds)), 1)[2]
        per_lr = (probes[6] - probes[4]) / 2
        points = []
        for target in targets:
            n_lr = max(4, round(4 + (target - probes[4]) / per_lr))
            wall, cpu, jobs, _ = time_dry_run(write_config(root / f"sweep{n_lr}", sweep_config(n_lr, n_folds)), repeats)
            points.append({"jobs": jobs, "variants": 2 * n_lr, "cpu_s": cpu, "wall_s": wall})
            log(f"sweep dry run: {2 * n_lr} model variants + 56 ensemble variants x {n_folds} folds = {jobs} jobs: "
                f"{cpu:.2f} s CPU ({1000 * cpu / jobs:.2f} ms/job), {wall:.2f} s wall")
    first, last = points[0], points[-1]
    slope = (last["cpu_s"] - first["cpu_s"]) / max(1, last["jobs"] - first["jobs"])
    log(f"  CPU per extra job between {first['jobs']} and {last['jobs']} jobs: {1000 * slope:.2f} ms; "
        f"{last['jobs']} jobs plan in {last['cpu_s']:.2f} s CPU = {last['cpu_s'] / SWEEP_TARGET_CPU_S:.2f} x the "
        f"{SWEEP_TARGET_CPU_S:g} s goal")
    return {"points": points, "cpu_s_per_job": slope}


def fmt(times: list[float]) -> str:
    return "(" + ", ".join(f"{t:.2f}" for t in times) + ")"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=8)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--min-jobs", type=int, default=600, help="also time a graph with at least this many jobs")
    parser.add_argument("--no-noop", action="store_true", help="skip the tiny real run and the no-op rerun")
    parser.add_argument("--sweep", action="store_true",
                        help="only time dry runs of a sweep of about 500, 1,000 and 2,000 jobs (linear? <= 10 s CPU?)")
    args = parser.parse_args(argv)
    if args.sweep:
        run_sweep(repeats=args.repeats, n_folds=args.folds, log=lambda line: print(line, flush=True))
        return 0
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
