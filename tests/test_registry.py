"""The registry: every submission shape freezes as a record and is verified by a rebuild from it; a record says
which competition it belongs to; user files a record's config names are pinned so it rebuilds anywhere.

The real rebuilds run beside the fixtures that already build each shape (tests/test_workflow.py: classification,
tests/test_retrieval_workflow.py: retrieval, tests/test_vote_submission.py: votes) and two competitions share one
checkout in tests/test_staleness.py; here are the pure functions and the recipes' plans."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dry_run_plans import parse_jobs  # noqa: E402

from workflow_scripts.registry import competition_of, freeze, pin_user_files, records_by_competition  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
MANIFEST = {"hashed": {"config_sha256": "0" * 64}, "manifest_sha256": "1" * 64}


def test_a_record_pins_the_users_files_and_leaves_what_the_workflow_builds(tmp_path):
    for name in ("train.csv", "queries.parquet", "reference.csv", "solutions.csv", "extra.parquet"):
        (tmp_path / name).write_text("x")
    (tmp_path / "local_model").mkdir()
    config = {
        "output_dir": "out",
        "data": {"train": "train.csv", "test": "out/demo/test.csv"},  # the second is built (the demo's)
        "models": {"m": {"kind": "encoder_full", "source": "local_model", "extra_data": {"a": "extra.parquet",
                                                                                       "b": "out/soft_labels/t/x.parquet"}},
                   "hub": {"kind": "encoder_full", "source": "org/name"}},
        "retrieval": {"p": {"files": {"queries": "queries.parquet", "corpus": "missing.parquet"},
                            "models": {"base": "tiny:qwen2"}}},
        "answers": {"problems": "reference.csv", "test_problems": "out/data/math_test_problems.parquet"},
        "language_models": {"lm": {"finetune": {"base": "x", "data": "solutions.csv"}}},
    }
    pinned = pin_user_files(config, tmp_path)
    assert pinned["data"] == {"train": str(tmp_path / "train.csv"), "test": "out/demo/test.csv"}
    assert pinned["models"]["m"]["source"] == str(tmp_path / "local_model")
    assert pinned["models"]["m"]["extra_data"] == {"a": str(tmp_path / "extra.parquet"), "b": "out/soft_labels/t/x.parquet"}
    assert pinned["models"]["hub"]["source"] == "org/name"
    # a file that is not there is left as written (the rebuild says what is missing)
    assert pinned["retrieval"]["p"]["files"] == {"queries": str(tmp_path / "queries.parquet"), "corpus": "missing.parquet"}
    assert pinned["retrieval"]["p"]["models"] == {"base": "tiny:qwen2"}
    assert pinned["answers"] == {"problems": str(tmp_path / "reference.csv"),
                                 "test_problems": "out/data/math_test_problems.parquet"}
    assert pinned["language_models"]["lm"]["finetune"]["data"] == str(tmp_path / "solutions.csv")
    assert config["data"]["train"] == "train.csv"  # the config itself is not changed

    record = freeze("lb-1", "p", config, MANIFEST, tmp_path, shape="retrieval")
    assert (record["competition"], record["shape"], record["config"]) == ("out", "retrieval", pinned)


def test_a_records_competition_is_its_configs_or_its_output_folder(tmp_path):
    assert competition_of({"competition": "eedi", "output_dir": "results/eedi"}) == "eedi"
    assert competition_of({"output_dir": "results/eedi"}) == "results/eedi"
    assert competition_of({}) == "results"
    folder = tmp_path / "records"
    folder.mkdir()
    for name, config in (("a", {"competition": "map"}), ("b", {"output_dir": "results/eedi"}), ("c", {})):
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(freeze(name, "s", config, MANIFEST, tmp_path)))
    # a record frozen before records said which competition: its frozen config's
    old = freeze("d", "s", {"competition": "map"}, MANIFEST, tmp_path)
    del old["competition"]
    (folder / "d.yaml").write_text(yaml.safe_dump(old))
    assert records_by_competition(folder, "map") == (["a", "d"], {"b": "results/eedi", "c": "results"})
    assert records_by_competition(folder, "results") == (["c"], {"a": "map", "b": "results/eedi", "d": "map"})
    assert records_by_competition(tmp_path / "nothing", "map") == ([], {})


def dry_run(workdir: Path, *configfiles: Path) -> list[dict]:
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir), "-n",
               "--printshellcmds", "--configfile", *map(str, configfiles)]
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return parse_jobs(result.stdout)


@pytest.mark.slow
@pytest.mark.parametrize("recipe, submission, shape", [("eedi", "misconceptions", "retrieval"),
                                                       ("aimo", "all_models", "answers")])
def test_a_recipes_retrieval_or_vote_submission_is_frozen_and_verified(tmp_path, recipe, submission, shape):
    """`register:` on the Eedi recipe's retrieval pipeline and on AIMO's vote plans the record and its rebuild, and
    the submission's manifest hashes what made it (mined negatives, teacher scores, the fine-tunes and the epochs
    they kept; the answers, votes, the fine-tuned language model and its rows)."""
    overlay = tmp_path / "register.yaml"
    overlay.write_text(yaml.safe_dump({"register": {"lb-x": submission}, "registry_dir": "records"}))
    jobs = dry_run(tmp_path, REPO / "recipes" / f"{recipe}.yaml", REPO / "recipes" / f"demo-models-{recipe}.yaml", overlay)
    # this record and the one the demo overlay registers (the recipe runs rebuild it: tests/test_recipe_runs.py)
    records = {"record=lb-x", f"record={recipe}-demo-lb"}
    register = {job["wildcards"][0]: job for job in jobs if job["rule"] == "register_submission"}
    assert set(register) == records
    for job in register.values():
        assert f"--submission {submission} --shape {shape}" in job["shell"]
    assert {job["wildcards"][0] for job in jobs if job["rule"] == "verify_submission"} == records
    if recipe == "eedi":
        (made,) = [job for job in jobs if job["rule"] == "retrieval_submission" and "pipeline=misconceptions" in job["wildcards"]]
        root = "results/eedi-demo/retrieval/misconceptions"
        assert {f"{root}/iter0/mined.jsonl", f"{root}/iter0/reranker_mined.jsonl", f"{root}/iter1/mined.jsonl",
                f"{root}/iter1/scored.jsonl", f"{root}/iter1/reranker_scored.jsonl", f"{root}/iter0/embedder",
                f"{root}/iter1/reranker"} <= set(made["input"])
        assert "--base-models bge_icl=tiny:mistral qwen14b=tiny:qwen2" in made["shell"]
    else:
        (made,) = [job for job in jobs if job["rule"] == "vote_submission" and "vote=sft_prompts" in job["wildcards"]]
        out = "results/aimo-demo"
        assert {f"{out}/lms/gemma3_12b_sft/base", f"{out}/data/math_solutions/gemma3_12b_sft.parquet",
                f"{out}/answers/gemma3_12b_sft/expert.parquet", f"{out}/votes/sft_prompts/votes.parquet",
                f"{out}/data/math_problems.parquet"} <= set(made["input"])
        assert "--base-models gemma3_12b=tiny:gemma3" in made["shell"]
