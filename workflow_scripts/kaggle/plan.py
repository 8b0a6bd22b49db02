"""How long a Kaggle package's notebook will run on the hidden test: an estimate from measured speeds.

Every prediction step records how long its pass over the public test took (`io.inference_speed_path`:
rows, tokens after truncation, seconds, model load seconds, device, threads). A member's hidden-test cost
is its load time plus its measured seconds scaled by the hidden test's tokens over the public test's
(the hidden rows are assumed to be as long as the public ones), divided by the accelerator factor. A
one-thread CPU step counts its CPU seconds when they are less than its wall time, so other jobs sharing the
machine do not inflate the plan.

    factor = speed(target accelerator) / speed(device the step ran on)

Speeds are in CPU-thread units: a CPU runs at its thread count (Kaggle's CPU notebooks have 4), a GPU at
its dense fp16 tensor TFLOPS x THREADS_PER_TFLOPS. These are planning constants, not measurements: a
user who has timed a model on Kaggle sets `kaggle.speed_factor` instead. TF-IDF members and logistic-
regression heads run on the CPU in one thread: they are scaled by rows and not by the accelerator. A
notebook also pays its start-up: importing torch and transformers, timed in a fresh interpreter when the
package is built, plus PIP_INSTALL_SECONDS for installing the wheels.

Loading: the steps load their models from a local disk, the notebook from /kaggle/input, a network mount. A
member's load is its measured load time plus the bytes the notebook reads for it (`bytes_read`: a shared base once,
each fold's adapter or model) at the input's read rate (`kaggle.read_mb_per_second`, a planning constant by default).
Fold adapters on one base pay one measured base load (`shared_base`), as the notebook loads that base once.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from workflow_scripts.errors import OoflineError

# Kaggle's notebook accelerators: name -> kernel-metadata settings and speed (CPU-thread units; cpu: threads)
ACCELERATORS: dict[str, dict[str, Any]] = {
    "cpu": {"enable_gpu": False, "machine_shape": None, "gpu": None},
    "p100": {"enable_gpu": True, "machine_shape": "NvidiaTeslaP100", "gpu": "P100"},
    "t4x2": {"enable_gpu": True, "machine_shape": "NvidiaTeslaT4", "gpu": "T4"},  # the package predicts on one
}
# dense fp16 tensor TFLOPS (vendor figures; P100 has no tensor cores): a GPU's speed relative to another
GPU_TFLOPS = {"P100": 19.0, "T4": 65.0, "V100": 125.0, "A10": 125.0, "L4": 121.0, "A100": 312.0, "L40": 362.0,
              "H100": 989.0, "H200": 989.0, "RTX 3090": 71.0, "RTX 4090": 165.0}
# one TFLOPS of a GPU's tensor throughput in CPU threads of transformer inference (a planning constant)
THREADS_PER_TFLOPS = 5.0
# installing the wheels with pip: added to the measured import time
PIP_INSTALL_SECONDS = 2.0
# what a notebook imports before its first model loads: always, and per member kind
STARTUP_IMPORTS = ("polars", "numpy", "safetensors")
KIND_IMPORTS = {"tfidf_linear": ("sklearn.feature_extraction.text",), "embedding_head": ("torch", "transformers"),
                "encoder_full": ("torch", "transformers"), "encoder_lora": ("torch", "transformers", "peft"),
                "decoder_lora": ("torch", "transformers", "peft")}
# members that run on the CPU whatever the accelerator (scaled by rows only)
CPU_KINDS = ("tfidf_linear",)
# MB/s a notebook reads a dataset from /kaggle/input at (a planning constant: a network mount, not a local disk)
INPUT_READ_MB_PER_SECOND = 150.0


def check_accelerator(name: str, where: str = "kaggle.accelerator") -> dict[str, Any]:
    if name not in ACCELERATORS:
        raise OoflineError(f"config: {where}: unknown accelerator {name!r} (expected one of {', '.join(ACCELERATORS)})")
    return ACCELERATORS[name]


def device_speed(device_name: str, threads: int) -> float | None:
    """A device's speed in CPU-thread units: its threads for a CPU, TFLOPS x THREADS_PER_TFLOPS for a known GPU
    (None for a GPU this table does not know)."""
    if device_name in ("", "cpu"):
        return float(max(threads, 1))
    for gpu, tflops in sorted(GPU_TFLOPS.items(), key=lambda item: -len(item[0])):
        if gpu.lower() in device_name.lower():
            return tflops * THREADS_PER_TFLOPS
    return None


def accelerator_speed(accelerator: str, cpu_threads: int) -> float:
    settings = check_accelerator(accelerator)
    return float(cpu_threads) if settings["gpu"] is None else GPU_TFLOPS[settings["gpu"]] * THREADS_PER_TFLOPS


def uncontended(record: dict[str, Any], wall_key: str, cpu_key: str) -> float:
    """A measured duration without the waits of a shared CPU: for a one-thread CPU step, its CPU seconds when
    they are less than its wall time (other jobs held the core); else the wall time (a many-thread step's CPU
    seconds over its threads would flatter it when its threads idle)."""
    wall = float(record.get(wall_key, 0.0))
    if record.get("device_name", "cpu") == "cpu" and int(record.get("threads", 1)) == 1 and record.get(cpu_key) is not None:
        return min(wall, float(record[cpu_key]))
    return wall


def scaled_seconds(record: dict[str, Any], rows: int, target_speed: float, speed_factor: float | None,
                   by_tokens: bool) -> float:
    """One measured pass (a speed record) scaled to `rows` hidden-test rows on the target device (no load time).

    Model passes scale by tokens: the hidden test's tokens over the measured ones, the hidden rows taken to be
    as long as the public test's (the measured rows)."""
    measured_rows = max(int(record["rows"]), 1)
    if by_tokens and record.get("tokens"):
        tokens_per_row = record["tokens"] / measured_rows
        work = rows * tokens_per_row / record["tokens"]
    else:
        work = rows / measured_rows
    seconds = uncontended(record, "seconds", "cpu_seconds") * work
    if by_tokens:
        factor = speed_factor
        if factor is None:
            measured = device_speed(record.get("device_name", "cpu"), int(record.get("threads", 1)))
            factor = target_speed / measured if measured else 1.0
        seconds /= factor
    return seconds


