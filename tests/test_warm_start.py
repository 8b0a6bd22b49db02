"""Warm start (workflow_scripts/execution/warm_start.py): a step forked from the warm server writes the bytes a cold
start writes, exits and prints as it does cold, gets its client's signals and dies with its client; anything but a
workflow step, and anything under Slurm, starts cold."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import COLD_PATH  # noqa: E402

from workflow_scripts.execution.warm_start import (  # noqa: E402
    ENV_DIR, interpreter, server_key, shell_lines, shim_environment, stop_servers,
)

REPO = Path(__file__).resolve().parent.parent


def cold_environment() -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name != ENV_DIR}
    return {**env, "PATH": COLD_PATH, "PYTHONPATH": str(REPO)}


def server_log(folder: Path) -> str:
    return "".join(path.read_text() for path in sorted(folder.glob("*.log")))


def jobs_run_warm(folder: Path) -> list[str]:
    return [line for line in server_log(folder).splitlines() if " as pid " in line]


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    """(environment, folder) with a warm server up: the first step through the shim starts it and runs cold."""
    folder = tmp_path_factory.mktemp("warm")
    env = shim_environment(str(folder), env=cold_environment())
    first = subprocess.run(["python", "-m", "workflow_scripts.execution.gpu_devices", "--gpus", "0", "--", "true"],
                           env=env, cwd=folder, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    deadline = time.time() + 180
    while not list(folder.glob("*.sock")) and time.time() < deadline:
        time.sleep(0.5)
    assert "ready in" in server_log(folder), server_log(folder)
    assert not jobs_run_warm(folder)  # the first one ran cold while the server imported
    yield env, folder
    assert stop_servers(str(folder)) == 1
    deadline = time.time() + 30
    while "stopped" not in server_log(folder) and time.time() < deadline:
        time.sleep(0.5)
    assert " stopped" in server_log(folder)  # its socket gone, the server exits


def test_a_step_run_warm_writes_the_bytes_a_cold_start_writes(warm, tmp_path, movies_demo):
    env, folder = warm
    corpus = tmp_path / "corpus.parquet"
    movies_demo[0].select("text").write_parquet(corpus)
    outputs = {}
    for how, python, environment in (("warm", "python", env), ("cold", sys.executable, cold_environment())):
        outputs[how] = tmp_path / how
        result = subprocess.run([python, "-m", "workflow_scripts.prepare_model", "--source", "tiny:qwen3", "--out",
                                 str(outputs[how]), "--seed", "3", "--corpus", str(corpus)],
                                env=environment, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
    assert any("workflow_scripts.prepare_model" in line for line in jobs_run_warm(folder))
    files = sorted(path.relative_to(outputs["cold"]) for path in outputs["cold"].rglob("*") if path.is_file())
    assert files and any(path.suffix == ".safetensors" for path in files)
    assert files == sorted(path.relative_to(outputs["warm"]) for path in outputs["warm"].rglob("*") if path.is_file())
    for path in files:
        assert (outputs["warm"] / path).read_bytes() == (outputs["cold"] / path).read_bytes(), path


@pytest.mark.parametrize("arguments", [
    ["--help"],  # argparse: usage on stdout, exit 0
    ["--source", "no/such/model", "--out", "out", "--seed", "0", "--corpus", "missing.parquet"],  # one error line
])
def test_exit_code_and_output_are_the_cold_ones(warm, tmp_path, arguments):
    env, folder = warm
    before = len(jobs_run_warm(folder))
    command = ["-m", "workflow_scripts.prepare_model", *arguments]
    warm_run = subprocess.run(["python", *command], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    cold_run = subprocess.run([sys.executable, *command], env=cold_environment(), cwd=tmp_path, capture_output=True,
                              text=True, timeout=120)
    assert len(jobs_run_warm(folder)) == before + 1
    assert (warm_run.returncode, warm_run.stdout, warm_run.stderr) == (
        cold_run.returncode, cold_run.stdout, cold_run.stderr)


def step_pid(folder: Path, jobs_before: int) -> int:
    deadline = time.time() + 60
    while len(jobs_run_warm(folder)) == jobs_before and time.time() < deadline:
        time.sleep(0.1)
    return int(jobs_run_warm(folder)[-1].split(" as pid ")[1].split()[0])


def gone(pid: int, within_s: float = 10.0) -> bool:
    deadline = time.time() + within_s
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGKILL])
def test_a_signal_to_the_client_ends_its_step(warm, tmp_path, number):
    """SIGTERM is forwarded (the client then dies by it, as the step did); a SIGKILLed client's step is killed by
    the server when the connection closes: neither leaves a step running."""
    env, folder = warm
    before = len(jobs_run_warm(folder))
    client = subprocess.Popen(["python", "-m", "workflow_scripts.execution.gpu_devices", "--gpus", "0", "--",
                               "sleep", "120"], env=env, cwd=tmp_path)
    pid = step_pid(folder, before)
    assert pid != client.pid
    time.sleep(0.5)  # the step has exec'd sleep
    client.send_signal(number)
    assert client.wait(timeout=30) == -number
    assert gone(pid)


def test_other_commands_and_jobs_under_slurm_start_cold(warm, tmp_path):
    env, folder = warm
    before = len(jobs_run_warm(folder))
    plain = subprocess.run(["python", "-c", "import sys; print(sys.executable)"], env=env, capture_output=True,
                           text=True, timeout=60)
    assert plain.stdout.strip() == sys.executable  # the real interpreter, exec'd
    slurm = subprocess.run(["python", "-m", "workflow_scripts.execution.gpu_devices", "--gpus", "0", "--", "true"],
                           env={**env, "SLURM_JOB_ID": "7"}, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert slurm.returncode == 0, slurm.stderr
    assert len(jobs_run_warm(folder)) == before


def test_a_server_serves_one_environment_and_the_shell_lines_turn_it_on(tmp_path):
    env = {"HOME": "/home/a", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    key = server_key("/usr/bin/python3", env)
    assert server_key("/usr/bin/python3", {**env, "CUDA_VISIBLE_DEVICES": "0", "PWD": "/x"}) == key  # per job
    assert server_key("/usr/bin/python3", {**env, "PYTEST_CURRENT_TEST": "tests/t.py::b (call)"}) == key  # per test
    assert server_key("/usr/bin/python3", {**env, "HF_HUB_OFFLINE": "0"}) != key  # read when a library imports
    assert server_key("/opt/python", env) != key
    lines = shell_lines(str(tmp_path / "w"))
    assert f"export {ENV_DIR}={tmp_path / 'w'}\n" in lines and f"export PATH={tmp_path / 'w' / 'bin'}:" in lines
    assert os.access(tmp_path / "w" / "bin" / "python", os.X_OK) and os.access(tmp_path / "w" / "bin" / "python3", os.X_OK)


def test_a_step_starts_its_python_subprocesses_through_the_client_when_warm(monkeypatch, tmp_path):
    """retrieval.finetune runs FlagEmbedding's entry point as `interpreter() -m ...`: warm where warm start is on."""
    from workflow_scripts.retrieval.finetune import FinetuneSettings, command_line

    settings = FinetuneSettings("embedder", "encoder-only-base", "base")
    monkeypatch.delenv(ENV_DIR, raising=False)
    assert interpreter() == sys.executable == command_line(settings, "d", "o")[0]
    env = shim_environment(str(tmp_path / "w"), env={})
    monkeypatch.setenv(ENV_DIR, env[ENV_DIR])
    assert interpreter() == str(tmp_path / "w" / "bin" / "python") == command_line(settings, "d", "o")[0]
    assert command_line(settings, "d", "o", processes=2)[0] == sys.executable  # torchrun's workers start cold


