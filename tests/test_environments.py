"""Every rule runs in the environment its imports need: a rule's `conda:` file and its `container:` image hold the
same packages (envs/*.yaml and containers/Dockerfile.* agree), and each step module imports inside an environment
that holds exactly its image's packages (tests/step_images.py builds one offline per image). The Kaggle package
tests run their whole graph in those environments too (test_kaggle_package.py), so a lazy import a module's top
level does not show fails there."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from step_images import GROUPS, env_packages, image_environment, image_packages

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("group", GROUPS)
def test_each_conda_env_lists_its_images_packages_and_pins(group):
    assert env_packages(group) == image_packages(group)


def rule_environments(tmp_path: Path) -> dict[str, tuple[str | None, str | None, list[str]]]:
    """{rule: (group of its conda env, group of its container, the step modules its command runs)} of every rule
    of the demo config's workflow, plus the Kaggle record rule."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["container"] = {group: f"docker://example/oofline-{group}:1" for group in GROUPS}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    groups_of_images = {image: group for group, image in config["container"].items()}
    rules = {}
    with SnakemakeApi(OutputSettings(quiet=None)) as api:
        workflow = api.workflow(resource_settings=ResourceSettings(cores=1),
                                config_settings=ConfigSettings(configfiles=[tmp_path / "config.yaml"]),
                                snakefile=REPO / "Snakefile", workdir=tmp_path)
        for rule in workflow._workflow.rules:
            modules = [m for m in re.findall(r"(?:\{PY\}|workflow_scripts)\.([\w.]+)", rule.shellcmd or "")
                       if m != "execution.gpu_devices"]
            conda = Path(str(rule.conda_env)).stem if rule.conda_env else None
            rules[rule.name] = (conda, groups_of_images.get(rule.container_img), modules)
    return rules


def test_every_step_module_imports_in_the_environment_its_rule_declares(tmp_path):
    """`python -m workflow_scripts.<step>` under --sdm conda or apptainer: the module and everything it imports at
    its top level load in an environment holding only its image's packages."""
    rules = rule_environments(tmp_path)
    assert len(rules) > 40 and {"kaggle_package", "tfidf_linear_fold", "predict_fold"} <= set(rules)
    mismatched = {name: (conda, image) for name, (conda, image, modules) in rules.items()
                  if modules and conda is not None and conda != image}
    assert mismatched == {}  # a rule's conda env and its container are the same step group
    assert rules["kaggle_package"][:2] == ("train", "train") and rules["tfidf_linear_fold"][:2] == ("cpu", "cpu")
    modules_by_group: dict[str, set[str]] = {}
    for name, (_, image, modules) in rules.items():
        if modules:
            assert image in GROUPS, name
            modules_by_group.setdefault(image, set()).update(modules)
    probe = ("import importlib, json, sys\nfailed = {}\nfor name in sys.argv[1:]:\n    try:\n"
             "        importlib.import_module('workflow_scripts.' + name)\n    except Exception as error:\n"
             "        failed[name] = f'{type(error).__name__}: {error}'\nprint(json.dumps(failed))\n")
    for group, modules in sorted(modules_by_group.items()):
        python = image_environment(group, tmp_path / "images") / "python"
        result = subprocess.run([str(python), "-c", probe, *sorted(modules)], capture_output=True, text=True,
                                cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=600)
        assert result.returncode == 0, result.stderr[-2000:]
        assert json.loads(result.stdout.splitlines()[-1]) == {}, group


def test_an_image_environment_holds_its_packages_and_nothing_else(tmp_path):
    """The check is real: the cpu image's environment imports polars and safetensors, not torch."""
    python = image_environment("cpu", tmp_path) / "python"
    here = subprocess.run([str(python), "-c", "import polars, sklearn, iterstrat, safetensors.numpy, yaml"],
                          capture_output=True, text=True, timeout=300)
    assert here.returncode == 0, here.stderr[-1000:]
    missing = subprocess.run([str(python), "-c", "import torch"], capture_output=True, text=True, timeout=300)
    assert missing.returncode == 1 and "No module named 'torch'" in missing.stderr
