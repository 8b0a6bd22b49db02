"""Cost of starting a GPU step through the allocator: wrapper launch vs. a direct launch, same process.

    .venv/bin/python bench/gpu_allocator.py [--runs 10]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from workflow_scripts.execution import gpu_devices  # noqa: E402


def timed(cmd: list[str], env: dict[str, str], runs: int) -> float:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, cwd=REPO, stderr=subprocess.DEVNULL)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as lock_dir:
        env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID")}
        env.update(PYTHONPATH=str(REPO), OOFLINE_GPU_DEVICES="0,1,2,3", OOFLINE_GPU_LOCK_DIR=lock_dir)
        step = [sys.executable, "-c", "import os; os.environ.get('CUDA_VISIBLE_DEVICES')"]
        direct = timed(step, env, args.runs)
        wrapped = timed([sys.executable, "-m", "workflow_scripts.execution.gpu_devices", "--gpus", "1", "--", *step],
                        env, args.runs)
        # in-process: lock + unlock one of 4 devices, against opening and closing the same file
        n = 2000
        start = time.perf_counter()
        for _ in range(n):
            gpu_devices.try_acquire(1, ["0", "1", "2", "3"], Path(lock_dir)).release()
        lock_us = (time.perf_counter() - start) / n * 1e6
        start = time.perf_counter()
        for _ in range(n):
            os.close(os.open(Path(lock_dir) / "gpu-0.lock", os.O_RDWR))
        open_us = (time.perf_counter() - start) / n * 1e6
    print(f"direct launch      {direct * 1000:8.1f} ms (median of {args.runs})")
    print(f"through allocator  {wrapped * 1000:8.1f} ms")
    print(f"ratio wrapped/direct: {wrapped / direct:.2f}x (+{(wrapped - direct) * 1000:.0f} ms per GPU job)")
    print(f"acquire+release 1 of 4 GPUs: {lock_us:.1f} us vs open+close {open_us:.1f} us "
          f"(ratio {lock_us / open_us:.1f}x)")


if __name__ == "__main__":
    main()
