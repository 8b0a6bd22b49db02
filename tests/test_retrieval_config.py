"""Retrieval config checks: `submit`, the models an iteration names, `columns:`, and iterations that leave their
fine-tunes to embedder_defaults / reranker_defaults. Each bad value is one line naming its key."""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from workflow_scripts.config_check import check_config
from workflow_scripts.errors import OoflineError
from workflow_scripts.rule_params import resolved_pipeline, retrieval_data_flags

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from test_retrieval_workflow import CONFIG, FINETUNE, RERANK  # noqa: E402


def config_with(edit) -> dict:
    config = copy.deepcopy(CONFIG)
    edit(config["retrieval"]["plots"])
    return config


def problem(edit) -> str:
    with pytest.raises(OoflineError) as error:
        check_config(config_with(edit), REPO)
    return str(error.value)


@pytest.mark.parametrize("edit, expected", [
    (lambda p: p.update(submit="iter2/embedder"),
     "config: retrieval.plots.submit: 'iter2/embedder' is not a stage of this pipeline (expected best, last or a "
     "stage: zero_shot, iter0/embedder, iter0/reranked, iter1/embedder, iter1/reranked)"),
    (lambda p: p.update(submit="iter0/reranker"), "config: retrieval.plots.submit: 'iter0/reranker' is not a stage"),
    (lambda p: p.update(submit="best", valid_fold=None),
     "config: retrieval.plots.submit: best chooses the stage on the valid fold, but valid_fold is null"),
    (lambda p: p["iterations"][0]["embedder"].update(base="iter0"),
     "config: retrieval.plots.iterations[0].embedder.base: iter0 is not built yet (embedder.base may name an "
     "earlier iteration)"),
    (lambda p: p["iterations"][0]["reranker"].update(base="iter1"),
     "config: retrieval.plots.iterations[0].reranker.base: iter1 is not built yet (reranker.base may name this or "
     "an earlier iteration)"),
    (lambda p: p["iterations"][0]["mine"].update(embedder="iter0"),
     "config: retrieval.plots.iterations[0].mine.embedder: iter0 is not built yet"),
    (lambda p: p["iterations"][1]["reranker"].update(base="bge_reranker"),
     "config: retrieval.plots.iterations[1].reranker.base: 'bge_reranker' is neither a name under "
     "retrieval.plots.models (minilm) nor iterJ"),
    (lambda p: p["iterations"][1].update(teacher="iter1"),
     "config: retrieval.plots.iterations[1].teacher: iter1 is not built yet"),
    (lambda p: p.update(columns={"corpus": {"text": "MisconceptionName"}}),
     "config: retrieval.plots.columns: renames the columns of retrieval.plots.files, which are not given"),
    (lambda p: p.update(files={"queries": "q.csv", "corpus": "c.csv", "test_queries": "t.csv"},
                        columns={"corpus": {"txt": "MisconceptionName"}}),
     "config: retrieval.plots.columns.corpus: unknown key 'txt'"),
])
def test_a_bad_retrieval_value_is_one_line_naming_its_key(edit, expected):
    message = problem(edit)
    assert len(message.splitlines()) == 1 and message.startswith(expected), message


def test_good_values_pass():
    for submit in ("best", "last", "zero_shot", "iter0/embedder", "iter1/reranked"):
        check_config(config_with(lambda p: p.update(submit=submit)), REPO)
    check_config(config_with(lambda p: p.update(submit="iter0/embedder", valid_fold=None)), REPO)
    # a reranker starting from this iteration's fine-tuned embedder
    check_config(config_with(lambda p: p["iterations"][0]["reranker"].update(base="iter0")), REPO)


def test_iterations_may_leave_their_fine_tunes_to_the_defaults():
    def defaults_only(pipeline):
        pipeline.update(embedder_defaults=FINETUNE, reranker_defaults=RERANK)
        for step in pipeline["iterations"]:
            step.pop("embedder")
            step.pop("reranker")

    config = config_with(defaults_only)
    check_config(config, REPO)
    resolved = resolved_pipeline(config["retrieval"]["plots"])
    assert all(step["embedder"] == FINETUNE and step["reranker"] == RERANK for step in resolved["iterations"])
    # without defaults the missing keys are named, where they would come from
    config = config_with(lambda p: p["iterations"][1].pop("embedder"))
    with pytest.raises(OoflineError, match=r"retrieval\.plots\.iterations\[1\]\.embedder\.base: missing \(set it "
                                           r"there or in retrieval\.plots\.embedder_defaults\)"):
        check_config(config, REPO)


def test_columns_reach_the_data_step_as_json():
    pipeline = {"files": {"queries": "q.csv", "corpus": "c.csv", "test_queries": "t.csv"},
                "columns": {"corpus": {"id": "MisconceptionId", "text": "MisconceptionName"}}}
    flags = retrieval_data_flags(pipeline, pipeline["files"])
    assert flags.endswith("""--columns '{"corpus": {"id": "MisconceptionId", "text": "MisconceptionName"}}'""")
    assert "--columns" not in retrieval_data_flags({"files": pipeline["files"]}, pipeline["files"])


def test_a_final_fit_plans_the_named_stage_and_zero_shot_only_when_submitted(tmp_path):
    config = config_with(lambda p: p.update(valid_fold=None, submit="zero_shot"))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    dry_run = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-n", "-p", "--cores",
                              "1"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert dry_run.returncode == 0, dry_run.stdout[-2000:] + dry_run.stderr[-2000:]
    zero_shot = [line for line in dry_run.stdout.splitlines()
                 if "workflow_scripts.retrieval.eval" in line and "zero_shot" in line]
    assert len(zero_shot) == 1 and "--final-fit" in zero_shot[0] and "--rerankers" not in zero_shot[0]
    assert "--embedders results/retrieval/plots/base/minilm" in zero_shot[0]


def test_the_demo_puts_every_retrieval_stage_on_its_leaderboard(tmp_path):
    """config.yaml: the zero-shot stage is scored beside the iterations, and the leaderboard reads the stages."""
    dry_run = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-n", "-p", "--cores",
                              "1", "--configfile", str(REPO / "config.yaml")], cwd=tmp_path, capture_output=True,
                             text=True, timeout=300)
    assert dry_run.returncode == 0, dry_run.stdout[-2000:] + dry_run.stderr[-2000:]
    lines = dry_run.stdout.splitlines()
    assert any("workflow_scripts.retrieval.eval" in line and "--oof-out results/retrieval/movie_plots/zero_shot/"
               in line for line in lines)
    [board] = [line for line in lines if "workflow_scripts.leaderboard" in line]
    assert "--retrieval-stages results/retrieval/movie_plots/stages.json" in board and "--prior-scores" in board
    [stages] = [line for line in lines if "workflow_scripts.retrieval.stages" in line]
    assert "--submit best" in stages
