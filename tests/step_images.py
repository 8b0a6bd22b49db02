"""The environments rules declare, made offline: each step group's package list (the containers' pip installs, which
envs/*.yaml must agree with) resolved to its installed distributions, and a virtual environment that holds only
those (symlinks into this interpreter's site-packages, so the versions are the pinned ones). A command run with that
environment's python can import what the image has and nothing else: a step that needs a package its image lacks
fails there as it would under `--sdm apptainer` or `--sdm conda`.

`apptainer_stand_in` makes a fake `apptainer` for `snakemake --sdm apptainer`: every job runs on this machine, with
the environment of the image its rule names (cpu.sif or train.sif) first on PATH, and is logged with that image.
Shared by test_environments.py and the Kaggle package runs."""
from __future__ import annotations

import re
import subprocess
import sys
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import yaml
from packaging.markers import default_environment
from packaging.requirements import Requirement
from test_containers import APPTAINER_ARGUMENTS, dockerfile_packages, normalise

REPO = Path(__file__).resolve().parent.parent
GROUPS = ("cpu", "train")
# what `python3 -m venv` puts in every image besides the pip installs
VENV_BASE = ("pip",)


def image_packages(group: str) -> dict[str, str | None]:
    """A step group's image: containers/Dockerfile.{group}'s pip installs."""
    return dockerfile_packages((REPO / "containers" / f"Dockerfile.{group}").read_text())


def env_packages(group: str) -> dict[str, str | None]:
    """A step group's conda environment: envs/{group}.yaml's pip list (conda's python and pip aside)."""
    environment = yaml.safe_load((REPO / "envs" / f"{group}.yaml").read_text())
    packages: dict[str, str | None] = {}
    for dependency in environment["dependencies"]:
        if isinstance(dependency, dict):
            for line in dependency.get("pip", []):
                name, _, version = line.partition("==")
                packages[normalise(name)] = version or None
    return packages


def _no_deps_packages(group: str) -> set[str]:
    """Packages an image installs with --no-deps (their requirements are not installed)."""
    text = re.sub(r"\\\n", " ", (REPO / "containers" / f"Dockerfile.{group}").read_text())
    return {normalise(token.strip("\"'").partition("==")[0]) for line in text.splitlines()
            if re.search(r"\bpip install\b.*--no-deps", line)
            for token in re.search(r"\bpip install\b(.*?)(?:&&|$)", line).group(1).split()
            if token.strip("\"'") and not token.startswith("-")}


def distribution_closure(names: set[str], no_deps: set[str] = frozenset()) -> set[str]:
    """The installed distributions these names pull in through their requirements (markers evaluated here, no
    extras), as pip resolves an install list; a name in `no_deps` brings only itself."""
    environment = default_environment()
    seen: set[str] = set()
    stack = [normalise(name) for name in names]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        try:
            requirements = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            raise AssertionError(f"{name} is in an image but not installed here")
        seen.add(name)
        if name in no_deps:
            continue
        for line in requirements:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate(dict(environment, extra="")):
                stack.append(normalise(requirement.name))
    return seen


@lru_cache(maxsize=None)
def group_distributions(group: str) -> frozenset[str]:
    """Every distribution a step group's image holds."""
    return frozenset(distribution_closure(set(image_packages(group)) | set(VENV_BASE), _no_deps_packages(group)))


def distribution_files(name: str) -> set[str]:
    """The top-level entries (packages, modules, .libs folders, its .dist-info) a distribution installed."""
    files = metadata.distribution(name).files or []
    return {Path(str(file)).parts[0] for file in files if not str(file).startswith("..")
            and Path(str(file)).parts[0] not in ("bin", "__pycache__")}


def image_environment(group: str, root: Path) -> Path:
    """root/{group}: a virtual environment holding exactly the image's distributions (symlinked); returns its bin/."""
    target = root / group
    if not (target / "bin" / "python").exists():
        subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(target)], check=True)
        site = next((target / "lib").glob("python3*/site-packages"))
        installed = Path(metadata.distribution("polars").locate_file(""))
        for name in sorted(group_distributions(group)):
            for entry in distribution_files(name):
                source = installed / entry
                if source.exists() and not (site / entry).exists():
                    (site / entry).symlink_to(source)
    return target / "bin"


APPTAINER_STAND_IN = APPTAINER_ARGUMENTS + """export PATH="$IMAGE_ENVIRONMENTS/$image/bin:$PATH"
exec "$@"
"""


def apptainer_stand_in(root: Path, environ: dict[str, str]) -> tuple[dict[str, str], dict[str, str], Path]:
    """(container config, environment for snakemake, log of `image command` lines): `--sdm apptainer` with these runs
    every job on this machine inside its image's environment (image_environment)."""
    root.mkdir(parents=True, exist_ok=True)
    stand_in = root / "bin" / "apptainer"
    stand_in.parent.mkdir(exist_ok=True)
    stand_in.write_text(APPTAINER_STAND_IN)
    stand_in.chmod(0o755)
    containers = {}
    for group in GROUPS:
        image_environment(group, root / "images")
        (root / f"{group}.sif").touch()
        containers[group] = str(root / f"{group}.sif")
    log = root / "stand_in.log"
    env = dict(environ, STAND_IN_LOG=str(log), IMAGE_ENVIRONMENTS=str(root / "images"),
               PATH=str(stand_in.parent) + ":" + environ.get("PATH", ""))
    return containers, env, log


def images_by_step(log: Path) -> dict[str, set[str]]:
    """{step module: images it ran in} from the stand-in's log."""
    steps: dict[str, set[str]] = {}
    for line in log.read_text().splitlines():
        image, command = line.split(" ", 1)
        for step in re.findall(r"python -m workflow_scripts\.([\w.]+)", command):
            if step != "execution.gpu_devices":
                steps.setdefault(step, set()).add(image)
    return steps
