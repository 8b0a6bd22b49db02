"""What rules hand their steps: flags, the ensemble graph walk (with cycles as config errors), manifest slices."""
from __future__ import annotations

import copy
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from workflow_scripts import rule_params
from workflow_scripts.config_check import check_config
from workflow_scripts.errors import OoflineError

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture()
def demo_config():
    return check_config(yaml.safe_load((REPO / "config.yaml").read_text()), REPO)


def test_cli_flags_quote_every_value_and_reach_argparse_as_given():
    flags = rule_params.cli_flags({"template": "Q: {x}; rm -rf ~", "columns": ["a b", "c"], "lora": True,
                                   "rates": {"b": 0.2, "a": 0.1}, "skipped": None, "n_rows": 3})
    assert shlex.split(flags) == ["--template", "Q: {x}; rm -rf ~", "--columns", "a b", "c", "--lora", "true",
                                  "--rates", '{"a": 0.1, "b": 0.2}', "--n-rows", "3"]


def test_cli_flags_keep_only_the_named_keys_and_repeat_a_flag_given_pairs():
    assert rule_params.cli_flags({"seed": 1, "embedder": "iter0"}, keys=("seed",)) == "--seed 1"
    assert shlex.split(rule_params.extra_data_flags({"gen": "a b.parquet", "more": "c.parquet"})) == [
        "--extra", "gen=a b.parquet", "--extra", "more=c.parquet"]


def test_the_walk_collects_models_and_ensembles_through_nested_ensembles():
    ensembles = {"outer": {"members": {"inner": 1.0, "m3": 2.0}}, "inner": {"members": ["m1", "m2"]},
                 "unused": {"members": ["m4"]}}
    assert rule_params.source_dependencies("outer", ensembles) == (["m1", "m2", "m3"], ["inner", "outer"])
    assert rule_params.source_dependencies("m1", ensembles) == (["m1"], [])
    assert rule_params.ensemble_weights(ensembles, "outer") == [1.0, 2.0]
    assert rule_params.ensemble_weights(ensembles, "inner") == [1.0, 1.0]


@pytest.mark.parametrize("ensembles, cycle", [
    ({"e": {"members": ["e", "m"]}}, "ensembles.e.members: ensembles form a cycle (e -> e)"),
    ({"a": {"members": ["b", "m"]}, "b": {"members": ["c"]}, "c": {"members": ["a", "m"]}},
     "ensembles.c.members: ensembles form a cycle (a -> b -> c -> a)"),
])
def test_an_ensemble_cycle_is_one_error_naming_it(ensembles, cycle):
    with pytest.raises(OoflineError, match=r"ensembles form a cycle") as error:
        rule_params.source_dependencies(next(iter(ensembles)), ensembles)
    assert str(error.value) == f"config: {cycle}"
    assert len(rule_params.ensemble_cycle_problems(ensembles)) >= 1


def test_a_diamond_is_not_a_cycle():
    ensembles = {"top": {"members": ["left", "right"]}, "left": {"members": ["base"]},
                 "right": {"members": ["base", "m2"]}, "base": {"members": ["m1"]}}
    assert rule_params.ensemble_cycle_problems(ensembles) == []
    assert rule_params.source_dependencies("top", ensembles) == (["m1", "m2"], ["base", "left", "right", "top"])


def test_check_config_reports_an_ensemble_cycle_on_one_line(demo_config):
    config = copy.deepcopy(demo_config)
    config["ensembles"]["blend"]["members"] = {"blend": 1.0, "minilm": 1.0}
    with pytest.raises(OoflineError) as error:
        check_config(config, REPO)
    assert str(error.value) == "config: ensembles.blend.members: ensembles form a cycle (blend -> blend)"


def test_a_dry_run_of_a_config_with_an_ensemble_cycle_names_the_key(tmp_path):
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["ensembles"]["blend"]["members"] = ["searched", "minilm"]
    config["ensembles"]["searched"]["members"] = ["blend", "minilm"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-n", "--configfile",
                             "config.yaml", "--directory", str(tmp_path)], cwd=tmp_path, capture_output=True, text=True)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "config: ensembles.blend.members: ensembles form a cycle (searched -> blend -> searched)" in output
    assert "RecursionError" not in output and "Traceback" not in output


