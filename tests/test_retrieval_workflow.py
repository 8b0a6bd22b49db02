"""A real Snakemake run of two retrieval iterations (tiny sizes, packaged MiniLM); changing iteration 1's
reranker reruns only that reranker and what depends on it.

The rerankers are made to hurt: a learning rate of ~0 leaves each one's score head as it started, random (iteration
1's starts from iteration 0's fine-tuned embedder, `base: iter0`), and top_n covers the whole corpus, so reranking
shuffles the embedder's ranking. Every stage is scored on the valid fold (zero-shot MiniLM, each iteration's
embedder, each reranked), `submit: best` submits an embedder stage, the leaderboard shows every stage with its lift
over zero-shot, and naming a reranked stage (`submit: iter1/reranked`) warns in the log and on the leaderboard."""
from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_metrics import apk  # noqa: E402
from test_workflow import planned_jobs, snakemake  # noqa: E402

FINETUNE = {"base": "minilm", "model_class": "encoder-only-base", "epochs": 1, "batch_size": 4,
            "train_group_size": 3, "query_max_len": 32, "passage_max_len": 64}
# a reranker that learns nothing: its random score head reorders the embedder's candidates
RERANK = {"base": "minilm", "model_class": "encoder-only-base", "epochs": 1, "learning_rate": 1e-12, "batch_size": 2,
          "train_group_size": 3, "max_len": 96}
