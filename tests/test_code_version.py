"""Editing a step's code reruns that step and what depends on it, and nothing else; comments do not count."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from movies_workflow import movies_config

from workflow_scripts.execution.code_version import code_digest, module_closure
from workflow_scripts.errors import OoflineError

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture()
def package(tmp_path):
    root = tmp_path / "workflow_scripts"
    root.mkdir()
    (root / "__init__.py").write_text("")
    (root / "io.py").write_text("def read():\n    return 1\n")
    (root / "labels.py").write_text("from workflow_scripts.io import read\n")
    (root / "folds.py").write_text("import numpy\nfrom workflow_scripts import labels\n\n\ndef main():\n"
                                   "    from .oom import retry  # imported where it is used\n")
    (root / "oom.py").write_text("retry = 2\n")
    (root / "plots.py").write_text("import workflow_scripts.io\n")
    sub = root / "retrieval"
    sub.mkdir()
    (sub / "__init__.py").write_text("")
    (sub / "data.py").write_text("from ..labels import x\n")
    (sub / "mining.py").write_text("from . import data\nfrom workflow_scripts.retrieval.models import load\n")
    (sub / "models.py").write_text("import workflow_scripts.io\n")
    (root / "eval.py").write_text("from workflow_scripts.retrieval import mining\n")
    return root


def test_closure_follows_absolute_relative_and_function_level_imports(package):
    assert module_closure("folds", package) == ["folds", "io", "labels", "oom"]
    assert module_closure("plots", package) == ["io", "plots"]


def test_closure_follows_imports_into_and_out_of_subpackages(package):
    assert module_closure("retrieval.mining", package) == [
        "io", "labels", "retrieval", "retrieval.data", "retrieval.mining", "retrieval.models"]
    assert module_closure("eval", package) == [
        "eval", "io", "labels", "retrieval", "retrieval.data", "retrieval.mining", "retrieval.models"]


def test_editing_a_module_in_a_subpackage_changes_the_digest_of_its_importers(package):
    mining, folds = code_digest("retrieval.mining", package), code_digest("folds", package)
    (package / "retrieval" / "models.py").write_text("import workflow_scripts.io\nLOADED = 1\n")
    assert code_digest("retrieval.mining", package) != mining
    assert code_digest("eval", package) != code_digest("folds", package)
    assert code_digest("folds", package) == folds  # folds imports nothing from retrieval


def test_digest_changes_with_the_code_of_any_imported_module_but_not_with_comments(package):
    folds, plots = code_digest("folds", package), code_digest("plots", package)
    (package / "labels.py").write_text("# labels\nfrom workflow_scripts.io import read  # reading\n\n")
    assert code_digest("folds", package) == folds  # comments and blank lines only
    (package / "oom.py").write_text("retry = 3\n")
    assert code_digest("folds", package) != folds
    assert code_digest("plots", package) == plots  # plots does not import oom


def test_unknown_module_is_an_error(package):
    with pytest.raises(OoflineError, match="no module 'nope'"):
        code_digest("nope", package)


def planned_rules(workdir: Path, target: str = "results/folds.parquet") -> list[str]:
    dry_run = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", target],
                             cwd=workdir, capture_output=True, text=True, timeout=300)
    assert dry_run.returncode == 0, dry_run.stderr[-3000:]
    return sorted(line.split()[1].rstrip(":") for line in dry_run.stdout.splitlines()
                  if line.startswith(("rule ", "localrule ")))


def workflow_copy(tmp_path: Path, config: dict) -> Path:
    """A copy of the workflow (so its code can be edited) with its own config."""
    workflow = tmp_path / "workflow"
    tracked = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for name in tracked:
        if name.startswith(("Snakefile", "rules/", "schemas/", "workflow_scripts/", "envs/", "report/")):
            (workflow / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, workflow / name)
    (workflow / "config.yaml").write_text(yaml.safe_dump(config))
    return workflow


def build(workflow: Path, target: str) -> None:
    built = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", target],
                           cwd=workflow, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    assert planned_rules(workflow, target) == []


@pytest.mark.slow
def test_editing_a_step_reruns_it_and_its_dependents_only(tmp_path):
    workflow = workflow_copy(tmp_path, movies_config())
    build(workflow, "results/folds.parquet")

    folds = workflow / "workflow_scripts" / "folds.py"
    folds.write_text(folds.read_text() + "\n# a comment changes nothing\n")
    assert planned_rules(workflow) == []
    folds.write_text(folds.read_text() + "\nEDITED = True\n")
    assert planned_rules(workflow) == ["folds"]

    # labels is imported by the data step and by folds, not by the demo preparation
    labels = workflow / "workflow_scripts" / "labels.py"
    labels.write_text(labels.read_text() + "\nEDITED = True\n")
    assert planned_rules(workflow) == ["folds", "prepare_data"]


@pytest.mark.slow
def test_editing_a_module_in_a_subpackage_reruns_its_step_and_its_dependents_only(tmp_path):
    pipeline = {"demo": {"n_passages": 12, "n_queries": 24, "n_test_queries": 4, "seed": 0}, "n_folds": 3,
                "valid_fold": 0, "models": {"minilm": "packaged:minilm"},
                "iterations": [{"mine": {"embedder": "minilm"}, "embedder": {"base": "minilm", "model_class": "encoder-only-base"},
                                "reranker": {"base": "minilm", "model_class": "encoder-only-base"}}]}
    workflow = workflow_copy(tmp_path, {"retrieval": {"tiny": pipeline}})
    target = "results/retrieval/tiny/folds.parquet"
    build(workflow, target)

    # the retrieval pipeline's data step makes the queries the folds split
    data = workflow / "workflow_scripts" / "retrieval" / "data.py"
    data.write_text(data.read_text() + "\nEDITED = True\n")
    assert planned_rules(workflow, target) == ["retrieval_data", "retrieval_folds"]
    assert planned_rules(workflow, "results/retrieval/tiny/data/queries.parquet") == ["retrieval_data"]

    # a module of the same subpackage that neither step imports reruns nothing here
    data.write_text(data.read_text().replace("\nEDITED = True\n", ""))
    assert planned_rules(workflow, target) == []
    evaluation = workflow / "workflow_scripts" / "retrieval" / "eval.py"
    evaluation.write_text(evaluation.read_text() + "\nEDITED = True\n")
    assert planned_rules(workflow, target) == []