def test_the_manifest_slice_holds_what_the_submission_is_built_from(demo_config):
    config = copy.deepcopy(demo_config)
    config["ensembles"]["outer"] = {"members": ["blend", "minilm"]}
    config["submissions"]["outer_sub"] = {"source": "outer", "format": "top_k"}
    config_slice = rule_params.submission_config_slice(config, "outer_sub")
    assert sorted(config_slice["models"]) == ["minilm", "tiny_llama_qlora"]
    assert sorted(config_slice["ensembles"]) == ["blend", "outer"]
    assert config_slice["thresholds"] == {} and config_slice["task"] == config["task"]
    flags = shlex.split(rule_params.submission_flags(config, "outer_sub", None))
    base_models = flags[flags.index("--base-models") + 1:flags.index("--base-models") + 3]
    assert base_models == ["minilm=packaged:minilm", "tiny_llama_qlora=tiny:llama"]
    assert "--thresholds" not in flags


def test_thresholds_on_a_search_or_stack_get_what_refits_it():
    ensembles = {"stacked": {"members": ["a", "b"], "method": "stack", "C": 0.5},
                 "searched": {"members": {"a": 2.0, "b": 1.0}, "method": "search", "blend": "rank"},
                 "blend": {"members": ["a", "b"]}}
    flags = shlex.split(rule_params.threshold_refit_flags(ensembles, "stacked", ["oof/a.parquet", "oof/b.parquet"]))
    assert flags[flags.index("--member-oof") + 1:] == ["oof/a.parquet", "oof/b.parquet"]
    assert json.loads(flags[flags.index("--refit") + 1]) == {"names": ["a", "b"], "weights": [1.0, 1.0],
                                                              "method": "stack", "blend": "mean", "member_top_k": None,
                                                              "C": 0.5}
    searched = shlex.split(rule_params.threshold_refit_flags(ensembles, "searched", ["x", "y"]))
    assert json.loads(searched[searched.index("--refit") + 1])["weights"] == [2.0, 1.0]
    assert rule_params.threshold_refit_flags(ensembles, "blend", []) == ""
    assert rule_params.threshold_refit_flags(ensembles, "a_model", []) == ""


def test_threshold_flags_pass_rates_as_json():
    flags = shlex.split(rule_params.threshold_flags({"method": "class_balance", "target_rates": {"x": 0.3}}))
    assert flags == ["--method", "class_balance", "--weight", "0.5", "--target-rates", '{"x": 0.3}']


def test_retrieval_flags_follow_the_pipeline_settings():
    pipeline = {"valid_fold": 0, "embedder_inference": {"batch_size": 8}, "demo": {"n_queries": 40, "other": 1}}
    assert rule_params.retrieval_data_flags(pipeline, {}) == "--source demo --n-queries 40"
    flags = rule_params.mining_flags(pipeline, {"negative_number": 3, "embedder": "base"}, "results/x/iter0/embedder",
                                     "/merged")
    assert flags == "--batch-size 8 --negative-number 3 --valid-fold 0 --embedder results/x/iter0/embedder/merged"
    assert rule_params.finetune_flags({"base": "m", "mine": {}, "lora": False, "epochs": 1}) == "--lora false --epochs 1"


def test_rule_files_hold_rules_only():
    """Functions live in rules/common.smk (picking config sections) and rule_params (building what rules pass)."""
    for rule_file in sorted((REPO / "rules").glob("*.smk")):
        if rule_file.name != "common.smk":
            assert "\ndef " not in rule_file.read_text(), rule_file.name
    common = (REPO / "rules" / "common.smk").read_text()
    assert "shlex" not in common, "flags are built by rule_params.cli_flags, not by hand in common.smk"


def test_epoch_selection_flags_only_for_select_epoch_best():
    assert rule_params.epoch_selection_flags({"kind": "encoder_full"}, "map@3", None) == ""
    assert rule_params.epoch_selection_flags({"select_epoch": "last"}, "map@3", "t.parquet") == ""
    assert (rule_params.epoch_selection_flags({"select_epoch": "best"}, "map@3", "results/targets.parquet")
            == "--metric map@3 --held-out-targets results/targets.parquet")
    assert rule_params.selected_epoch_flags([]) == ""
    assert rule_params.selected_epoch_flags(["m/fold0/adapter", "m/fold1/adapter"]) == "--trained m/fold0/adapter m/fold1/adapter"


