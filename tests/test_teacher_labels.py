"""Teacher-made labels per held-out set (generated/teacher_labels.py): split names, the files a student fold reads,
why a cheap chain is optimistic, config errors of chains, the inner OOF, and the CDC recipe's chain."""
from __future__ import annotations

import copy
from pathlib import Path

import polars as pl
import pytest
import yaml

from workflow_scripts.config_check import check_config
from workflow_scripts.errors import OoflineError
from workflow_scripts.generated import teacher_labels
from workflow_scripts.generated.teacher_labels import (chain_problems, gather_inner_oof, held_out_set,
                                                       optimistic_reasons, saw_fold, split_name, training_files)

REPO = Path(__file__).resolve().parent.parent


def test_split_names_round_trip_and_say_which_folds_a_teacher_saw():
    assert held_out_set("fold2") == (2,) and held_out_set("fold0+2") == (0, 2) and held_out_set("full") == ()
    assert split_name([2, 0]) == "fold0+2" and split_name([]) == "full"
    with pytest.raises(OoflineError, match="ascending"):
        held_out_set("fold2+0")
    assert not saw_fold("t/fold0+1", 0) and saw_fold("t/fold1+2", 0)
    assert saw_fold("t/fold1,t/fold0", 0)  # a mean over fold models: fold 1's model saw fold 0


def chain(n_folds=3, **nested):
    """A teacher, a round-1 student (corrected, official soft labels, generated soft labels) and a round-2 student."""
    return {
        "output_dir": "results",
        "folds": {"n_folds": n_folds},
        "generators": {"gen": {"nested": nested.get("generator", False)}},
        "models": {
            "teacher": {"kind": "encoder_full"},
            "r1": {"kind": "encoder_full", "corrected_by": "teacher",
                   "extra_data": {"soft": "results/soft_labels/teacher/official.parquet",
                                  "g0": "results/soft_labels/teacher/gen-seed0.parquet",
                                  "mine": "data/my_rows.parquet"}},
            "r2": {"kind": "encoder_full", "extra_data": {"g0": "results/soft_labels/r1/gen-seed0.parquet"}},
        },
        "soft_labels": {"teacher": {"nested": nested.get("soft", True)}},
        "label_correction": {"teacher": {"nested": nested.get("correction", True)}},
    }


def test_a_nested_student_fold_reads_labels_made_for_its_held_out_set():
    files = training_files(chain(), "r1", "fold1")
    assert files == {"train": "results/label_correction/teacher/fold1.parquet",
                     "targets": "results/label_correction/teacher/fold1.targets.parquet",
                     "extra_soft": "results/soft_labels/teacher/fold1/official.parquet",
                     "extra_g0": "results/soft_labels/teacher/fold1/gen-seed0.parquet",
                     "extra_mine": "data/my_rows.parquet"}  # a file oofline did not make is taken as given
    # an inner model of the same chain (trained without folds 0 and 1) reads labels made without both
    assert training_files(chain(), "r1", "fold0+1")["extra_soft"] == "results/soft_labels/teacher/fold0+1/official.parquet"
    # the full-data model has no held-out fold: the shared files
    assert training_files(chain(), "r1", "full")["train"] == "results/label_correction/teacher.parquet"


def test_a_cheap_chain_reads_the_shared_files_and_is_optimistic_down_the_chain():
    config = chain(soft=False, correction=False)
    files = training_files(config, "r1", "fold1")
    assert files["train"] == "results/label_correction/teacher.parquet"
    assert files["extra_soft"] == "results/soft_labels/teacher/official.parquet"
    reasons = optimistic_reasons(config, "r1")
    assert any("corrected_by: teacher is not nested" in r for r in reasons)
    assert any("extra_data.soft: soft labels of official rows from teacher is not nested" in r for r in reasons)
    # round 2 learns from r1's labels, and r1 learnt from teachers that saw r1's held-out folds
    assert any(r.startswith("teacher r1: corrected_by: teacher is not nested") for r in optimistic_reasons(config, "r2"))
    assert optimistic_reasons(config, "teacher") == []


def test_a_nested_chain_is_honest_only_with_a_nested_generator():
    shared_prompts = optimistic_reasons(chain(), "r1")
    assert shared_prompts and all("few-shot examples from every official row" in r for r in shared_prompts)
    assert optimistic_reasons(chain(generator=True), "r1") == []
    assert optimistic_reasons(chain(generator=True), "r2") == []


def test_chain_errors_name_the_key_and_the_fix():
    # r1 (one official-row hop) needs inner teachers without 2 folds: 2 folds leave nothing to train on
    problems = chain_problems(chain(n_folds=2))
    assert any("models.r1" in p and "folds.n_folds: 3" in p and "label_correction.teacher.nested" in p for p in problems)
    assert chain_problems(chain(n_folds=3)) == []
    assert chain_problems(chain(n_folds=2, soft=False, correction=False)) == []
    circular = chain()
    circular["models"]["teacher"]["corrected_by"] = "r1"
    circular["label_correction"]["r1"] = {}
    assert any("go round in a circle" in p for p in chain_problems(circular))
    best = chain()
    best["models"]["teacher"]["select_epoch"] = "best"
    assert any("models.r1.corrected_by" in p and "select_epoch: best" in p for p in chain_problems(best))
    unknown = chain()
    unknown["models"]["r1"]["corrected_by"] = "nobody"
    assert any("teacher 'nobody' is not a model" in p for p in chain_problems(unknown))


