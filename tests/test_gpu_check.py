"""bench/gpu_check.sh: the one-command GPU check runs end to end on the CPU (tiny sizes), and says what is missing."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from workflow_scripts.tiny_models import TINY_FAMILIES

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_check_runs_the_workflow_end_to_end_on_the_cpu(tmp_path):
    # conftest put this interpreter's folder on PATH (behind the warm-start client, which the steps then use)
    env = dict(os.environ)
    result = subprocess.run(["bash", "bench/gpu_check.sh", "--device", "cpu", "--out", str(tmp_path), "--cores", "2"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=2400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    assert summary["problems"] == []
    families = {f"family_{family.replace('-', '')}" for family in TINY_FAMILIES}
    assert {(row["model"], row["fold"]) for row in summary["folds"]} == {
        (model, f"fold{k}") for model in ("llama_qlora", "bert_full") for k in (0, 1)} | {
        (model, "fold0") for model in families}
    assert all(row["device"] == "cpu" and row["precision"] == "bf16" and row["train_tokens_per_s"] > 0
               for row in summary["folds"])
    # one fold of every family in bf16, with the kernel transformers chose: eager where the family has no sdpa
    assert [row["family"] for row in summary["families"]] == list(TINY_FAMILIES)
    assert {row["family"]: row["attn_implementation"] for row in summary["families"]} == {
        family: "eager" if family in ("deberta-v2", "gemma2") else "sdpa" for family in TINY_FAMILIES}
    assert f"families: {len(TINY_FAMILIES)} of {len(TINY_FAMILIES)} trained one fold" in result.stdout
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
