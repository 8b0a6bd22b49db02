"""OOM handling: the retry plan keeps the effective batch, an OOM exits 75, and the real rules retry it with\nmore memory while the trainer's OOM record halves the micro-batch."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from workflow_scripts.execution import oom
from workflow_scripts.errors import OoflineError


REPO = Path(__file__).resolve().parents[1]


def reference_plan(attempt, micro, accum):
    """Plain loop: halve the micro-batch once per retry, doubling accumulation."""
    for _ in range(attempt - 1):
        if micro > 1:
            micro, accum = micro // 2, accum * 2
    return micro, accum


@pytest.mark.parametrize("micro,accum", [(16, 1), (8, 4), (12, 2), (3, 1), (1, 8), (6, 5)])
def test_retry_plan_halves_micro_batch_and_keeps_effective_batch(micro, accum):
    for attempt in range(1, 7):
        plan = oom.retry_plan(attempt, micro, accum, mem_mb=16000)
        assert plan.effective_batch_size == micro * accum
        assert plan.micro_batch_size <= max(1, micro // 2 ** (attempt - 1))
        assert micro % plan.micro_batch_size == 0
        if micro & (micro - 1) == 0:  # powers of two halve exactly, like the plain loop
            assert (plan.micro_batch_size, plan.grad_accum_steps) == reference_plan(attempt, micro, accum)


def test_retry_plan_grows_memory_and_respects_cap():
    plans = [oom.retry_plan(a, 16, 1, 16000) for a in (1, 2, 3)]
    assert [(p.micro_batch_size, p.grad_accum_steps, p.mem_mb) for p in plans] == [
        (16, 1, 16000), (8, 2, 24000), (4, 4, 36000)]
    assert oom.mem_mb_for_attempt(16000, 3, max_mem_mb=30000) == 30000
    assert oom.mem_mb_for_attempt(1000, 2, growth=2.0) == 2000


def test_bad_plan_inputs_name_the_argument():
    with pytest.raises(OoflineError, match="micro_batch_size must be a positive integer, got 0"):
        oom.retry_plan(1, 0, 1, 1000)
    with pytest.raises(OoflineError, match="attempt must be a positive integer"):
        oom.retry_plan(0, 8, 1, 1000)
    with pytest.raises(OoflineError, match="OOFLINE_INJECT_OOM must be an integer"):
        oom.maybe_inject_oom(1, {"OOFLINE_INJECT_OOM": "yes"})


def test_oom_errors_are_recognised():
    assert oom.is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert oom.is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert oom.is_out_of_memory(MemoryError())
    assert not oom.is_out_of_memory(RuntimeError("shape mismatch"))
    assert not oom.is_out_of_memory(ValueError("out of memory"))  # only runtime/oom types


def test_injection_fails_the_first_n_attempts_only():
    env = {"OOFLINE_INJECT_OOM": "2"}
    for attempt in (1, 2):
        with pytest.raises(oom.InjectedOutOfMemory, match=f"attempt {attempt}"):
            oom.maybe_inject_oom(attempt, env)
    oom.maybe_inject_oom(3, env)
    oom.maybe_inject_oom(1, {})


def test_cli_exit_codes_distinguish_oom_user_error_and_success(capsys):
    def step(argv):
        if argv == ["oom"]:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")
        if argv == ["bad"]:
            raise OoflineError("config key `micro_batch_size` must be positive")
        if argv == ["crash"]:
            raise KeyError("bug")

    assert oom.run_cli_with_oom(step, ["oom"]) == oom.OOM_EXIT_CODE == 75
    assert "oofline out-of-memory: CUDA out of memory" in capsys.readouterr().err
    assert oom.run_cli_with_oom(step, ["bad"]) == 2
    assert oom.run_cli_with_oom(step, ["ok"]) == 0
    with pytest.raises(KeyError):  # a bug stays a traceback
        oom.run_cli_with_oom(step, ["crash"])


def test_plan_cli_prints_json():
    result = subprocess.run(
        [sys.executable, "-m", "workflow_scripts.execution.oom", "--attempt", "2", "--micro-batch-size", "16",
         "--grad-accum-steps", "2", "--mem-mb", "16000"],
        cwd=REPO, capture_output=True, text=True, check=True,
    )
    assert json.loads(result.stdout) == {"attempt": 2, "micro_batch_size": 8, "grad_accum_steps": 4,
                                         "mem_mb": 24000, "effective_batch_size": 32}


# One QLoRA model on the movies demo with explicit resources, as a user would configure a GPU job.
OOM_MODEL_RESOURCES = {"gpu": 1, "mem_mb": 1000, "runtime": 7, "slurm_partition": "gpu", "threads": 1}


def oom_config(**model):
    from movies_workflow import movies_config

    return movies_config(
        n_train=60,
        model_defaults={"max_length": 32, "epochs": 1, "batch_size": 8},
        models={"qlora": {"source": "tiny:llama", "kind": "decoder_lora", "quantization": "4bit", "r": 4,
                          "alpha": 8, "lr": 2e-3, "resources": OOM_MODEL_RESOURCES, **model}},
    )


def snakemake_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID")}
    env.update(OMP_NUM_THREADS="1", **extra)
    return env


def job_resources(snakemake_output: str) -> dict[tuple[str, str], list[dict[str, str]]]:
    """{(rule, wildcards): [resources of each time the job was started]} from Snakemake's job lines."""
    jobs, current = {}, None
    for line in snakemake_output.splitlines():
        if match := re.match(r"^(?:localrule|rule) (\w+):", line):
            current = [match.group(1), ""]
        elif current and (match := re.match(r"^\s+wildcards: (.*)$", line)):
            current[1] = match.group(1)
        elif current and (match := re.match(r"^\s+resources: (.*)$", line)):
            resources = dict(item.split("=", 1) for item in match.group(1).split(", "))
            jobs.setdefault(tuple(current), []).append(resources)
            current = None
    return jobs


