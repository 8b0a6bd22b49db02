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
    # a competition that scores on H100s (AIMO 3) assigns them itself: no machine shape is asked for
    "h100": {"enable_gpu": True, "machine_shape": None, "gpu": "H100"},
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


# ---- every shape: memory; the retrieval and answers estimates ----
#
# Memory: a model's weights in the precision and quantization it is loaded in on the target accelerator, against
# that accelerator's memory per GPU (a package predicts on one GPU); answers packages hold every language model
# at once (a problem is answered by all of them in turn), with the KV cache of a batch of samples. A WARNING names
# a member that cannot fit. Generation time: token-by-token decoding reads every weight once per step, so a step
# takes weight bytes / memory bandwidth plus the engine's per-step overhead; a problem's cost is its answer sets'
# batches x new tokens (the mean the workflow's own test answers generated), capped by seconds_per_problem.

# accelerator memory per GPU, GB (vendor figures; planning constants): t4x2 has two T4s, a package uses one
GPU_MEMORY_GB = {"T4": 16.0, "P100": 16.0, "H100": 80.0}
CPU_MEMORY_GB = 30.0  # a Kaggle CPU notebook's RAM (planning constant)
# memory bandwidth, GB/s (vendor figures; planning constants)
GPU_BANDWIDTH_GBS = {"T4": 320.0, "P100": 732.0, "H100": 3350.0}
CPU_BANDWIDTH_GBS = 20.0  # planning constant
# bytes per weight as loaded: half precision, bitsandbytes 8-bit, nf4 4-bit (+ its block scales)
BYTES_PER_WEIGHT = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "8bit": 1.0, "4bit": 0.5625}
# the share of a GPU's memory weights and KV cache may take (the rest: CUDA context, activations, the allocator)
MEMORY_HEADROOM = 0.9
# seconds of engine overhead per decoding step (planning constants: vLLM's scheduler, transformers' generate loop)
DECODE_STEP_OVERHEAD_SECONDS = {"vllm": 0.005, "transformers": 0.03}
# GPUs with native bf16 (compute capability >= 8.0): `precision: auto` is bf16 there, fp16 on the others
NATIVE_BF16_GPUS = ("A10", "L4", "A100", "L40", "H100", "H200", "RTX 3090", "RTX 4090")


def target_precision(precision: str | None, accelerator: str) -> str:
    """The precision a model runs in on the accelerator: fp32 on a CPU for auto; auto on a GPU is bf16 where it
    is native, else fp16; an explicit one as given."""
    gpu = check_accelerator(accelerator)["gpu"]
    if precision in (None, "", "auto"):
        return "fp32" if gpu is None else ("bf16" if gpu in NATIVE_BF16_GPUS else "fp16")
    return precision


def safetensors_parameters(folder: str | Path) -> int:
    """Weights in a model folder's *.safetensors files (their headers only: nothing is loaded)."""
    import json
    import struct

    total = 0
    for path in sorted(Path(folder).glob("*.safetensors")):
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        for name, entry in header.items():
            if name != "__metadata__":
                count = 1
                for size in entry["shape"]:
                    count *= size
                total += count
    return total


def model_shape(folder: str | Path) -> dict[str, Any]:
    """Parameters and bytes of a model folder, and what its KV cache costs per token (decoders, from config.json)."""
    import json

    folder = Path(folder)
    files = [path for path in folder.rglob("*") if path.is_file()]
    shape: dict[str, Any] = {"parameters": safetensors_parameters(folder),
                             "bytes_on_disk": sum(path.stat().st_size for path in files)}
    config_path = folder / "config.json"
    if config_path.exists():
        config = json.loads(config_path.read_text())
        text = config.get("text_config") or config
        layers, heads = text.get("num_hidden_layers"), text.get("num_attention_heads")
        if layers and heads and text.get("hidden_size"):
            kv_heads = text.get("num_key_value_heads") or heads
            head_dim = text.get("head_dim") or text["hidden_size"] // heads
            shape["kv_values_per_token"] = 2 * layers * kv_heads * head_dim  # keys and values, every layer
    return shape


def weights_gb(parameters: int, precision: str, quantization: str | None) -> float:
    per_weight = BYTES_PER_WEIGHT[quantization] if quantization in ("4bit", "8bit") else BYTES_PER_WEIGHT[precision]
    return parameters * per_weight / 1e9


