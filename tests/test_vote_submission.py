"""A test-set submission from votes: the dev split picks the strategy, every unlabelled problem gets an answer."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_workflow import snakemake  # noqa: E402

from workflow_scripts.errors import OoflineError
from workflow_scripts.generated.vote_submission import chosen_strategy, submission_answers
from workflow_scripts.generated.voting import vote



def test_best_takes_the_dev_splits_best_strategy_and_a_named_one_is_kept():
    assert chosen_strategy("best", {"best": "max_confidence"}) == "max_confidence"
    assert chosen_strategy("numeric_mean", {"best": "max_confidence"}) == "numeric_mean"
    with pytest.raises(OoflineError, match="no best strategy"):
        chosen_strategy("best", {"best": None})
    with pytest.raises(OoflineError, match="'loudest' is not 'best'"):
        chosen_strategy("loudest", {"best": "majority"})


def test_every_test_id_gets_an_answer_in_test_order():
    answers = pl.DataFrame({"id": ["t2", "t2", "t2", "t1", "t1", "t3"],
                            "answer": ["7", "7", "9", "4", None, None],
                            "confidence": [0.2, 0.2, 0.9, 0.5, None, None]})
    frame, missing = submission_answers(answers, ["t1", "t2", "t3"], "max_confidence", "majority", "0")
    # max_confidence on t2 takes the single most confident sample (9), where majority would say 7
    assert frame.to_dicts() == [{"id": "t1", "answer": "4"}, {"id": "t2", "answer": "9"}, {"id": "t3", "answer": "0"}]
    assert missing == 1
    majority, _ = submission_answers(answers, ["t2"], "majority", "majority", "0")
    assert majority["answer"].to_list() == ["7"]


CONFIG = {
    "language_models": {"tiny": {"source": "tiny:llama"}},
    "answers": {"n_problems": 3, "n_test_problems": 4, "samples": 2, "max_new_tokens": 12, "answer_regex": "(\\d+)",
                "limit": 2,
                "prompts": {"by_kind": {"by": "kind", "templates": {"multiply": "Multiply: {problem}",
                                                                   "default": "Solve: {problem}"}}}},
    "votes": {"both": {"answers": ["tiny/by_kind", "tiny/direct"],
                       "strategies": ["majority", "max_confidence", "numeric_mean"]}},
}


@pytest.mark.slow
def test_a_vote_writes_a_submission_for_unlabelled_problems(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    run = snakemake(tmp_path, "results/submissions/both/submission.csv")
    assert run.returncode == 0, run.stderr[-4000:]
    results = tmp_path / "results"
    test = pl.read_parquet(results / "data" / "math_test_problems.parquet")
    assert "answer" not in test.columns and test.height == 4  # `limit` trims the dev set only
    submission = pl.read_csv(results / "submissions" / "both" / "submission.csv", infer_schema=False)
    assert submission.columns == ["id", "answer"]
    assert submission["id"].to_list() == test["id"].to_list()

    # the applied answers are what the dev-chosen strategy votes from the test answers
    score = json.loads((results / "votes" / "both" / "score.json").read_text())
    manifest = json.loads((results / "submissions" / "both" / "manifest.json").read_text())
    strategy = manifest["hashed"]["config"]["chosen_strategy"]
    assert strategy == score["best"]
    answers = pl.concat([pl.read_parquet(results / "test_answers" / "tiny" / f"{p}.parquet")
                         .select("id", pl.col("answer").cast(pl.String), "confidence") for p in ("by_kind", "direct")])
    for row_id, submitted in submission.iter_rows():
        samples = [(a, c) for a, c in answers.filter(pl.col("id") == row_id).select("answer", "confidence").iter_rows()
                   if a is not None]
        expected, _ = vote(samples, strategy)
        assert submitted == (expected if expected is not None else "0")
    assert set(manifest["hashed"]["outputs"]) == {"results/submissions/both/submission.csv"}


def test_votes_naming_an_unknown_model_or_clashing_with_a_submission_are_config_errors():
    from workflow_scripts.config_check import vote_problems

    problems = vote_problems({"language_models": {"tiny": {}}, "submissions": {"both": {}},
                              "votes": {"both": {"answers": ["tiny/cot_boxed", "big/direct", "tiny/nope"]}}})
    assert problems == [
        "config: votes.both.answers: 'big/direct' names no language model 'big' (have ['tiny'])",
        "config: votes.both.answers: 'tiny/nope' names no prompt 'nope' (have ['cot_boxed', 'cot_final', 'direct'])",
        "config: votes.both: a submission or retrieval pipeline has the same name; both would write submissions/both/",
    ]


def test_each_problem_gets_the_template_of_its_category_or_the_default():
    import polars as pl

    from workflow_scripts.generated.answers import problem_prompts

    problems = pl.DataFrame({"id": ["a", "b", "c"], "problem": ["2*3", "x+1=2", "7-2"],
                             "kind": ["multiply", "algebra", "subtract"]})
    templates = {"multiply": "Times: {problem}", "algebra": "Solve for x: {problem} in \\boxed{{}}"}
    assert problem_prompts(problems, "problem", "Default: {problem}", "kind", templates) == [
        "Times: 2*3", "Solve for x: x+1=2 in \\boxed{}", "Default: 7-2"]
    with pytest.raises(OoflineError, match="no template for category 'subtract' and no default"):
        problem_prompts(problems, "problem", None, "kind", templates, "by_kind")
    with pytest.raises(OoflineError, match="by column 'category', which the problems file lacks"):
        problem_prompts(problems, "problem", None, "category", templates, "by_kind")
    assert problem_prompts(problems, "problem", "Q: {problem}") == ["Q: 2*3", "Q: x+1=2", "Q: 7-2"]


def test_answer_flags_take_category_templates_and_drop_the_dev_limit_for_test_problems():
    import shlex

    from workflow_scripts.rule_params import answer_flags

    answers = {"limit": 2, "samples": 3,
               "prompts": {"by_kind": {"by": "kind", "templates": {"multiply": "M {problem}", "default": "D {problem}"}}}}
    dev = shlex.split(answer_flags(answers, "by_kind"))
    assert dev == ["--template", "D {problem}", "--category-column", "kind", "--category-templates",
                   '{"multiply": "M {problem}"}', "--samples", "3", "--limit", "2"]
    assert "--limit" not in shlex.split(answer_flags(answers, "by_kind", split="test"))
