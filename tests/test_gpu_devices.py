"""The GPU allocator: concurrent jobs get distinct devices, a killed job frees its devices, Slurm wins."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from workflow_scripts.execution import gpu_devices
from workflow_scripts.errors import OoflineError

REPO = Path(__file__).resolve().parents[1]

# The wrapped "training job": records the devices it was given, then waits until told to stop.
JOB = (
    "import os, sys, time, pathlib\n"
    "out = pathlib.Path(sys.argv[1])\n"
    "out.write_text(os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>'))\n"
    "stop = pathlib.Path(sys.argv[2])\n"
    "deadline = time.time() + 60\n"
    "while not stop.exists() and time.time() < deadline:\n"
    "    time.sleep(0.05)\n"
)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", gpu_devices.ALLOCATED_ENV, gpu_devices.DEVICES_ENV)}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


def start_job(tmp_path: Path, name: str, gpus: int, env: dict[str, str], timeout: float | None = None,
              stop: Path | None = None) -> tuple[subprocess.Popen, Path]:
    out = tmp_path / f"{name}.devices"
    stop = stop or tmp_path / "stop"
    cmd = [sys.executable, "-m", "workflow_scripts.execution.gpu_devices", "--gpus", str(gpus),
           "--lock-dir", str(tmp_path / "locks")]
    if timeout is not None:
        cmd += ["--timeout", str(timeout)]
    cmd += ["--", sys.executable, "-c", JOB, str(out), str(stop)]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, out


def wait_for(path: Path, proc: subprocess.Popen | None = None, seconds: float = 30) -> str:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if path.exists() and path.read_text():
            return path.read_text()
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"job exited early ({proc.returncode}): {proc.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError(f"{path} never appeared")


def test_four_concurrent_jobs_get_four_devices_killed_job_frees_its_device(tmp_path):
    env = clean_env(OOFLINE_GPU_DEVICES="0,1,2,3")
    jobs = [start_job(tmp_path, f"job{i}", 1, env) for i in range(4)]
    try:
        given = [wait_for(out, proc) for proc, out in jobs]
        assert sorted(given) == ["0", "1", "2", "3"]

        # A 5th job finds no free GPU and fails with a message naming the busy devices and the lock dir.
        fifth, _ = start_job(tmp_path, "job4", 1, env, timeout=1)
        _, stderr = fifth.communicate(timeout=30)
        assert fifth.returncode == 2
        assert "no 1 free GPU(s) after waiting 1 s" in stderr
        assert str(tmp_path / "locks") in stderr and "pid " in stderr

        # SIGKILL the job holding GPU 2: the kernel drops its lock, and a waiting job gets GPU 2.
        victim = next(proc for (proc, _), dev in zip(jobs, given) if dev == "2")
        waiting, waiting_out = start_job(tmp_path, "job5", 1, env, timeout=30)
        time.sleep(0.5)
        assert not waiting_out.exists()  # it waits while all four are held
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
        assert wait_for(waiting_out, waiting) == "2"
    finally:
        (tmp_path / "stop").touch()
        for proc, _ in jobs:
            proc.wait(timeout=30)
    waiting.wait(timeout=30)
    assert waiting.returncode == 0


def test_multi_gpu_jobs_are_all_or_none(tmp_path):
    locks = tmp_path / "locks"
    devices = ["0", "1", "2", "3"]
    held = gpu_devices.try_acquire(3, devices, locks)
    assert held is not None and held.devices == ["0", "1", "2"]
    # 2 GPUs wanted, 1 free: gets nothing and keeps nothing, so a 1-GPU job still gets GPU 3
    assert gpu_devices.try_acquire(2, devices, locks) is None
    single = gpu_devices.try_acquire(1, devices, locks)
    assert single is not None and single.devices == ["3"]
    single.release()
    held.release()
    pair = gpu_devices.try_acquire(2, devices, locks)
    assert pair is not None and pair.cuda_visible_devices == "0,1"
    pair.release()


def test_slurm_assignment_is_left_alone(tmp_path):
    env = clean_env(OOFLINE_GPU_DEVICES="0,1", SLURM_JOB_ID="42", CUDA_VISIBLE_DEVICES="7")
    proc, out = start_job(tmp_path, "slurm", 1, env)
    (tmp_path / "stop").touch()
    proc.wait(timeout=30)
    assert proc.returncode == 0, proc.stderr.read()
    assert out.read_text() == "7"
    assert not (tmp_path / "locks").exists()


def test_pool_is_narrowed_by_cuda_visible_devices_and_nested_wrapper_is_a_no_op(tmp_path):
    env, lease = gpu_devices.plan_environment(1, {"CUDA_VISIBLE_DEVICES": "2,3"}, tmp_path, timeout_s=0)
    assert env["CUDA_VISIBLE_DEVICES"] == "2" and lease is not None
    inner_env, inner_lease = gpu_devices.plan_environment(1, env, tmp_path, timeout_s=0)
    assert inner_lease is None and inner_env["CUDA_VISIBLE_DEVICES"] == "2"
    lease.release()


def test_no_gpu_runs_on_cpu_or_fails_when_asked(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi
    env, lease = gpu_devices.plan_environment(1, {}, tmp_path, timeout_s=0)
    assert env["CUDA_VISIBLE_DEVICES"] == "" and lease is None
    with pytest.raises(OoflineError, match="nvidia-smi is not on PATH and OOFLINE_GPU_DEVICES is unset"):
        gpu_devices.plan_environment(1, {}, tmp_path, timeout_s=0, when_no_gpu="error")


def test_fake_nvidia_smi_is_parsed(tmp_path, monkeypatch):
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\nprintf '0\\n1\\n'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert gpu_devices.discover_devices({}) == ["0", "1"]


def test_bad_inputs_name_the_offending_setting(tmp_path):
    with pytest.raises(OoflineError, match="OOFLINE_GPU_DEVICES: bad GPU device 'x'"):
        gpu_devices.discover_devices({"OOFLINE_GPU_DEVICES": "0,x"})
    with pytest.raises(OoflineError, match="asks for 5 GPUs but only 4 exist"):
        gpu_devices.acquire(5, ["0", "1", "2", "3"], tmp_path, timeout_s=0)
    with pytest.raises(OoflineError, match="after `--`"):
        gpu_devices.main(["--gpus", "1", "python"])
    with pytest.raises(OoflineError, match="--torchrun needs a command of the form"):
        gpu_devices.with_launcher(["bash", "train.sh"], 2)


def test_launch_prefix_uses_torchrun_only_for_several_gpus():
    assert gpu_devices.launch_prefix(1, python="py") == ["py"]
    assert gpu_devices.with_launcher(["python", "-m", "workflow_scripts.train", "--fold", "0"], 2) == [
        "python", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "workflow_scripts.train", "--fold", "0",
    ]


@pytest.mark.slow
def test_two_gpu_job_starts_one_process_per_gpu_under_torchrun(tmp_path):
    module = tmp_path / "rank_probe.py"
    module.write_text(
        "import os, pathlib\n"
        "rank = os.environ['LOCAL_RANK']\n"
        "pathlib.Path(os.environ['PROBE_DIR'], 'rank' + rank).write_text(\n"
        "    os.environ['CUDA_VISIBLE_DEVICES'] + ' ' + os.environ['WORLD_SIZE'])\n"
    )
    env = clean_env(OOFLINE_GPU_DEVICES="0,1,2", PROBE_DIR=str(tmp_path), OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{tmp_path}"
    result = subprocess.run(
        [sys.executable, "-m", "workflow_scripts.execution.gpu_devices", "--gpus", "2", "--torchrun",
         "--lock-dir", str(tmp_path / "locks"), "--", sys.executable, "-m", "rank_probe"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "rank0").read_text() == "0,1 2"
    assert (tmp_path / "rank1").read_text() == "0,1 2"


@pytest.mark.slow
def test_snakemake_runs_four_gpu_jobs_at_once_each_on_its_own_gpu(tmp_path):
    """GPUs that Snakemake only counts (snakemake#281) are assigned, end to end: --resources gpu=4, four 1-GPU
    training jobs in parallel."""
    import json
    import shutil

    work = tmp_path / "wf"
    shutil.copytree(REPO / "tests" / "fixtures" / "slurm_workflow", work)
    shutil.copytree(REPO / "profiles", work / "profiles")
    env = clean_env(OOFLINE_GPU_DEVICES="0,1,2,3", OOFLINE_GPU_LOCK_DIR=str(tmp_path / "locks"), OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--workflow-profile", "default", "--cores", "4",
         "--resources", "gpu=4", "--config", "models=[a,b,c,d]", "train_sleep=6"],
        cwd=work, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    devices = [json.loads((work / "results" / "train" / f"{m}.json").read_text())["cuda_visible_devices"]
               for m in "abcd"]
    assert sorted(devices) == ["0", "1", "2", "3"]
