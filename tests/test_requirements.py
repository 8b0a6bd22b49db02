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


def _pin(lines: list[str], name: str) -> str:
    return next(line.split("==", 1)[1] for line in lines if line.startswith(f"{name}=="))


def test_vllm_requirements_pin_the_torch_of_requirements_txt_from_pypi_and_everything_else_from_it():
    """requirements-vllm.txt: vLLM's wheel links against PyPI's torch of the pinned version, so that torch (no
    CUDA label, no PyTorch index) and every other pin from requirements.txt."""
    vllm_lines = _requirement_lines(REPO / "requirements-vllm.txt")
    assert "-r requirements.txt" in vllm_lines
    assert _pin(vllm_lines, "torch") == _pin(_requirement_lines(REPO / "requirements.txt"), "torch")
    assert re.fullmatch(r"\d+\.\d+\.\d+", _pin(vllm_lines, "vllm"))
    assert not any(line.startswith("--extra-index-url") or line.startswith("--index-url") for line in vllm_lines)


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_setup_vllm_installs_the_vllm_requirements_on_python_3_13_and_needs_cuda():
    run = subprocess.run(["make", "-n", "-B", "setup", "CUDA=1", "VLLM=1", "PYTHON=python3.13"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    assert "python3.13 -m venv" in run and "pip install --quiet -r requirements-vllm.txt" in run
    assert "requirements-cuda.txt" not in run
    without_cuda = subprocess.run(["make", "-n", "-B", "setup", "VLLM=1"], cwd=REPO, capture_output=True, text=True)
    assert without_cuda.returncode != 0 and "VLLM=1 needs CUDA=1" in without_cuda.stderr


def test_vllm_imports_where_it_is_installed():
    """Where `make setup CUDA=1 VLLM=1` installed it: the pinned vLLM imports, was built for this torch, and
    generation picks it on a GPU (transformers without one)."""
    import importlib.metadata
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vllm is not installed here (make setup CUDA=1 VLLM=1 installs it on a GPU host)")
    import torch
    import vllm
    from vllm import LLM, SamplingParams  # noqa: F401  (the two names generate.py uses)

    from workflow_scripts.generated.generate import generation_backend

    assert vllm.__version__ == _pin(_requirement_lines(REPO / "requirements-vllm.txt"), "vllm")
    assert f"torch=={torch.__version__.split('+')[0]}" in importlib.metadata.requires("vllm")
    assert generation_backend()[0] == ("vllm" if torch.cuda.is_available() else "transformers")