def test_every_gpu_step_of_the_real_rules_takes_the_models_resources(tmp_path):
    """A dry run of the real workflow: training, merging and prediction all ask for the model's GPU, memory,
    runtime and partition (rules/common.smk step_resources); CPU steps ask for none of them."""
    import yaml

    (tmp_path / "config.yaml").write_text(yaml.safe_dump(oom_config()))
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-n", "--cores", "1",
         "results/oof/qlora.parquet", "results/models/qlora/fold1/merged"],
        cwd=tmp_path, env=snakemake_env(), capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = job_resources(result.stdout + result.stderr)
    gpu_jobs = {job: runs for job, runs in jobs.items() if job[0] in ("train_adapter", "merge_adapter", "predict_fold")}
    assert sorted(gpu_jobs) == [("merge_adapter", "model=qlora, split=fold1"),
                                ("predict_fold", "model=qlora, split=fold0"), ("predict_fold", "model=qlora, split=fold1"),
                                ("train_adapter", "model=qlora, split=fold0"), ("train_adapter", "model=qlora, split=fold1")]
    for job, [resources] in gpu_jobs.items():
        assert {key: resources.get(key) for key in ("gpu", "mem_mb", "runtime", "slurm_partition")} == {
            "gpu": "1", "mem_mb": "1000", "runtime": "7", "slurm_partition": "gpu"}, job
    for job in (("prepare_data", ""), ("folds", ""), ("oof", "model=qlora")):
        [resources] = jobs[job]
        assert "gpu" not in resources and "slurm_partition" not in resources, (job, resources)


def train_fold0_with_injected_failure(tmp_path, variable: str, exit_code: int):
    """The real train rule on fold 0 with its first attempt failing through `variable`: the train job's
    resources per attempt."""
    import yaml

    (tmp_path / "config.yaml").write_text(yaml.safe_dump(oom_config()))
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--cores", "1",
         "results/models/qlora/fold0/adapter"],
        cwd=tmp_path, env=snakemake_env(**{variable: "1"}), capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"returned non-zero exit status {exit_code}" in result.stderr
    return job_resources(result.stderr)[("train_adapter", "model=qlora, split=fold0")]


@pytest.mark.slow
def test_real_training_retries_an_oom_with_half_the_micro_batch_and_more_memory(tmp_path):
    """The real train rule: attempt 1 runs out of memory (injected) and exits 75, recording the OOM; Snakemake
    retries it with 1.5 x mem_mb, and attempt 2 trains with half the micro-batch and twice the accumulation
    (the same 8 rows per optimizer step, so the same number of steps), then clears its OOM record."""
    runs = train_fold0_with_injected_failure(tmp_path, "OOFLINE_INJECT_OOM", exit_code=75)
    assert [(run["attempt"], run["mem_mb"]) for run in runs] == [("1", "1000"), ("2", "1500")]
    summary = json.loads((tmp_path / "results" / "models" / "qlora" / "fold0" / "adapter" / "training.json")
                         .read_text())["summary"]
    assert (summary["attempt"], summary["micro_batch"], summary["grad_accum"]) == (2, 4, 2)
    assert summary["steps"] == -(-summary["train_rows"]["official"] // 8)  # one epoch of 8-row steps
    assert not (tmp_path / "results" / "work" / "qlora" / "fold0").exists()


@pytest.mark.slow
def test_a_retry_after_a_user_error_asks_for_the_same_memory(tmp_path):
    """Bad input (an OoflineError, exit 2) is retried by Snakemake like any failure, but its mem_mb does not
    grow: only an out-of-memory exit (or a kill) earns more memory."""
    runs = train_fold0_with_injected_failure(tmp_path, "OOFLINE_INJECT_USER_ERROR", exit_code=2)
    assert [(run["attempt"], run["mem_mb"]) for run in runs] == [("1", "1000"), ("2", "1000")]
    assert not (tmp_path / "results" / "work" / "qlora" / "fold0").exists()  # the record goes with the work folder


def test_memory_grows_per_attempt_less_the_user_error_attempts():
    assert oom.mem_mb_after_failures(1000, 1, 0) == 1000
    assert oom.mem_mb_after_failures(1000, 2, 0) == 1500
    assert oom.mem_mb_after_failures(1000, 2, 1) == 1000
    assert oom.mem_mb_after_failures(1000, 3, 1) == 1500
