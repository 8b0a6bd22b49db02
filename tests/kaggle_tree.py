"""Run a built Kaggle package the way Kaggle does: only its dataset/ and notebook/ copied into a fresh tree laid out
like /kaggle/input/... and /kaggle/working, the script run in a subprocess with a clean PYTHONPATH, its working
directory in that tree, offline. Shared by the package tests and bench/kaggle_package.py."""
from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path


def kaggle_tree(package_dir: Path, root: Path, competition_files: dict[str, Path]) -> dict[str, Path]:
    """root/kaggle/input/<dataset slug> (the dataset), root/kaggle/input/<competition>/<files>,
    root/kaggle/src (the notebook), root/kaggle/working. Returns those paths."""
    metadata = json.loads((package_dir / "notebook" / "kernel-metadata.json").read_text())
    kaggle = root / "kaggle"
    dataset = kaggle / "input" / metadata["dataset_sources"][0].split("/")[-1]
    competition = kaggle / "input" / metadata["competition_sources"][0]
    shutil.copytree(package_dir / "dataset", dataset)
    shutil.copytree(package_dir / "notebook", kaggle / "src")
    competition.mkdir(parents=True)
    for name, path in competition_files.items():
        shutil.copy2(path, competition / name)
    (kaggle / "working").mkdir()
    return {"input": kaggle / "input", "dataset": dataset, "competition": competition, "src": kaggle / "src",
            "working": kaggle / "working", "script": kaggle / "src" / metadata["code_file"],
            "site": kaggle / "site-packages"}


def run_notebook(tree: dict[str, Path], *args: str, timeout: int = 900
                 ) -> tuple[subprocess.CompletedProcess, float, float]:
    """The notebook's script in a subprocess: no PYTHONPATH, cwd /kaggle/working, HF_HUB_OFFLINE=1, wheels
    installed into the tree (the shared venv is never touched). Returns (result, wall seconds, CPU seconds of
    the script and its pip: with one thread, what the run takes on an idle machine)."""
    environment = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
    environment.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    command = [sys.executable, str(tree["script"]), "--input-root", str(tree["input"]),
               "--output-dir", str(tree["working"]), "--install-target", str(tree["site"]), *args]
    started, before = time.time(), resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(command, capture_output=True, text=True, cwd=tree["working"], env=environment,
                            timeout=timeout)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return result, time.time() - started, cpu
