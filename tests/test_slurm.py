"""A real one-node Slurm cluster (.ci/slurm/up.sh): a subset of the demo runs through the real workflow
with every job submitted by sbatch and GPU rules asking for a GPU; a scancelled training job is retried and
resumes from its checkpoint; an OOM (in a small fixture workflow) is retried with more memory."""
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
from movies_workflow import movies_config

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
           # no accounting on the test cluster: sacct would hang
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


# A subset of the demo through the real workflow: the movies data, one QLoRA model on the GPU partition,
# its OOF/test predictions and a submission. Training is long enough (2 epochs, a checkpoint every 2
# steps) that the test can scancel fold 0 after a checkpoint and see the retry resume from it.
DEMO_SUBSET = movies_config(
    n_train=120,
    model_defaults={"max_length": 48, "epochs": 2, "batch_size": 4, "checkpoint_every": 2,
                    "resources": {"threads": 1}},
    models={"qlora": {"source": "tiny:llama", "kind": "decoder_lora", "quantization": "4bit", "r": 4, "alpha": 8,
                      "lr": 2e-3, "resources": {"gpu": 1, "cpus_per_gpu": 1, "slurm_partition": "gpu",
                                                "mem_mb": 2000, "runtime": 15}}},
    submissions={"qlora_top3": {"source": "qlora", "format": "top_k", "top_k": 3, "prediction_columns": ["category"]}},
)


def slurm_jobs_by_rule(work: Path) -> dict[str, list[str]]:
    """{rule: Slurm job ids} from the plugin's per-job logs (.snakemake/slurm_logs/rule_<name>/...)."""
    jobs: dict[str, list[str]] = {}
    for log in (work / ".snakemake" / "slurm_logs").rglob("*.log"):
        rule = next(part for part in log.relative_to(work).parts if part.startswith("rule_"))
        jobs.setdefault(rule.removeprefix("rule_"), []).append(log.stem)
    return jobs


def test_demo_subset_runs_through_slurm_and_a_scancelled_training_job_resumes(cluster, tmp_path):
    import yaml

    work = tmp_path / "demo"
    work.mkdir()
    (work / "config.yaml").write_text(yaml.safe_dump(DEMO_SUBSET))
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", "SLURM_CONF")}
    env.update(OMP_NUM_THREADS="1", PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"),
           "--workflow-profile", str(REPO / "profiles" / "slurm"),
           "--slurm-status-command", "squeue", "--slurm-keep-successful-logs",
           "--slurm-init-seconds-before-status-checks", "1", "--seconds-between-status-checks", "2",
           "--latency-wait", "5", "results/submissions/qlora_top3/submission.csv"]
    with open(work / "snakemake.out", "w") as log:
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    checkpoint = work / "results" / "work" / "qlora" / "fold0" / "checkpoint"
    cancelled = None
    try:
        deadline = time.time() + 400
        while cancelled is None and time.time() < deadline and proc.poll() is None:
            if checkpoint.exists():
                queue = subprocess.run(["squeue", "-h", "-o", "%i|%k|%T"], capture_output=True, text=True).stdout
                for line in queue.splitlines():
                    job_id, comment, state = line.strip().split("|")
                    if comment.startswith("rule_train_adapter") and "fold0" in comment and state == "RUNNING":
                        subprocess.run(["scancel", job_id], check=True)
                        cancelled = job_id
            time.sleep(0.2)
        assert cancelled is not None, "fold 0's training job was never seen running after its first checkpoint"
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    output = (work / "snakemake.out").read_text()
    assert proc.returncode == 0, output[-4000:]
    assert job_info(cancelled)["JobState"] == "CANCELLED"

    submission = work / "results" / "submissions" / "qlora_top3" / "submission.csv"
    assert submission.exists() and (submission.parent / "manifest.json").exists()
    retry_log = (work / "results" / "logs" / "train" / "qlora" / "fold0.log").read_text()
    assert "resuming from checkpoint" in retry_log
    # a cancelled job did not run out of memory: its retry keeps the micro-batch (4 rows, no accumulation)
    assert re.search(r'"attempt": 2, .*"grad_accum": 1, "micro_batch": 4', retry_log), retry_log[-2000:]
    adapter = work / "results" / "models" / "qlora" / "fold0"
    assert sorted(p.name for p in adapter.iterdir()) == ["adapter"], "no half-written or temporary outputs"

    # every job of the workflow went through Slurm: GPU rules on the gpu partition with a GPU, the rest on
    # the cpu partition without one
    jobs = slurm_jobs_by_rule(work)
    gpu_rules = {"train_adapter", "merge_adapter", "predict_fold"}
    assert {"train_adapter", "predict_fold", "folds", "oof", "submission"} <= set(jobs), sorted(jobs)
    assert len(jobs["train_adapter"]) == 3  # two folds, plus fold 0's retry after the scancel
    for rule, job_ids in jobs.items():
        for job_id in job_ids:
            info = job_info(job_id)
            if rule in gpu_rules:
                assert (info["Partition"], info.get("TresPerJob")) == ("gpu", "gres:gpu:1"), (rule, info)
            else:
                assert info["Partition"] == "cpu" and "gpu" not in info.get("TresPerJob", ""), (rule, info)
