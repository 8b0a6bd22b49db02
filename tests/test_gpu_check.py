"""bench/gpu_check.sh: the one-command GPU check runs end to end on the CPU (tiny sizes), and says what is missing."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_check_runs_the_workflow_end_to_end_on_the_cpu(tmp_path):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run(["bash", "bench/gpu_check.sh", "--device", "cpu", "--out", str(tmp_path), "--cores", "2"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    assert summary["problems"] == []
    assert {(row["model"], row["fold"]) for row in summary["folds"]} == {
        (model, f"fold{k}") for model in ("llama_qlora", "bert_full") for k in (0, 1)}
    assert all(row["device"] == "cpu" and row["precision"] == "bf16" and row["train_tokens_per_s"] > 0
               for row in summary["folds"])
    assert summary["plain_peft_loop"]["train_tokens_per_s"] > 0 and summary["oofline_over_plain_tokens_per_s"] > 0
    assert (tmp_path / "results" / "submissions" / "pair_top3" / "submission.csv").exists()
    assert (tmp_path / "results" / "models" / "llama_qlora" / "fold1" / "merged" / "model.safetensors").exists()
    assert "oofline / plain loop training tokens/s" in result.stdout


def test_gpu_check_names_missing_packages_in_one_line(tmp_path):
    # an interpreter without the workflow's packages: the system python3 with no site-packages of the venv
    bare = tmp_path / "bin"
    bare.mkdir()
    (bare / "python3").write_text(f"#!/bin/sh\nexec {sys.executable} -S \"$@\"\n")
    (bare / "python3").chmod(0o755)
    env = {"PATH": f"{bare}{os.pathsep}/usr/bin{os.pathsep}/bin", "HOME": str(tmp_path)}
    result = subprocess.run(["bash", "bench/gpu_check.sh", "--device", "cpu"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: missing Python package(s): torch")
    assert "bench/gpu_wheels.sh" in lines[0]
