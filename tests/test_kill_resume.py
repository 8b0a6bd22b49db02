"""A training step SIGKILLed mid-run (Snakemake and all its children, like a power loss) leaves no
output, resumes from its checkpoint on `--rerun-incomplete`, and ends with the same adapter as a run
that was never interrupted."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from movies_workflow import movies_config

REPO = Path(__file__).resolve().parent.parent
TARGET = "results/models/qlora/fold0/adapter"
WORK = "results/work/qlora/fold0"  # the training step's checkpoints (not a declared output)
LOG = "results/logs/train/qlora/fold0.log"

# 45 training rows, batch 8: 6 steps an epoch, 240 steps, a checkpoint every 10 (about 5 s of training)
CONFIG = movies_config(
    model_defaults={"max_length": 32, "batch_size": 8, "resources": {"threads": 1}},
    models={"qlora": {"source": "tiny:llama", "kind": "decoder_lora", "quantization": "4bit", "r": 4, "alpha": 8,
                      "lr": 2e-3, "epochs": 40, "checkpoint_every": 10, "log_every": 1}},
)


def snakemake_command(workdir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
            "--cores", "2", *args, TARGET]


def run_snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(snakemake_command(workdir, *args), capture_output=True, text=True, cwd=workdir, timeout=600)


def new_workdir(root: Path) -> Path:
    root.mkdir()
    (root / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    return root


def group_members(pgid: int) -> dict[int, str]:
    """pid -> command line of every live process in the process group."""
    members = {}
    for entry in Path("/proc").iterdir():
        try:
            # field 5 of /proc/PID/stat is the process group; the command name before it may hold spaces
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if entry.name.isdigit() and int(fields[2]) == pgid and fields[0] != "Z":
                members[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):
            continue
    return members


def logged_steps(log: Path) -> list[int]:
    text = log.read_text() if log.exists() else ""
    return [int(step) for step in re.findall(r"^stage \d+/\d+ epoch \d+/\d+ step (\d+)/", text, re.MULTILINE)]


def checkpoint_step(state_path: Path) -> int | None:
    try:
        return json.loads(state_path.read_text())["step"]
    except FileNotFoundError:  # not written yet (or being replaced)
        return None


def adapter_files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if not p.name.startswith(".")}


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process groups from /proc")
def test_sigkilled_training_resumes_from_its_checkpoint_and_matches_an_uninterrupted_run(tmp_path):
    reference = new_workdir(tmp_path / "uninterrupted")
    result = run_snakemake(reference)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "resuming from checkpoint" not in (reference / LOG).read_text()

    workdir = new_workdir(tmp_path / "killed")
    state_path = workdir / WORK / "checkpoint" / "state.json"
    process = subprocess.Popen(snakemake_command(workdir), cwd=workdir, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, trainer = time.time() + 300, None
    try:
        # wait for the first checkpoint and a logged step after it: the kill lands mid-training
        while time.time() < deadline and process.poll() is None:
            steps, checkpoint = logged_steps(workdir / LOG), checkpoint_step(state_path)
            if checkpoint is not None and steps and steps[-1] > checkpoint:
                break
            time.sleep(0.02)
        assert process.poll() is None, "snakemake finished before it could be killed"
        members = group_members(process.pid)
        trainer = next(pid for pid, command in members.items() if "workflow_scripts.train" in command)
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    deadline = time.time() + 30
    while group_members(process.pid) and time.time() < deadline:
        time.sleep(0.05)
    assert not group_members(process.pid)
    steps_at_kill = logged_steps(workdir / LOG)[-1]
    resume_step = checkpoint_step(state_path)
    total_steps = 40 * 6
    assert resume_step is not None and 0 < resume_step < steps_at_kill < total_steps
    print(f"killed at step {steps_at_kill}/{total_steps} (trainer pid {trainer}); last checkpoint at step {resume_step}")

    # nothing half-written where Snakemake looks: no output, no temporary sibling of it
    output_parent = (workdir / TARGET).parent
    assert not (workdir / TARGET).exists()
    assert not output_parent.exists() or not any(output_parent.iterdir())
    # what a kill during the final save would leave (the killed trainer's temporary output): the
    # rerun's atomic write removes it
    host = socket.gethostname()
    leftover = output_parent / f".adapter.{host}.{trainer}.killed" / "adapter"
    leftover.mkdir(parents=True)
    (leftover / "adapter_model.safetensors").write_bytes(b"half")

    # Snakemake's lock outlives a SIGKILL: the user's recovery is --unlock, then --rerun-incomplete
    assert run_snakemake(workdir, "--unlock").returncode == 0
    result = run_snakemake(workdir, "--rerun-incomplete")
    assert result.returncode == 0, result.stderr[-4000:]
    log = (workdir / LOG).read_text()
    assert f"resuming from checkpoint at stage 0 epoch {resume_step // 6} batch {resume_step % 6} " \
           f"(step {resume_step})" in log
    assert logged_steps(workdir / LOG)[0] == resume_step + 1
    assert sorted(p.name for p in output_parent.iterdir()) == ["adapter"]
    assert not (workdir / WORK).exists()

    resumed, uninterrupted = adapter_files(workdir / TARGET), adapter_files(reference / TARGET)
    assert {"adapter_model.safetensors", "adapter_config.json", "training.json"} <= resumed.keys()
    assert resumed.keys() == uninterrupted.keys()
    for name in resumed:
        assert resumed[name] == uninterrupted[name], f"{name} differs from the uninterrupted run's"