def generated_demo_config() -> dict:
    """demo/generated.yaml, validated, plus submissions of its soft-label student and its corrected model."""
    config = yaml.safe_load((REPO / "demo" / "generated.yaml").read_text())
    config["submissions"] = {"student_top3": {"source": "student", "format": "top_k"},
                             "corrected_top3": {"source": "corrected", "format": "top_k"}}
    return check_config(config, REPO)


@pytest.mark.parametrize("submission, edit", [
    ("student_top3", lambda c: c["soft_labels"]["teacher"].update(temperature=2.0)),  # soft-label setting
    ("student_top3", lambda c: c["generators"]["smol"].update(temperature=0.5)),  # the generator of its rows
    ("student_top3", lambda c: c["language_models"]["smol"].update(temperature=0.3)),  # the generator's LM
    ("student_top3", lambda c: c["models"]["teacher"].update(lr=5e-4)),  # the teacher that labelled them
    ("corrected_top3", lambda c: c["label_correction"]["teacher"].update(top_percent=10)),  # label correction
    ("corrected_top3", lambda c: c["models"]["teacher"].update(max_length=48)),
], ids=["soft_labels", "generator", "generator_lm", "teacher_student", "label_correction", "teacher_corrected"])
def test_a_setting_that_made_a_members_training_labels_moves_its_manifest_hash(submission, edit):
    from workflow_scripts.submission import canonical_sha256

    config = generated_demo_config()
    before = canonical_sha256(rule_params.submission_config_slice(config, submission))
    edit(config)
    assert canonical_sha256(rule_params.submission_config_slice(config, submission)) != before


def test_what_made_no_members_labels_and_where_jobs_ran_leave_the_manifest_hash():
    from workflow_scripts.submission import canonical_sha256

    config = generated_demo_config()
    before = {name: canonical_sha256(rule_params.submission_config_slice(config, name)) for name in config["submissions"]}
    config["generators"]["smol"]["resources"] = {"threads": 1, "mem_mb": 2000}
    config["models"]["teacher"]["resources"] = {"threads": 1}
    config["label_correction"]["teacher"]["top_percent"] = 10  # the student does not train on corrected labels
    config["language_models"]["smol_sft"]["finetune"]["epochs"] = 3  # answers, not a generator
    after = {name: canonical_sha256(rule_params.submission_config_slice(config, name)) for name in config["submissions"]}
    assert after["student_top3"] == before["student_top3"]
    assert after["corrected_top3"] != before["corrected_top3"]
    config_slice = rule_params.submission_config_slice(config, "student_top3")
    assert sorted(config_slice["models"]) == ["student", "teacher"] and list(config_slice["generators"]) == ["smol"]
    assert "label_correction" not in config_slice and list(config_slice["soft_labels"]) == ["teacher"]


def test_a_plain_submissions_manifest_slice_has_no_label_maker_sections(demo_config):
    """Submissions whose members train on official labels only keep the slice (and the records) they had."""
    assert set(rule_params.submission_config_slice(demo_config, "blend_top3")) == {
        "submission", "task", "data", "demo", "folds", "models", "ensembles", "thresholds"}


def test_every_submission_shape_is_a_name_register_and_the_manifest_know():
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config.update(language_models={"tiny": {"source": "tiny:llama"}},
                  answers={"n_test_problems": 2, "resources": {"threads": 1}},
                  votes={"both": {"answers": ["tiny/direct"]}, "dev_only": {"answers": ["tiny/direct"], "submit": False}})
    shapes = rule_params.submission_shapes(check_config(config, REPO))
    assert shapes == {"blend_top3": "classification", "stacked_top3": "classification", "qlora_top3": "classification",
                      "movie_plots": "retrieval", "both": "answers"}
    assert rule_params.manifest_config_slice(config, "movie_plots")["retrieval"]["k"] == 25
    assert "resources" not in json.dumps(rule_params.manifest_config_slice(config, "movie_plots"))
    assert "resources" not in json.dumps(rule_params.manifest_config_slice(config, "both"))
    for record, submission in (("lb-plots", "movie_plots"), ("lb-votes", "both")):
        check_config(dict(config, register={record: submission}), REPO)
    with pytest.raises(OoflineError, match=r"^config: register.lb: no submission is called 'dev_only' \(votes.dev_only "
                                           r"writes no submission"):
        check_config(dict(config, register={"lb": "dev_only"}), REPO)