CONFIG = {
    "retrieval": {"plots": {
        "demo": {"n_passages": 12, "n_queries": 24, "n_test_queries": 4, "seed": 0},
        "n_folds": 3, "valid_fold": 0, "k": 5, "top_n": 12,
        "models": {"minilm": "packaged:minilm"},
        "embedder_inference": {"embedder_class": "encoder-only-base", "pooling_method": "mean",
                               "query_max_length": 32, "passage_max_length": 64},
        "reranker_inference": {"reranker_class": "encoder-only-base", "rerank_max_length": 96},
        "iterations": [
            {"mine": {"embedder": "minilm", "range_for_sampling": "2-8", "negative_number": 2, "seed": 0},
             "embedder": FINETUNE, "reranker": {**RERANK, "mine": {"range_for_sampling": "2-6", "negative_number": 2}}},
            {"mine": {"embedder": "iter0", "range_for_sampling": "2-8", "negative_number": 2, "seed": 1},
             "teacher": "iter0",
             "embedder": {**FINETUNE, "knowledge_distillation": True},
             "reranker": {**RERANK, "base": "iter0", "knowledge_distillation": True}},
        ],
    }},
}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("retrieval")
    (workdir / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    result = snakemake(workdir, timeout=2400)
    assert result.returncode == 0, result.stderr[-4000:]
    return workdir


@pytest.mark.slow
def test_two_iterations_build_scores_and_a_submission(finished_run):
    root = finished_run / "results" / "retrieval" / "plots"
    queries = pl.read_parquet(root / "data" / "queries.parquet")
    folds = pl.read_parquet(root / "folds.parquet")
    held_out = set(folds.filter(pl.col("fold") == 0)["id"].to_list())
    mined = [json.loads(line) for line in (root / "iter0" / "mined.jsonl").read_text().splitlines()]
    assert mined and not held_out & {row["id"] for row in mined}  # held-out queries never train
    positives = dict(zip(queries["id"].to_list(), queries["positive_ids"].to_list()))
    for row in mined:
        assert not set(row["neg_ids"]) & set(positives[row["id"]])
    scored = [json.loads(line) for line in (root / "iter1" / "scored.jsonl").read_text().splitlines()]
    assert all(len(row["neg_scores"]) == len(row["neg"]) for row in scored)
    for iteration in (0, 1):
        score = json.loads((root / f"iter{iteration}" / "score.json").read_text())
        # MAP@5 and recall@5 recomputed from the OOF rankings and the queries' positives (ml_metrics' apk)
        oof = pl.read_parquet(root / f"iter{iteration}" / "oof.parquet")
        assert sorted(oof["id"].to_list()) == sorted(held_out) and score["n_queries"] == len(held_out)
        for ranking, name in (("embedder_ids", "embedder"), ("reranked_ids", "reranked")):
            pairs = [(positives[row_id], ranked) for row_id, ranked in zip(oof["id"], oof[ranking])]
            assert score["overall"][name]["map@5"] == pytest.approx(
                sum(apk(actual, ranked, 5) for actual, ranked in pairs) / len(pairs), abs=1e-12)
            assert score["overall"][name]["recall@5"] == pytest.approx(
                sum(len(set(actual) & set(ranked[:5])) / len(actual) for actual, ranked in pairs) / len(pairs), abs=1e-12)
        assert (root / f"iter{iteration}" / "embedder" / "merged").is_dir()
    submission = pl.read_csv(finished_run / "results" / "submissions" / "plots" / "submission.csv")
    assert submission.height == 4 and all(len(row.split()) == 5 for row in submission["ranked_ids"])


@pytest.mark.slow  # before the tests below edit the config and rebuild the submission
def test_the_pipelines_submission_manifest_hashes_everything_upstream(finished_run):
    """A retrieval submission's manifest (what `register:` freezes; the Eedi recipe's test rebuilds one from its
    record) hashes everything upstream: the mined negatives and teacher scores each fine-tune trained on, every
    fine-tune's merged model, settings and kept checkpoint, the folds and data, and the pipeline's config."""
    manifest = json.loads((finished_run / "results" / "submissions" / "plots" / "manifest.json").read_text())
    hashed = manifest["hashed"]
    root = "results/retrieval/plots"
    assert {f"{root}/iter0/mined.jsonl", f"{root}/iter0/reranker_mined.jsonl", f"{root}/iter1/mined.jsonl",
            f"{root}/iter1/scored.jsonl", f"{root}/folds.parquet"} <= set(hashed["artifacts"])
    for iteration in (0, 1):
        for role in ("embedder", "reranker"):
            assert {f"{root}/iter{iteration}/{role}/settings.json",
                    f"{root}/iter{iteration}/{role}/merged/model.safetensors"} <= set(hashed["artifacts"])
    assert set(hashed["inputs"]) == {f"{root}/data/{name}.parquet" for name in ("queries", "corpus", "test_queries")}
    assert hashed["base_models"] == ["minilm=packaged:minilm"]
    assert hashed["config"] == {"retrieval": CONFIG["retrieval"]["plots"]}
    assert set(hashed["outputs"]) == {"results/submissions/plots/submission.csv"}


@pytest.mark.slow
def test_changing_iteration_one_reranker_reruns_only_it(finished_run):
    config = copy.deepcopy(CONFIG)
    config["retrieval"]["plots"]["iterations"][1]["reranker"]["learning_rate"] = 5e-5
    (finished_run / "config.yaml").write_text(yaml.safe_dump(config))
    try:
        jobs = planned_jobs(snakemake(finished_run, "-n"))
    finally:
        (finished_run / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    assert {rule for rule, _ in jobs} == {"finetune_retriever", "evaluate_retrieval", "retrieval_stages",
                                          "retrieval_submission", "leaderboard", "all"}, jobs
    finetunes = [w for rule, w in jobs if rule == "finetune_retriever"]
    assert finetunes == ["pipeline=plots, iter=1, role=reranker"]


def recomputed_map(root: Path, folder: str, column: str, positives: dict) -> float:
    oof = pl.read_parquet(root / folder / "oof.parquet")
    return sum(apk(positives[row_id], ranked, 5) for row_id, ranked in zip(oof["id"], oof[column])) / oof.height


@pytest.mark.slow
def test_every_stage_is_scored_and_submit_best_submits_the_best_one(finished_run):
    root = finished_run / "results" / "retrieval" / "plots"
    queries = pl.read_parquet(root / "data" / "queries.parquet")
    positives = dict(zip(queries["id"].to_list(), queries["positive_ids"].to_list()))
    stages = json.loads((root / "stages.json").read_text())
    rows = {row["stage"]: row for row in stages["stages"]}
    assert list(rows) == ["zero_shot", "iter0/embedder", "iter0/reranked", "iter1/embedder", "iter1/reranked"]
    # each stage's MAP@5 is its own OOF rankings' (ml_metrics' apk); zero-shot is base MiniLM, not fine-tuned
    expected = {"zero_shot": recomputed_map(root, "zero_shot", "embedder_ids", positives)}
    for i in (0, 1):
        expected[f"iter{i}/embedder"] = recomputed_map(root, f"iter{i}", "embedder_ids", positives)
        expected[f"iter{i}/reranked"] = recomputed_map(root, f"iter{i}", "reranked_ids", positives)
    zero = expected["zero_shot"]
    for stage, value in expected.items():
        assert rows[stage]["map"] == pytest.approx(value, abs=1e-12), stage
        assert rows[stage]["lift_over_zero_shot"] == pytest.approx(value - zero, abs=1e-12), stage
    # the premise: these rerankers hurt (below their own embedder and below zero-shot)
    for i in (0, 1):
        assert expected[f"iter{i}/reranked"] < min(expected[f"iter{i}/embedder"], zero), expected
        assert rows[f"iter{i}/reranked"]["below_zero_shot"] is True
    # submit: best (the default) takes the highest MAP@5 (ties: the earlier stage): an embedder stage
    best = max(expected, key=lambda stage: (expected[stage], -list(rows).index(stage)))
    chosen = json.loads((root / "submission_stage.json").read_text())
    assert chosen["stage"] == best == stages["submitted"] and not chosen["reranked"] and chosen["reranker"] is None
    assert chosen["submit"] == "best" and chosen["selected_on_valid_fold"] is True and chosen["warnings"] == []
    assert Path(finished_run / chosen["embedder"]).is_dir()
    from workflow_scripts.retrieval.stages import submission_stage
    assert submission_stage(root / "submission_stage.json") == chosen
    # the submission is that stage's test rankings
    test = pl.read_parquet(finished_run / chosen["test_rankings"])
    submission = pl.read_csv(finished_run / "results" / "submissions" / "plots" / "submission.csv")
    assert submission["ranked_ids"].to_list() == [" ".join(ids) for ids in test[chosen["ranking_column"]]]
    manifest = json.loads((finished_run / "results" / "submissions" / "plots" / "manifest.json").read_text())
    summary = manifest["hashed"]["oof_scores"]["results/retrieval/plots/submission_stage.json"]
    assert summary == {"metric": "map@5", "score": expected[best]}
    # the leaderboard: a row per stage with its lift, the reranked ones named as below zero-shot
    board = pl.read_csv(finished_run / "results" / "leaderboard.csv").filter(pl.col("kind") == "retrieval")
    assert board["name"].to_list() == [f"plots/{stage}" for stage in rows]
    for name, cv, lift in board.select("name", "cv", "lift_over_zero_shot").iter_rows():
        stage = name.split("/", 1)[1]
        assert cv == pytest.approx(expected[stage], abs=1e-6) and lift == pytest.approx(expected[stage] - zero, abs=1e-6)
    markdown = (finished_run / "results" / "leaderboard.md").read_text()
    below = next(line for line in markdown.splitlines() if line.startswith("**Below the zero-shot embedder**"))
    assert "plots/iter0/reranked" in below and "plots/iter1/reranked" in below and "WARNING" not in markdown


@pytest.mark.slow
def test_submitting_a_stage_below_zero_shot_reruns_only_the_choice_and_warns(finished_run):
    config = copy.deepcopy(CONFIG)
    config["retrieval"]["plots"]["submit"] = "iter1/reranked"
    (finished_run / "config.yaml").write_text(yaml.safe_dump(config))
    try:
        jobs = planned_jobs(snakemake(finished_run, "-n"))
        assert {rule for rule, _ in jobs} == {"retrieval_stages", "retrieval_submission", "leaderboard", "all"}, jobs
        result = snakemake(finished_run)
        assert result.returncode == 0, result.stderr[-4000:]
    finally:
        (finished_run / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    results = finished_run / "results"
    chosen = json.loads((results / "retrieval" / "plots" / "submission_stage.json").read_text())
    assert (chosen["stage"], chosen["reranked"], chosen["selected_on_valid_fold"]) == ("iter1/reranked", True, False)
    assert chosen["reranker"] == "results/retrieval/plots/iter1/reranker/merged"
    test = pl.read_parquet(results / "retrieval" / "plots" / "iter1" / "test.parquet")
    submission = pl.read_csv(results / "submissions" / "plots" / "submission.csv")
    assert submission["ranked_ids"].to_list() == [" ".join(ids) for ids in test["reranked_ids"]]
    # the warning: in the stage choice's and the submission's logs, and heading the leaderboard
    [warning] = chosen["warnings"]
    assert "below the zero-shot embedder" in warning and "submit: best would choose" in warning
    for log in ("retrieval/plots/stages.log", "retrieval/plots/submission.log", "leaderboard.log"):
        assert f"WARNING: {warning}" in (results / "logs" / log).read_text(), log
    assert f"**WARNING**: {warning}" in (results / "leaderboard.md").read_text()
    row = pl.read_csv(results / "leaderboard.csv").filter((pl.col("kind") == "submission") & (pl.col("name") == "plots"))
    assert row["retrieval_stage"].to_list() == ["iter1/reranked"] and row["below_zero_shot"].to_list() == [True]
