"""OOM handling: the retry plan keeps the effective batch, an OOM exits 75, Snakemake retries with attempt 2."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from workflow_scripts.execution import oom
from workflow_scripts.errors import OoflineError


REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "slurm_workflow"


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


def test_snakemake_retries_an_oom_with_the_next_attempts_plan(tmp_path):
    """Real snakemake with the default profile: attempt 1 OOMs (exit 75), attempt 2 runs with 4 x 2."""
    work = tmp_path / "wf"
    shutil.copytree(FIXTURE, work)
    shutil.copytree(REPO / "profiles", work / "profiles")  # profiles/default applies implicitly
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID")}
    env.update(PYTHONPATH=str(REPO), OOFLINE_GPU_DEVICES="0,1", OOFLINE_GPU_LOCK_DIR=str(tmp_path / "locks"),
               OOFLINE_INJECT_OOM="1", OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "1"],
        cwd=work, env=env, capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "returned non-zero exit status 75" in result.stderr
    trained = json.loads((work / "results" / "train" / "tiny.json").read_text())
    assert (trained["attempt"], trained["micro_batch_size"], trained["grad_accum_steps"], trained["mem_mb"]) == (
        2, 4, 2, 750)
    assert trained["cuda_visible_devices"] == "0"


@pytest.mark.slow
def test_real_training_retries_an_oom_with_half_the_micro_batch(tmp_path):
    """The real train rule: attempt 1 runs out of memory (injected) and exits 75; Snakemake retries it, and
    attempt 2 trains with half the micro-batch and twice the accumulation, then clears its OOM record."""
    import yaml
    from movies_workflow import movies_config

    config = movies_config(
        model_defaults={"max_length": 32, "epochs": 1, "batch_size": 8, "resources": {"threads": 1}},
        models={"qlora": {"source": "tiny:llama", "kind": "decoder_lora", "quantization": "4bit", "r": 4,
                          "alpha": 8, "lr": 2e-3}},
    )
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID")}
    env.update(OOFLINE_INJECT_OOM="1", OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--cores", "1",
         "results/models/qlora/fold0/adapter"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "returned non-zero exit status 75" in result.stderr
    summary = json.loads((tmp_path / "results" / "models" / "qlora" / "fold0" / "adapter" / "training.json")
                         .read_text())["summary"]
    assert (summary["attempt"], summary["micro_batch"], summary["grad_accum"]) == (2, 4, 2)
    assert not (tmp_path / "results" / "work" / "qlora" / "fold0").exists()
