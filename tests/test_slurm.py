"""A real one-node Slurm cluster (.ci/slurm/up.sh): a subset of the demo runs through the real workflow
with every job submitted by sbatch and GPU rules asking for a GPU; a scancelled training job is retried and
resumes from its checkpoint; a training job that runs out of memory is resubmitted with more memory and
trains with half the micro-batch."""
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


def slurm_snakemake(work: Path, *targets: str) -> subprocess.Popen:
    """The real workflow run from `work` with the slurm profile: every job is submitted by sbatch."""
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", "SLURM_CONF")}
    env.update(OMP_NUM_THREADS="1", PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"),
           "--workflow-profile", str(REPO / "profiles" / "slurm"),
           # no accounting on the test cluster: sacct would hang
           "--slurm-status-command", "squeue", "--slurm-keep-successful-logs",
           "--slurm-init-seconds-before-status-checks", "1", "--seconds-between-status-checks", "2",
           "--latency-wait", "5", *targets]
    with open(work / "snakemake.out", "w") as log:
        return subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)


def slurm_jobs_by_rule(work: Path) -> dict[str, list[str]]:
    """{rule: Slurm job ids, in submission order} from the plugin's per-job logs
    (.snakemake/slurm_logs/rule_<name>/...)."""
    jobs: dict[str, list[str]] = {}
    for log in (work / ".snakemake" / "slurm_logs").rglob("*.log"):
        rule = next(part for part in log.relative_to(work).parts if part.startswith("rule_"))
        jobs.setdefault(rule.removeprefix("rule_"), []).append(log.stem)
    return {rule: sorted(job_ids, key=int) for rule, job_ids in jobs.items()}


# One QLoRA model whose GPU steps ask for 1000 MB on the gpu partition; with OOFLINE_INJECT_OOM=1 its first
# training attempt fails with the trainer's out-of-memory exit.
OOM_SUBSET = movies_config(
    n_train=60,
    model_defaults={"max_length": 32, "epochs": 1, "batch_size": 8, "resources": {"threads": 1}},
    models={"qlora": {"source": "tiny:llama", "kind": "decoder_lora", "quantization": "4bit", "r": 4, "alpha": 8,
                      "lr": 2e-3, "resources": {"gpu": 1, "cpus_per_gpu": 1, "slurm_partition": "gpu",
                                                "mem_mb": 1000, "runtime": 15}}},
)


def test_real_training_oom_is_resubmitted_with_more_memory_and_half_the_micro_batch(cluster, tmp_path, monkeypatch):
    import yaml

    work = tmp_path / "oom"
    work.mkdir()
    (work / "config.yaml").write_text(yaml.safe_dump(OOM_SUBSET))
    monkeypatch.setenv("OOFLINE_INJECT_OOM", "1")  # sbatch exports the environment to the job
    proc = slurm_snakemake(work, "results/models/qlora/fold0/adapter")
    proc.wait(timeout=600)
    output = (work / "snakemake.out").read_text()
    assert proc.returncode == 0, output[-4000:]

    # the trainer's OOM record halved the resubmitted job's micro-batch, keeping 8 rows per optimizer step
    summary = json.loads((work / "results" / "models" / "qlora" / "fold0" / "adapter" / "training.json")
                         .read_text())["summary"]
    assert (summary["attempt"], summary["micro_batch"], summary["grad_accum"]) == (2, 4, 2)
    assert not (work / "results" / "work" / "qlora" / "fold0").exists()

    # step_resources: the model's partition and GPU; its mem_mb on attempt 1, 1.5 x on the resubmission
    jobs = slurm_jobs_by_rule(work)
    assert len(jobs["train_adapter"]) == 2, jobs
    first, retry = (job_info(job_id) for job_id in jobs["train_adapter"])
    assert (first["JobState"], first["Partition"], first["TresPerJob"], first["MinMemoryNode"]) == (
        "FAILED", "gpu", "gres:gpu:1", "1000M")
    assert (retry["JobState"], retry["Partition"], retry["TresPerJob"], retry["MinMemoryNode"]) == (
        "COMPLETED", "gpu", "gres:gpu:1", "1500M")
    first_log = next((work / ".snakemake" / "slurm_logs").rglob(f"{jobs['train_adapter'][0]}.log"))
    assert "exit status 75" in first_log.read_text()
    # Slurm assigned the (fake) GPU; the allocator left its CUDA_VISIBLE_DEVICES alone
    assert "gpu_devices: CUDA_VISIBLE_DEVICES=0 " in (work / "results" / "logs" / "train" / "qlora" / "fold0.log").read_text()
    for rule in ("prepare_data", "folds", "prepare_model"):
        [job_id] = jobs[rule]
        info = job_info(job_id)
        assert info["Partition"] == "cpu" and "gpu" not in info.get("TresPerJob", ""), (rule, info)


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


def test_demo_subset_runs_through_slurm_and_a_scancelled_training_job_resumes(cluster, tmp_path):
    import yaml

    work = tmp_path / "demo"
    work.mkdir()
    (work / "config.yaml").write_text(yaml.safe_dump(DEMO_SUBSET))
    proc = slurm_snakemake(work, "results/submissions/qlora_top3/submission.csv")
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
