"""Container definitions: every pin agrees with requirements.txt; a real cpu image (when Docker is
available) runs a step and writes the same bytes as the host."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

REPO = Path(__file__).resolve().parents[1]
CONTAINERS = REPO / "containers"
GROUP_PACKAGES = {
    "cpu": {"polars", "scikit-learn", "iterative-stratification"},
    "train": {"torch", "transformers", "peft", "bitsandbytes", "flagembedding"},
}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_pins(text: str) -> dict[str, str | None]:
    """requirements.txt as {normalised name: pinned version or None}."""
    pins: dict[str, str | None] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, _, version = line.partition("==")
        pins[normalise(name)] = version.strip() or None
    return pins


def dockerfile_packages(text: str) -> dict[str, str | None]:
    """The packages of every `pip install` in a Dockerfile, as {normalised name: version or None}."""
    joined = re.sub(r"\\\n", " ", text)
    packages: dict[str, str | None] = {}
    for line in joined.splitlines():
        match = re.search(r"\bpip install\b(.*?)(?:&&|$)", line)
        if not match:
            continue
        for token in match.group(1).split():
            token = token.strip("\"'")
            if not token or token.startswith("-"):
                continue
            name, _, version = token.partition("==")
            packages[normalise(name)] = version or None
    return packages


def pin_mismatches(dockerfile: str, requirements: str) -> list[str]:
    """Human-readable disagreements between a Dockerfile's pip installs and requirements.txt."""
    pins = requirement_pins(requirements)
    problems = []
    for name, version in dockerfile_packages(dockerfile).items():
        if name not in pins:
            problems.append(f"{name} is installed in the image but not listed in requirements.txt")
        elif version != pins[name]:
            problems.append(f"{name}: image pins {version or 'nothing'}, requirements.txt pins {pins[name] or 'nothing'}")
    return problems


@pytest.mark.parametrize("group", ["cpu", "train"])
def test_dockerfile_pins_agree_with_requirements(group):
    dockerfile = (CONTAINERS / f"Dockerfile.{group}").read_text()
    assert pin_mismatches(dockerfile, (REPO / "requirements.txt").read_text()) == []
    installed = dockerfile_packages(dockerfile)
    assert GROUP_PACKAGES[group] <= set(installed)
    # the train image never installs a torch other than the pinned one in a later layer
    assert all(v == requirement_pins((REPO / "requirements.txt").read_text())["torch"]
               for n, v in installed.items() if n == "torch")


def test_pin_checker_names_the_disagreeing_package():
    requirements = "torch==2.13.0\npolars==2.1.0\nnumpy\n"
    dockerfile = 'RUN pip install "torch==2.12.0" \\\n      polars==2.1.0 numpy "requests==1.0"\n'
    assert pin_mismatches(dockerfile, requirements) == [
        "torch: image pins 2.12.0, requirements.txt pins 2.13.0",
        "requests is installed in the image but not listed in requirements.txt",
    ]


@pytest.mark.parametrize("group", ["cpu", "train"])
def test_dockerfile_takes_a_base_image_build_arg_and_apptainer_def_uses_the_built_image(group):
    dockerfile = (CONTAINERS / f"Dockerfile.{group}").read_text()
    assert re.search(r"^ARG BASE_IMAGE=\S+$", dockerfile, re.M)
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", dockerfile, re.M)
    definition = (CONTAINERS / f"{group}.def").read_text()
    assert re.search(r"^Bootstrap: docker-daemon$", definition, re.M)
    assert re.search(rf"^From: oofline-{group}:latest$", definition, re.M)


def test_build_script_rejects_unknown_group_and_options():
    bad_group = subprocess.run(["bash", str(CONTAINERS / "build.sh"), "gpu"], capture_output=True, text=True)
    assert bad_group.returncode == 1 and "cpu|train" in bad_group.stderr
    bad_option = subprocess.run(["bash", str(CONTAINERS / "build.sh"), "cpu", "--bogus"], capture_output=True, text=True)
    assert bad_option.returncode == 1 and "unknown option --bogus" in bad_option.stderr


def image_present(env: dict[str, str]) -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "image", "inspect", "oofline-cpu:latest"], capture_output=True, env=env)
    return probe.returncode == 0


@pytest.fixture(scope="module")
def cpu_image():
    """Environment whose DOCKER_HOST has oofline-cpu:latest: an existing one, or (with
    OOFLINE_CONTAINER_BUILD=1, as root) a private dockerd and a real build on a debootstrap rootfs."""
    env = dict(os.environ)
    if image_present(env):
        yield env
        return
    if os.environ.get("OOFLINE_CONTAINER_BUILD") != "1" or os.geteuid() != 0:
        pytest.skip("no oofline-cpu:latest image: set OOFLINE_CONTAINER_BUILD=1 (root) to build it here "
                    "(OOFLINE_CA_CERT=<file> behind a TLS-intercepting proxy)")
    started = subprocess.run(["bash", str(CONTAINERS / "dockerd.sh"), "start"], capture_output=True, text=True,
                             check=True, timeout=600)
    env["DOCKER_HOST"] = started.stdout.strip().split("DOCKER_HOST=", 1)[1]
    try:
        subprocess.run(["bash", str(CONTAINERS / "build.sh"), "cpu", "--rootfs"], env=env, check=True, timeout=1800)
        yield env
    finally:
        subprocess.run(["bash", str(CONTAINERS / "dockerd.sh"), "stop"], check=False, timeout=120)


@pytest.mark.slow
@pytest.mark.container
def test_cpu_image_writes_the_same_parquet_bytes_as_the_host(cpu_image, tmp_path):
    script = (
        "import sys, polars as pl\n"
        "from workflow_scripts.io import write_parquet\n"
        "frame = pl.DataFrame({'id': list(range(50)), 'fold': [i % 5 for i in range(50)],\n"
        "                      'prob': [i / 49 for i in range(50)]})\n"
        "write_parquet(frame, sys.argv[1])\n"
    )
    (tmp_path / "step.py").write_text(script)
    host_out = tmp_path / "host.parquet"
    subprocess.run([sys.executable, str(tmp_path / "step.py"), str(host_out)], check=True,
                   env={**os.environ, "PYTHONPATH": str(REPO)})
    subprocess.run(
        ["docker", "run", "--rm", "--network", "none", "-v", f"{REPO}:/repo:ro", "-v", f"{tmp_path}:/out",
         "-e", "PYTHONPATH=/repo", "-w", "/repo", "oofline-cpu:latest", "python", "/out/step.py", "/out/container.parquet"],
        check=True, timeout=300, env=cpu_image,
    )
    assert (tmp_path / "container.parquet").read_bytes() == host_out.read_bytes()
    assert pl.read_parquet(host_out)["fold"].n_unique() == 5