def test_inner_oof_gathers_each_fold_from_the_model_that_never_saw_it_or_the_held_out_set():
    folds = pl.DataFrame({"id": ["a", "b", "c", "d", "e", "f"], "fold": [0, 1, 2, 1, 2, 0]})
    assert teacher_labels.inner_oof_files("t", "fold0", 3) == {1: "predictions/t/fold0+1/on-fold1.parquet",
                                                                2: "predictions/t/fold0+2/on-fold2.parquet"}
    parts = {1: pl.DataFrame({"id": ["d", "b"], "fold": [1, 1], "x": [0.1, 0.2]}),
             2: pl.DataFrame({"id": ["c", "e"], "fold": [2, 2], "x": [0.3, 0.4]})}
    gathered = gather_inner_oof(parts, folds, "t", (0,))
    assert gathered.to_dict(as_series=False) == {
        "id": ["b", "c", "d", "e"], "fold": [1, 2, 1, 2],
        "label_source": ["t/fold0+1", "t/fold0+2", "t/fold0+1", "t/fold0+2"], "x": [0.2, 0.3, 0.1, 0.4]}
    with pytest.raises(OoflineError, match="fold 2 hold 1 rows, the fold has 2"):
        gather_inner_oof({1: parts[1], 2: parts[2].head(1)}, folds, "t", (0,))


@pytest.fixture
def cdc(monkeypatch):
    # the real recipe names hub models this machine does not cache; offline, the check would refuse them
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return merged_cdc


def merged_cdc(*overlays: str) -> dict:
    """recipes/cdc.yaml (and overlays) merged as Snakemake merges --configfile, then validated."""
    from snakemake.utils import update_config

    config = yaml.safe_load((REPO / "recipes" / "cdc.yaml").read_text())
    for overlay in overlays:
        update_config(config, yaml.safe_load((REPO / "recipes" / overlay).read_text()))
    return check_config(copy.deepcopy(config), REPO)


def test_cdc_students_learn_only_from_nested_teacher_labels_and_are_flagged_for_the_shared_prompts(cdc):
    config = cdc()
    for student in ("gemma_r1", "gemma_r2", "gemma_r2_r64", "gemma_r2_r8", "gemma2_2b"):
        assert teacher_labels.label_sources(config, student) and all(
            source.nested for source in teacher_labels.label_sources(config, student)), student
        reasons = optimistic_reasons(config, student)
        # the labels are nested; what is left is the generators' few-shot prompts, flagged and said
        assert reasons and all("few-shot examples from every official row" in r for r in reasons), (student, reasons)
    assert optimistic_reasons(config, "deberta") == []
    # round 2 at fold 0: official rows soft-labelled by inner round-1 students, corrected by inner teachers
    files = training_files(config, "gemma_r2", "fold0")
    assert files["extra_official_soft"] == "results/cdc/soft_labels/gemma_r1/fold0/official.parquet"
    assert files["train"] == "results/cdc/label_correction/deberta/fold0.parquet"


def test_cdc_on_the_demo_data_keeps_the_cheap_chain_and_flags_its_students(cdc):
    config = cdc("demo-models-cdc.yaml")  # 2 folds: no inner teacher can be trained without 2 of them
    for student in ("gemma_r1", "gemma_r2", "gemma_r2_r64", "gemma_r2_r8", "gemma2_2b"):
        assert any("is not nested" in r for r in optimistic_reasons(config, student)), student
    assert optimistic_reasons(config, "deberta") == []


def dry_run_commands(workdir: Path, *args: str) -> str:
    import subprocess
    import sys

    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir), "-n", "-p",
               "--cores", "1", *args]
    env = {k: v for k, v in __import__("os").environ.items() if k != "HF_HUB_OFFLINE"}
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_cdc_demo_flags_its_students_on_their_scores_and_the_recipe_trains_the_inner_teachers(tmp_path):
    """Through Snakemake's plan: the demo's oof steps pass the reasons (scores/MODEL.json, then the leaderboard,
    flag them); the recipe at 5 folds trains docs/generated.md's 60 models, inner teachers included."""
    plan = dry_run_commands(REPO, "--configfile", "recipes/cdc.yaml", "recipes/demo-models-cdc.yaml",
                            "--", "results/cdc-demo/leaderboard.csv")
    oof_commands = {line.split("--name ")[1].split()[0]: line for line in plan.splitlines()
                    if "workflow_scripts.oof " in line}
    students = {"gemma_r1", "gemma_r2", "gemma_r2_r64", "gemma_r2_r8", "gemma2_2b"}
    assert set(oof_commands) == {"deberta"} | students
    for model, command in oof_commands.items():
        assert ("--cv-optimistic-reason" in command) == (model in students), model
    for name in ("train.csv", "test.csv", "submission_format.csv"):
        (tmp_path / "data" / "cdc").mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / "cdc" / name).write_text("")
    plan = dry_run_commands(tmp_path, "--configfile", str(REPO / "recipes" / "cdc.yaml"), "--quiet", "rules")
    counts = {line.split()[0]: int(line.split()[1]) for line in plan.splitlines()
              if len(line.split()) == 2 and line.split()[1].isdigit()}
    assert counts["train_all_weights"] == 5 + 10 + 10  # DeBERTa: fold models, without 2 folds, without 3
    assert counts["train_adapter"] == 5 + 10 + 5 * 4  # round 1 and its inner models, four more students
