"""Retrieval stages: every stage scored on the valid fold is a candidate, `submit` picks the submission's, a stage
below the zero-shot embedder warns, and the leaderboard shows a row per stage with its lift over zero-shot."""
from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from workflow_scripts.errors import OoflineError, run_cli
from workflow_scripts.leaderboard import build_leaderboard, to_markdown
from workflow_scripts.leaderboard import main as leaderboard_main
from workflow_scripts.retrieval import stages as stages_module
from workflow_scripts.retrieval.stages import (
    build_stages, stage_names, stage_plan, submission_stage, submit_problem,
)
from workflow_scripts.rule_params import builds_zero_shot, retrieval_stage_plan, retrieval_submit

# the issue's numbers: the reranker lowers MAP in both iterations, iteration 1's embedder is worse than iteration 0's
ISSUE = {"zero_shot": (0.576, 0.80), "iter0/embedder": (0.630, 0.84), "iter0/reranked": (0.538, 0.84),
         "iter1/embedder": (0.593, 0.82), "iter1/reranked": (0.559, 0.82)}


def score_json(embedder, reranked=None, k=25, **extra) -> dict:
    overall = {"embedder": {f"map@{k}": embedder[0], f"recall@{k}": embedder[1]}}
    if reranked is not None:
        overall["reranked"] = {f"map@{k}": reranked[0], f"recall@{k}": reranked[1]}
    return {"k": k, "n_queries": 60, "overall": overall, "folds": {"0": overall}, **extra}


def write_scores(tmp_path: Path, table: dict, n_iterations: int = 2, zero_shot: bool = True,
                 extra: dict | None = None) -> list[dict]:
    """score.json files of a pipeline `p` under tmp_path/results, as evaluate_zero_shot / evaluate_retrieval write
    them; `extra`: iteration -> more score.json keys."""
    plan = stage_plan(str(tmp_path / "results"), "p", "minilm" if zero_shot else None, n_iterations)
    for stage in plan:
        Path(stage["score"]).parent.mkdir(parents=True, exist_ok=True)
        if stage["stage"] == "zero_shot":
            payload = score_json(table["zero_shot"])
        else:
            i = stage["iteration"]
            payload = score_json(table[f"iter{i}/embedder"], table[f"iter{i}/reranked"], **(extra or {}).get(i, {}))
        Path(stage["score"]).write_text(json.dumps(payload))
    return plan


def test_submit_best_picks_the_highest_valid_fold_map_and_flags_the_choice(tmp_path):
    plan = write_scores(tmp_path, ISSUE)
    stages, chosen = build_stages("p", plan, "best", top_n=50)
    assert [row["stage"] for row in stages["stages"]] == stage_names(2)
    assert chosen["stage"] == "iter0/embedder" and chosen["iteration"] == 0 and chosen["reranked"] is False
    assert chosen["embedder"] == f"{tmp_path}/results/retrieval/p/iter0/embedder/merged" and chosen["reranker"] is None
    assert (chosen["test_rankings"], chosen["ranking_column"]) == (f"{tmp_path}/results/retrieval/p/iter0/test.parquet",
                                                                  "embedder_ids")
    assert chosen["selected_on_valid_fold"] is True and "on the valid fold" in chosen["optimistic_reason"]
    assert chosen["warnings"] == [] and chosen["score"] == 0.630 and chosen["metric"] == "map@25"
    # the evidence: every candidate's score and its lift over zero-shot, as the stages table has them
    rows = {row["stage"]: row for row in stages["stages"]}
    for stage, (value, recall) in ISSUE.items():
        assert rows[stage]["map"] == value and rows[stage]["recall"] == recall
        assert rows[stage]["lift_over_zero_shot"] == pytest.approx(value - 0.576, abs=1e-12)
        assert rows[stage]["below_zero_shot"] is (value < 0.576)
        assert chosen["evidence"]["candidates"][stage]["map"] == value
    assert [row["stage"] for row in stages["stages"] if row["submitted"]] == ["iter0/embedder"]


def test_ties_go_to_the_cheaper_stage_and_zero_shot_can_win(tmp_path):
    table = {stage: (0.5, 0.9) for stage in ISSUE}
    plan = write_scores(tmp_path, table)
    assert build_stages("p", plan, "best")[1]["stage"] == "zero_shot"
    table = {**table, "iter0/reranked": (0.7, 0.9), "iter1/reranked": (0.7, 0.9)}
    plan = write_scores(tmp_path, table)
    chosen = build_stages("p", plan, "best", top_n=10)[1]
    assert (chosen["stage"], chosen["reranked"], chosen["top_n"]) == ("iter0/reranked", True, 10)
    assert chosen["reranker"].endswith("results/retrieval/p/iter0/reranker/merged")