def memory_plan(members: dict[str, dict[str, Any]], accelerator: str, together: bool) -> dict[str, Any]:
    """Each member's weights (+ its KV cache) in GB as loaded on `accelerator`, against its memory. `members`: name ->
    {parameters, precision (resolved), quantization, kv_cache_gb (optional)}; `together`: all are held at once."""
    gpu = check_accelerator(accelerator)["gpu"]
    capacity = CPU_MEMORY_GB if gpu is None else GPU_MEMORY_GB.get(gpu)
    rows = {}
    for name, member in members.items():
        gb = weights_gb(member["parameters"], member["precision"], member.get("quantization"))
        rows[name] = {"weights_gb": round(gb, 3), "kv_cache_gb": round(member.get("kv_cache_gb", 0.0), 3),
                      "precision": member["precision"], "quantization": member.get("quantization") or "none"}
    need = [row["weights_gb"] + row["kv_cache_gb"] for row in rows.values()]
    peak = sum(need) if together else max(need, default=0.0)
    usable = capacity * MEMORY_HEADROOM if capacity else None
    for row in rows.values():
        row["fits"] = usable is None or row["weights_gb"] + row["kv_cache_gb"] <= usable
    return {"accelerator": accelerator, "memory_gb": capacity, "usable_gb": usable, "held_together": together,
            "peak_gb": round(peak, 3), "fits": usable is None or peak <= usable, "members": rows}


def memory_lines(name: str, memory: dict[str, Any]) -> list[str]:
    """One WARNING line per member that cannot fit (and for members that do not fit together)."""
    lines = []
    for member, row in memory["members"].items():
        if not row["fits"]:
            how = row["quantization"] if row["quantization"] != "none" else row["precision"]
            lines.append(f"WARNING: kaggle {name}: {member} needs {row['weights_gb'] + row['kv_cache_gb']:.1f} GB "
                         f"({row['weights_gb']:.1f} GB of weights in {how}"
                         + (f", {row['kv_cache_gb']:.1f} GB of KV cache" if row["kv_cache_gb"] else "")
                         + f") on {memory['accelerator']} ({memory['memory_gb']:g} GB): it does not fit")
    if not memory["fits"] and all(row["fits"] for row in memory["members"].values()):
        lines.append(f"WARNING: kaggle {name}: its models are held together and need {memory['peak_gb']:.1f} GB on "
                     f"{memory['accelerator']} ({memory['memory_gb']:g} GB): they do not fit together")
    return lines


def shape_summary_lines(name: str, plan: dict[str, Any]) -> list[str]:
    """The printed lines of a retrieval or answers plan: the runtime against the limit, then memory warnings."""
    return [summary_line(name, plan)] + memory_lines(name, plan["memory"])


def upload_commands(name: str, dataset: Path, notebook: Path) -> dict[str, list[str]]:
    return {"commands": [f"kaggle datasets create -p {dataset} --dir-mode zip", f"kaggle kernels push -p {notebook}"],
            "update_commands": [f"kaggle datasets version -p {dataset} --dir-mode zip -m \"oofline {name}\"",
                                f"kaggle kernels push -p {notebook}"]}


def _limit(kaggle: dict[str, Any], steps: dict[str, float], startup_seconds: float) -> dict[str, Any]:
    total = startup_seconds + sum(steps.values())
    limit = float(kaggle["time_limit_hours"]) * 3600.0
    return {"startup_seconds": startup_seconds, "member_seconds": {k: round(v, 3) for k, v in steps.items()},
            "estimated_seconds": round(total, 3), "time_limit_seconds": limit, "over_limit": total > limit,
            "costliest_members": sorted(steps, key=lambda step: -steps[step])[:3]}


def retrieval_estimate(speeds: dict[str, dict[str, Any]], rows: int, kaggle: dict[str, Any],
                       members: dict[str, dict[str, Any]], startup_seconds: float = 0.0) -> dict[str, Any]:
    """A retrieval notebook's estimate: embedding `rows` hidden queries and reranking their top_n pairs, scaled from
    the build-time pass's timings of the public test (load times included); and what embedding the corpus at build
    time saves each notebook run. `members`: role -> {parameters, precision, quantization} for the memory check."""
    target = accelerator_speed(kaggle["accelerator"], kaggle["cpu_threads"])
    factor = kaggle.get("speed_factor")
    steps = {"embed queries": scaled_seconds(speeds["queries"], rows, target, factor, by_tokens=True)}
    if "rerank" in speeds:
        steps["rerank top_n pairs"] = scaled_seconds(speeds["rerank"], rows, target, factor, by_tokens=True)
    corpus = dict(speeds["corpus"], load_seconds=0.0, load_cpu_seconds=0.0)
    saved = scaled_seconds(corpus, int(corpus["rows"]), target, factor, by_tokens=True)
    return {"rows": rows, "accelerator": kaggle["accelerator"], "cpu_threads": kaggle["cpu_threads"],
            "speed_factor": factor, **_limit(kaggle, steps, startup_seconds),
            "corpus_passages": int(corpus["rows"]), "corpus_embedding_seconds_saved": round(saved, 3),
            "memory": memory_plan(members, kaggle["accelerator"], together=False)}


