"""Install routes: the CPU pins and the GPU route (`make setup CUDA=1` -> requirements-cuda.txt) agree."""
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _requirement_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def test_cuda_requirements_pin_the_cuda_build_of_the_same_torch_and_everything_else_from_requirements_txt():
    cpu_torch = next(line for line in _requirement_lines(REPO / "requirements.txt") if line.startswith("torch=="))
    cuda_lines = _requirement_lines(REPO / "requirements-cuda.txt")
    assert "-r requirements.txt" in cuda_lines  # one source of truth for every other pin
    cuda_torch = next(line for line in cuda_lines if line.startswith("torch=="))
    # pip merges torch==X and torch==X+cuNNN into the CUDA build: same version, a CUDA local label
    assert re.fullmatch(re.escape(cpu_torch) + r"\+cu\d+", cuda_torch), (cpu_torch, cuda_torch)
    label = cuda_torch.rsplit("+", 1)[1]
    assert f"--extra-index-url https://download.pytorch.org/whl/{label}" in cuda_lines
    # flash-attn is optional (FLASH=1): never a hard requirement of the GPU route
    assert not any(line.startswith("flash") for line in cuda_lines)
    assert "requirements-cuda.txt" in (REPO / "requirements.txt").read_text().split("\n", 3)[1]


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_setup_cuda_installs_the_cuda_requirements():
    def dry_run(*variables):
        # -n prints the recipe without running it; -B even where a .venv is already set up
        return subprocess.run(["make", "-n", "-B", "setup", *variables], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout

    cuda = dry_run("CUDA=1")
    assert "pip install --quiet -r requirements-cuda.txt" in cuda and "flash-attn" not in cuda
    assert "--no-build-isolation flash-attn==" in dry_run("CUDA=1", "FLASH=1")
    cpu = dry_run()
    assert "-r requirements.txt" in cpu and "requirements-cuda.txt" not in cpu