def test_a_named_stage_below_zero_shot_is_submitted_with_a_warning(tmp_path, capsys):
    plan = write_scores(tmp_path, ISSUE)
    for submit, stage in (("last", "iter1/reranked"), ("iter1/reranked", "iter1/reranked"),
                          ("iter0/reranked", "iter0/reranked")):
        _, chosen = build_stages("p", plan, submit)
        assert chosen["stage"] == stage and chosen["selected_on_valid_fold"] is False
        [warning] = chosen["warnings"]
        assert f"submits {stage} (submit: {submit})" in warning and "below the zero-shot embedder's 0.5760" in warning
        assert "submit: best would choose iter0/embedder" in warning
    _, chosen = build_stages("p", plan, "iter1/embedder")  # above zero-shot: no warning
    assert chosen["warnings"] == []
    # the CLI prints it as a WARNING line and writes both files
    out = tmp_path / "out"
    stages_module.main(["--pipeline", "p", "--plan", json.dumps(plan), "--submit", "last",
                        "--out-stages", str(out / "stages.json"), "--out-submission-stage", str(out / "stage.json")])
    printed = capsys.readouterr().out
    assert "WARNING: retrieval.p submits iter1/reranked" in printed and "<- submitted" in printed
    assert submission_stage(out / "stage.json")["stage"] == "iter1/reranked"


def test_a_final_fit_names_its_stage_without_scores_or_warnings(tmp_path):
    plan = write_scores(tmp_path, ISSUE, zero_shot=False)
    for stage in plan:  # evaluate_retrieval --final-fit: no held-out score
        Path(stage["score"]).write_text(json.dumps({"k": 25, "n_queries": 0, "overall": {}, "folds": {},
                                                    "final_fit": True}))
    stages, chosen = build_stages("p", plan, "last")
    assert chosen["stage"] == "iter1/reranked" and chosen["score"] is None and chosen["warnings"] == []
    assert "final fit" in chosen["evidence"]["note"] and all(row["map"] is None for row in stages["stages"])
    with pytest.raises(OoflineError, match="no stage has a valid-fold score"):
        build_stages("p", plan, "best")


def test_a_stage_whose_fine_tune_chose_its_epoch_on_the_fold_is_optimistic(tmp_path):
    selection = {"checkpoint_selection": {"reranker": {"chosen_epoch": 2}}, "selected_on_valid_fold": True}
    plan = write_scores(tmp_path, ISSUE, extra={1: selection})
    stages, chosen = build_stages("p", plan, "iter1/reranked")
    rows = {row["stage"]: row for row in stages["stages"]}
    assert rows["iter1/reranked"]["optimistic_reason"] == "select_checkpoint: best (reranker epoch chosen on this fold)"
    assert rows["iter1/embedder"]["optimistic_reason"] is None and rows["iter0/reranked"]["optimistic_reason"] is None
    assert chosen["optimistic_reason"] == rows["iter1/reranked"]["optimistic_reason"]


def test_submit_values_and_defaults():
    assert submit_problem("best", 2, 0) is None and submit_problem("last", 2, None) is None
    assert submit_problem("iter1/reranked", 2, None) is None and submit_problem("zero_shot", 2, 0) is None
    assert "valid_fold is null" in submit_problem("best", 2, None)
    assert "'iter2/embedder' is not a stage" in submit_problem("iter2/embedder", 2, 0)
    assert "'iter0/reranker' is not a stage" in submit_problem("iter0/reranker", 2, 0)
    pipeline = {"iterations": [{"mine": {"embedder": "minilm"}}] * 2}
    assert retrieval_submit(pipeline) == "best" and builds_zero_shot(pipeline)
    final = {**pipeline, "valid_fold": None}
    assert retrieval_submit(final) == "last" and not builds_zero_shot(final)
    assert builds_zero_shot({**final, "submit": "zero_shot"})
    plan = retrieval_stage_plan("results", "p", pipeline)
    assert plan[0]["embedder"] == "results/retrieval/p/base/minilm" and len(plan) == 5
    assert [stage["stage"] for stage in retrieval_stage_plan("results", "p", final)] == stage_names(2)[1:]


def test_submission_stage_names_a_file_that_is_not_one(tmp_path):
    (tmp_path / "bad.json").write_text(json.dumps({"stage": "iter0/embedder"}))
    with pytest.raises(OoflineError, match="keys .*'iteration'.* are missing"):
        submission_stage(tmp_path / "bad.json")