def load_seconds(member: dict[str, Any], read_mb_per_second: float = INPUT_READ_MB_PER_SECOND) -> float:
    """A model's load time in the notebook: the measured loads (one for fold adapters on a shared base, as the
    notebook loads that base once) plus its `bytes_read` from /kaggle/input at `read_mb_per_second`."""
    records = list(member["speeds"].values()) + ([member["embed_speed"]] if member.get("embed_speed") else [])
    measured = [uncontended(record, "load_seconds", "load_cpu_seconds") for record in records]
    local = max(measured, default=0.0) if member.get("shared_base") else sum(measured)
    return local + member.get("bytes_read", 0) / (read_mb_per_second * 1e6)


def member_seconds(member: dict[str, Any], rows: int, target_speed: float, speed_factor: float | None,
                   read_mb_per_second: float = INPUT_READ_MB_PER_SECOND) -> float:
    """A model's estimated seconds on `rows` hidden-test rows: every fold model (or the embed pass + heads), and
    its load (`load_seconds`)."""
    by_tokens = member["kind"] not in CPU_KINDS
    total = load_seconds(member, read_mb_per_second)
    if member.get("embed_speed"):
        total += scaled_seconds(member["embed_speed"], rows, target_speed, speed_factor, by_tokens=True)
        by_tokens = False  # the fold heads are logistic regressions on the CPU
    for record in member["speeds"].values():
        total += scaled_seconds(record, rows, target_speed, speed_factor, by_tokens)
    return total