def answers_estimate(answer_sets: dict[str, dict[str, Any]], models: dict[str, dict[str, Any]], rows: int,
                     kaggle: dict[str, Any], backend: str, startup_seconds: float = 0.0) -> dict[str, Any]:
    """An answers notebook's estimate for `rows` hidden problems: per problem, each answer set's batches of samples
    x new tokens (decode steps, each reading the model's weights once), capped at seconds_per_problem; plus reading
    every model once. `answer_sets`: name -> {model, samples, batch_size, new_tokens, max_new_tokens};
    `models`: name -> {parameters, precision, quantization, bytes_on_disk, kv_values_per_token}."""
    import math

    gpu = check_accelerator(kaggle["accelerator"])["gpu"]
    bandwidth = CPU_BANDWIDTH_GBS if gpu is None else GPU_BANDWIDTH_GBS.get(gpu, GPU_BANDWIDTH_GBS["T4"])
    per_problem = {}
    for name, answer_set in answer_sets.items():
        model = models[answer_set["model"]]
        step = weights_gb(model["parameters"], model["precision"], model.get("quantization")) / bandwidth
        steps = math.ceil(answer_set["samples"] / answer_set["batch_size"]) * answer_set["new_tokens"]
        per_problem[name] = steps * (step + DECODE_STEP_OVERHEAD_SECONDS[backend])
    problem_seconds = sum(per_problem.values())
    cap = kaggle.get("seconds_per_problem")
    capped = min(problem_seconds, float(cap)) if cap else problem_seconds
    steps = {"answer problems": rows * capped,
             "read models": sum(m["bytes_on_disk"] for m in models.values())
             / ((kaggle.get("read_mb_per_second") or INPUT_READ_MB_PER_SECOND) * 1e6)}
    memory_members = {}
    for name, model in models.items():
        batch = max(s["batch_size"] for s in answer_sets.values() if s["model"] == name)
        tokens = max(s["prompt_tokens"] + s["max_new_tokens"] for s in answer_sets.values() if s["model"] == name)
        kv_gb = batch * tokens * model.get("kv_values_per_token", 0) * BYTES_PER_WEIGHT["fp16"] / 1e9
        memory_members[name] = {**model, "kv_cache_gb": kv_gb}
    return {"rows": rows, "accelerator": kaggle["accelerator"], "backend": backend,
            **_limit(kaggle, steps, startup_seconds),
            "seconds_per_problem": round(problem_seconds, 3), "seconds_per_problem_cap": cap,
            "answer_set_seconds_per_problem": {k: round(v, 3) for k, v in per_problem.items()},
            "memory": memory_plan(memory_members, kaggle["accelerator"], together=True)}


def classification_memory(models: dict[str, dict[str, Any]], dataset: Path, accelerator: str) -> dict[str, Any]:
    """A classification package's members (oofline_package.json's `models`, paths under `dataset`) as loaded on
    `accelerator`: a base's weights plus its adapter, or a fold folder's whole model; one member at a time (the
    notebook frees each before the next). TF-IDF members hold no transformer."""
    members = {}
    for name, entry in models.items():
        if entry["kind"] in CPU_KINDS:
            continue
        split = dataset / next(iter(entry["splits"].values()))
        parameters = safetensors_parameters(split) + (safetensors_parameters(dataset / entry["base"]) if entry["base"] else 0)
        # as its prediction step loads it (a merged member too: issue 25 loads it in the member's quantization)
        members[name] = {"parameters": parameters, "quantization": entry["config"].get("quantization", "none"),
                         "precision": target_precision(entry["config"].get("precision"), accelerator)}
    return memory_plan(members, accelerator, together=False)