def test_the_submission_ranks_with_the_chosen_stage(tmp_path):
    from workflow_scripts.retrieval import submission

    plan = write_scores(tmp_path, ISSUE)
    test = pl.DataFrame({"id": ["t0", "t1"], "ranked_ids": [["b", "a"], ["d", "c"]],
                         "embedder_ids": [["a", "b"], ["c", "d"]], "reranked_ids": [["b", "a"], ["d", "c"]]})
    for stage in plan:
        test.write_parquet(stage["test_rankings"])
    _, chosen = build_stages("p", plan, "best")
    (tmp_path / "stage.json").write_text(json.dumps(chosen))
    submission.main(["--stage", str(tmp_path / "stage.json"), "--out", str(tmp_path / "s.csv"),
                     "--manifest-out", str(tmp_path / "m.json"), "--scores", str(tmp_path / "stage.json")])
    assert pl.read_csv(tmp_path / "s.csv")["ranked_ids"].to_list() == ["a b", "c d"]  # the embedder's, not reranked
    manifest = json.loads((tmp_path / "m.json").read_text())
    assert list(manifest["hashed"]["oof_scores"].values()) == [{"metric": "map@25", "score": 0.630}]


def stages_file(tmp_path: Path, submit: str) -> Path:
    plan = write_scores(tmp_path, ISSUE)
    stages, _ = build_stages("p", plan, submit)
    path = tmp_path / f"stages_{submit.replace('/', '_')}.json"
    path.write_text(json.dumps(stages))
    return path


def test_the_leaderboard_has_a_row_per_stage_with_its_lift(tmp_path):
    path = stages_file(tmp_path, "best")
    board = build_leaderboard(retrieval_stages=[path], lb_scores={"p": {"public": 0.51}})
    stages = board.filter(pl.col("kind") == "retrieval")
    assert stages["name"].to_list() == [f"p/{stage}" for stage in stage_names(2)]  # cheapest first, not by name
    for name, cv, recall, lift, below in stages.select("name", "cv", "recall_at_k", "lift_over_zero_shot",
                                                       "below_zero_shot").iter_rows():
        value, expected_recall = ISSUE[name.split("/", 1)[1]]
        assert (cv, recall) == (value, expected_recall) and lift == pytest.approx(value - 0.576, abs=1e-12)
        assert below is (value < 0.576)
    assert stages.filter(pl.col("submitted"))["name"].to_list() == ["p/iter0/embedder"]
    assert stages.filter(pl.col("submitted"))["cv_optimistic"].to_list() == [True]
    submission = board.filter(pl.col("kind") == "submission").row(0, named=True)
    assert (submission["name"], submission["retrieval_stage"], submission["cv"], submission["lb_public"]) == (
        "p", "iter0/embedder", 0.630, 0.51)
    markdown = to_markdown(board)
    assert "## Retrieval stages" in markdown and "WARNING" not in markdown
    # the stage chosen on the fold is named under its own note, not the classification's select_epoch note
    assert ("**Chosen on the valid fold**" in markdown and "retrieval p/iter0/embedder (submit: best chose this "
            "stage on the valid fold)" in markdown and "**Optimistic CV**" not in markdown)
    assert "**Below the zero-shot embedder**" in markdown and "p/iter0/reranked (-0.0380)" in markdown


def test_the_leaderboard_warns_when_the_submission_is_below_zero_shot(tmp_path, capsys):
    path = stages_file(tmp_path, "last")
    out = tmp_path / "board"
    leaderboard_main(["--retrieval-stages", str(path), "--out-csv", str(out / "b.csv"), "--out-md", str(out / "b.md")])
    warning = json.loads(path.read_text())["warnings"][0]
    assert f"WARNING: {warning}" in capsys.readouterr().out
    assert (out / "b.md").read_text().count(f"**WARNING**: {warning}") == 1
    row = pl.read_csv(out / "b.csv").filter(pl.col("kind") == "submission").row(0, named=True)
    assert row["below_zero_shot"] is True and row["retrieval_stage"] == "iter1/reranked"
    from workflow_scripts.plots import leaderboard_html

    assert "<b>WARNING</b>: submission p ranks with a stage below" in leaderboard_html(pl.read_csv(out / "b.csv"))


def test_retrieval_rows_never_get_a_lift_over_the_classification_prior(tmp_path):
    prior = tmp_path / "prior.json"
    prior.write_text(json.dumps({"metric": "map@25", "score": 0.1}))  # the same metric name, another task
    board = build_leaderboard(prior_scores=prior, retrieval_stages=[stages_file(tmp_path, "best")])
    assert board.filter(pl.col("kind").is_in(["retrieval", "submission"]))["lift_over_prior"].null_count() == 6


def test_the_stage_cli_fails_on_a_bad_submit_in_one_line(tmp_path, capsys):
    plan = write_scores(tmp_path, ISSUE)
    argv = ["--pipeline", "p", "--plan", json.dumps(plan), "--submit", "iter7/embedder",
            "--out-stages", str(tmp_path / "s.json"), "--out-submission-stage", str(tmp_path / "c.json")]
    assert run_cli(stages_module.main, argv) != 0
    assert "submit: 'iter7/embedder' is not a stage of retrieval.p" in capsys.readouterr().err
    assert not (tmp_path / "s.json").exists()
