"""A real one-node Slurm cluster (.ci/slurm/up.sh): jobs go through sbatch, GPU rules ask for a GPU,
an OOM is retried with more memory, and a scancelled training job is retried to completion."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "slurm_workflow"

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("sinfo") is None,
                       reason="Slurm client tools (sinfo) not installed: run `bash .ci/slurm/up.sh` as root first"),
]


def cluster_up() -> bool:
    probe = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=30)
    return probe.returncode == 0 and "gpu" in probe.stdout


@pytest.fixture(scope="module")
def cluster():
    """The test cluster; started (and stopped afterwards) here when CI has not started it."""
    started_here = False
    if not cluster_up():
        if os.geteuid() != 0:
            pytest.skip("no Slurm cluster reachable and not root, so .ci/slurm/up.sh cannot start one")
        subprocess.run(["bash", str(REPO / ".ci" / "slurm" / "up.sh")], check=True, timeout=600)
        started_here = True
    yield
    if started_here:
        subprocess.run(["bash", str(REPO / ".ci" / "slurm" / "down.sh")], check=False, timeout=120)


def job_info(job_id: str) -> dict[str, str]:
    """`scontrol show job` as a dict (finished jobs stay visible for MinJobAge=600 s)."""
    text = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, check=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", text))


def run_workflow(work: Path, extra_env: dict[str, str], config: list[str], background: bool = False):
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", "SLURM_CONF")}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **extra_env)
    # as a user runs it from the repository root: profiles/default would be picked up implicitly as
    # the workflow profile (cores, gpu=1 cap), so the slurm profile is given as the workflow profile
    cmd = [sys.executable, "-m", "snakemake", "--workflow-profile", "slurm",
           # no accounting on the test cluster: sacct would hang (issue 6)
           "--slurm-status-command", "squeue", "--slurm-keep-successful-logs",
           "--slurm-init-seconds-before-status-checks", "1", "--seconds-between-status-checks", "2",
           "--latency-wait", "5",
           "--config", *config]
    log = open(work / "snakemake.out", "w")
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    if background:
        return proc
    proc.wait(timeout=400)
    return proc


def test_jobs_run_through_slurm_gpu_rule_requests_a_gpu_and_oom_retry_gets_more_memory(cluster, tmp_path):
    work = tmp_path / "wf"
    shutil.copytree(FIXTURE, work)
    shutil.copytree(REPO / "profiles", work / "profiles")
    proc = run_workflow(work, {"OOFLINE_INJECT_OOM": "1"}, ["train_sleep=0"])
    output = (work / "snakemake.out").read_text()
    assert proc.returncode == 0, output[-4000:]

    prepared = json.loads((work / "results" / "prepare.json").read_text())
    trained = json.loads((work / "results" / "train" / "tiny.json").read_text())
    assert prepared["slurm_job_id"] and trained["slurm_job_id"]
    assert prepared["slurm_job_id"] != trained["slurm_job_id"]
    # Slurm assigned the (fake) GPU; the allocator left its CUDA_VISIBLE_DEVICES alone
    assert trained["cuda_visible_devices"] == "0"
    assert (trained["attempt"], trained["micro_batch_size"], trained["grad_accum_steps"]) == (2, 4, 2)

    cpu_job = job_info(prepared["slurm_job_id"])
    assert cpu_job["Partition"] == "cpu" and cpu_job["JobState"] == "COMPLETED"
    assert "gpu" not in cpu_job.get("TresPerJob", "")
    gpu_job = job_info(trained["slurm_job_id"])
    assert gpu_job["Partition"] == "gpu" and gpu_job["JobState"] == "COMPLETED"
    assert gpu_job["TresPerJob"] == "gres:gpu:1"
    assert gpu_job["MinMemoryNode"] == "750M"  # mem_mb grew from 500 on the retry

    # Both attempts left a Slurm log; the first one failed with the OOM exit code.
    logs = sorted((work / ".snakemake" / "slurm_logs" / "rule_train" / "tiny").glob("*.log"),
                  key=lambda p: int(p.stem))
    assert len(logs) == 2
    first_job = job_info(logs[0].stem)
    assert first_job["JobState"] == "FAILED" and first_job["MinMemoryNode"] == "500M"
    assert "exit status 75" in logs[0].read_text()


def test_scancelled_training_job_is_retried_and_leaves_no_partial_output(cluster, tmp_path):
    work = tmp_path / "wf"
    shutil.copytree(FIXTURE, work)
    shutil.copytree(REPO / "profiles", work / "profiles")
    proc = run_workflow(work, {}, ["train_sleep=8"], background=True)
    try:
        cancelled = None
        deadline = time.time() + 180
        while cancelled is None and time.time() < deadline and proc.poll() is None:
            queue = subprocess.run(["squeue", "-h", "-o", "%i|%k|%T"], capture_output=True, text=True).stdout
            for line in queue.splitlines():
                job_id, comment, state = line.strip().split("|")
                if comment == "rule_train_wildcards_tiny" and state == "RUNNING":
                    time.sleep(2)  # let it write its in-progress file
                    subprocess.run(["scancel", job_id], check=True)
                    cancelled = job_id
            time.sleep(0.5)
        assert cancelled is not None, "the training job never started running"
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    output = (work / "snakemake.out").read_text()
    assert proc.returncode == 0, output[-4000:]
    assert job_info(cancelled)["JobState"] == "CANCELLED"
    trained = json.loads((work / "results" / "train" / "tiny.json").read_text())
    assert trained["attempt"] == 2 and trained["slurm_job_id"] != cancelled
    # the declared output is the finished one; nothing half-written is left as an output
    assert [p.name for p in (work / "results" / "train").iterdir() if not p.name.startswith(".")] == ["tiny.json"]
