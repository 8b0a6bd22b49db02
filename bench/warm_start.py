"""Warm start (workflow_scripts/execution/warm_start.py) against cold starts: one real Snakemake run of a small
LoRA graph (tiny Llama, `--models` models x `--folds` folds: prepare, train, predict, merge, OOF, scores), run
cold and then warm in fresh folders in this process, with the outputs compared byte for byte.

    PYTHONPATH=. .venv/bin/python bench/warm_start.py [--models 2] [--folds 2] [--cores 2]

Prints each run's wall time and their ratio. The warm run starts its server first and waits until it is ready
(what a second run in the same shell meets); the server's one-off import (about 10 s of CPU) is printed apart.
Wall time, not CPU: a warm step is the server's child, not Snakemake's, so getrusage cannot see its CPU.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dag import REPO, generated_config, write_config  # noqa: E402

sys.path.insert(0, str(REPO))
from workflow_scripts.execution.warm_start import shim_environment, stop_servers  # noqa: E402


def run(workdir: Path, env: dict[str, str], cores: int) -> float:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory",
                             str(workdir), "--cores", str(cores)], cwd=workdir, env=env, capture_output=True,
                            text=True, timeout=3600)
    if result.returncode != 0:
        raise SystemExit(result.stderr[-4000:])
    return time.perf_counter() - started


def digests(results: Path) -> dict[str, str]:
    """sha256 of every model, prediction and score file (logs and timings differ by design)."""
    kept = (".safetensors", ".parquet", ".csv")
    return {str(path.relative_to(results)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(results.rglob("*")) if path.is_file() and path.suffix in kept
            and "logs" not in path.parts and "speed" not in path.name}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=2)
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    config = generated_config(args.models, args.folds)
    base = {name: value for name, value in os.environ.items() if name != "OOFLINE_WARM_START"}
    base["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{base.get('PATH', '')}"
    base.setdefault("OMP_NUM_THREADS", "1")
    base["PYTHONPATH"] = str(REPO)  # as the Snakefile sets it for its jobs
    with tempfile.TemporaryDirectory(prefix="bench-warm-") as scratch:
        root = Path(scratch)
        cold_s = run(write_config(root / "cold", config), base, args.cores)
        warm_env = shim_environment(str(root / "server"), env=base)
        started = time.perf_counter()
        # the server starts with the first step through the shim; wait until it is ready
        subprocess.run(["python", "-m", "workflow_scripts.execution.gpu_devices", "--gpus", "0", "--", "true"],
                       env=warm_env, cwd=root, check=True)
        while not list((root / "server").glob("*.sock")):
            time.sleep(0.2)
        server_s = time.perf_counter() - started
        warm_s = run(write_config(root / "warm", config), warm_env, args.cores)
        log = "".join(path.read_text() for path in (root / "server").glob("*.log"))
        warm_jobs = log.count(" as pid ")
        cold_files, warm_files = digests(root / "cold" / "results"), digests(root / "warm" / "results")
        stop_servers(str(root / "server"))
    same = cold_files == warm_files
    print(f"graph: {args.models} tiny-Llama LoRA models x {args.folds} folds, --cores {args.cores}")
    print(f"cold run: {cold_s:.1f} s wall")
    print(f"warm run: {warm_s:.1f} s wall ({warm_jobs} steps forked warm); server ready in {server_s:.1f} s, once")
    print(f"warm / cold wall: {warm_s / cold_s:.2f}")
    print(f"outputs byte-identical: {same} ({len(cold_files)} model, prediction and score files)")
    if not same:
        differing = sorted(name for name in cold_files.keys() | warm_files.keys()
                           if cold_files.get(name) != warm_files.get(name))
        raise SystemExit(f"warm and cold outputs differ: {differing[:10]}")


if __name__ == "__main__":
    main()