def measure_startup(kinds: list[str]) -> float:
    """Seconds a fresh interpreter takes to import what the notebook imports for members of these kinds (its
    CPU seconds when other jobs slow the wall clock), plus PIP_INSTALL_SECONDS: the notebook's fixed cost."""
    import resource
    import subprocess
    import sys
    import time

    modules = list(dict.fromkeys(STARTUP_IMPORTS + tuple(m for kind in kinds for m in KIND_IMPORTS.get(kind, ()))))
    before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.time()
    probe = subprocess.run([sys.executable, "-c", "import " + ", ".join(modules)], capture_output=True, text=True)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        raise OoflineError(f"the package step's environment cannot import what the notebook imports ({last}): run it "
                           "in the train environment (envs/train.yaml, the train container)")
    after, wall = resource.getrusage(resource.RUSAGE_CHILDREN), time.time() - started
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return round(min(wall, cpu) + PIP_INSTALL_SECONDS, 3)


def estimate(members: dict[str, dict[str, Any]], rows: int, accelerator: str, cpu_threads: int,
             time_limit_hours: float, speed_factor: float | None = None, startup_seconds: float = 0.0,
             read_mb_per_second: float = INPUT_READ_MB_PER_SECOND) -> dict[str, Any]:
    """plan.json's estimate: seconds per member and in all, against the time limit. `members`: name ->
    {kind, speeds: {split: speed record}, embed_speed: record | None, bytes_read, shared_base};
    `startup_seconds` from measure_startup."""
    target = accelerator_speed(accelerator, cpu_threads)
    seconds = {name: round(member_seconds(member, rows, target, speed_factor, read_mb_per_second), 3)
               for name, member in members.items()}
    loads = {name: round(load_seconds(member, read_mb_per_second), 3) for name, member in members.items()}
    total = startup_seconds + sum(seconds.values())
    limit = time_limit_hours * 3600.0
    costliest = sorted(seconds, key=lambda name: -seconds[name])
    return {"rows": rows, "accelerator": accelerator, "cpu_threads": cpu_threads, "speed_factor": speed_factor,
            "read_mb_per_second": read_mb_per_second, "startup_seconds": startup_seconds, "member_seconds": seconds,
            "member_load_seconds": loads, "estimated_seconds": round(total, 3),
            "time_limit_seconds": limit, "over_limit": total > limit, "costliest_members": costliest[:3]}


def summary_line(name: str, plan: dict[str, Any]) -> str:
    """The printed line: estimated runtime against the limit; over it, a warning naming the costliest members."""
    hours = plan["estimated_seconds"] / 3600.0
    limit_hours = plan["time_limit_seconds"] / 3600.0
    line = (f"kaggle {name}: estimated notebook runtime {_duration(plan['estimated_seconds'])} for {plan['rows']} "
            f"hidden-test rows on {plan['accelerator']} (limit {limit_hours:g} h, {100 * hours / limit_hours:.0f}% of it)")
    if plan["over_limit"]:
        costly = ", ".join(f"{member} {_duration(plan['member_seconds'][member])}" for member in plan["costliest_members"])
        line = (f"WARNING: kaggle {name}: the notebook would run {_duration(plan['estimated_seconds'])} on "
                f"{plan['accelerator']}, over the {limit_hours:g} h limit; costliest members: {costly}")
    return line


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def read_speed(path: str | Path, member: str) -> dict[str, Any]:
    import json

    path = Path(path)
    if not path.exists():
        raise OoflineError(f"{path}: no measured prediction speed for member {member!r} (the prediction step writes "
                           "it; rerun that step)")
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError:
        record = None
    if not isinstance(record, dict) or "rows" not in record or "seconds" not in record:
        # an empty file is what `snakemake --touch` leaves
        raise OoflineError(f"{path}: not a prediction speed record of member {member!r} (empty or touched?): rerun "
                           "the step that predicts its test rows (snakemake --forcerun it)")
    return record