def test_a_folder_too_long_for_a_socket_path_is_refused_by_name_and_its_jobs_start_cold(warm, tmp_path):
    """A server could not bind its socket there, and every job would start another server importing torch for
    nothing: `env` refuses the folder by name, and a client pointed at one by hand runs its job cold."""
    long_folder = tmp_path / ("w" * (120 - len(str(tmp_path))))
    with pytest.raises(ValueError, match="too long for its servers' socket paths"):
        shim_environment(str(long_folder))
    refused = subprocess.run([sys.executable, str(REPO / "workflow_scripts" / "execution" / "warm_start.py"), "env",
                              str(long_folder)], capture_output=True, text=True, timeout=60)
    assert (refused.returncode, refused.stdout) == (2, "")
    assert str(long_folder) in refused.stderr and "such as /tmp/oofline-warm" in refused.stderr
    env, folder = warm
    before = len(jobs_run_warm(folder))
    long_folder.mkdir()
    job = subprocess.run(["python", "-m", "workflow_scripts.execution.gpu_devices", "--gpus", "0", "--", "true"],
                         env={**env, ENV_DIR: str(long_folder)}, cwd=tmp_path, capture_output=True, text=True,
                         timeout=60)
    assert job.returncode == 0, job.stderr
    # cold: no server asked (the warm one ran nothing) and none started there (no lock, no log)
    assert not list(long_folder.iterdir()) and len(jobs_run_warm(folder)) == before
