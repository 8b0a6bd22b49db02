"""A test-set submission from votes: the dev split picks the strategy, every unlabelled problem gets an answer."""
from __future__ import annotations

import json
import shlex
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


@pytest.fixture(scope="module")
def vote_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("votes")
    (workdir / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    run = snakemake(workdir, "results/submissions/both/submission.csv")
    assert run.returncode == 0, run.stderr[-4000:]
    return workdir


@pytest.mark.slow
def test_a_vote_writes_a_submission_for_unlabelled_problems(vote_run):
    results = vote_run / "results"
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


@pytest.mark.slow
def test_a_vote_submissions_manifest_hashes_everything_upstream(vote_run):
    """A vote submission's manifest (what `register:` freezes; the AIMO recipe's test rebuilds one from its record)
    covers everything upstream: the dev answers that chose the strategy, the test answers, the problems, the
    prompts and sampling settings, the language model's id."""
    hashed = json.loads((vote_run / "results" / "submissions" / "both" / "manifest.json").read_text())["hashed"]
    assert {"results/answers/tiny/by_kind.parquet", "results/answers/tiny/direct.parquet",
            "results/test_answers/tiny/by_kind.parquet", "results/votes/both/votes.parquet",
            "results/votes/both/score.json"} <= set(hashed["artifacts"])
    assert {"results/data/math_problems.parquet", "results/data/math_test_problems.parquet"} <= set(hashed["inputs"])
    assert hashed["base_models"] == ["tiny=tiny:llama"]
    assert hashed["config"]["answers"]["prompts"]["by_kind"]["by"] == "kind" and hashed["config"]["answers"]["samples"] == 2
    assert "resources" not in json.dumps(hashed["config"])  # where jobs ran is not what they made


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


def test_keywords_find_each_problems_category_in_its_text():
    from workflow_scripts.generated.answers import problem_prompts

    # AIMO's test: id and problem only
    problems = pl.DataFrame({"id": ["a", "b", "c", "d"], "problem": [
        "In triangle ABC the angles are ...", "How many ways can 5 people be seated?",
        "Find the remainder when 2^100 is divided by 7, if the Triangles ...", "Let x be the mystery."]})
    keywords = [("geometry", ["triangle", "circle"]), ("combinatorics", ["ways"]), ("arithmetic", ["remainder"])]
    templates = {"geometry": "G {problem}", "combinatorics": "C {problem}", "arithmetic": "A {problem}"}
    prompts = problem_prompts(problems, "problem", "D {problem}", None, templates, "by_category", keywords)
    # the first category in config order that matches wins (c names a remainder and Triangles: geometry)
    assert [prompt.split()[0] for prompt in prompts] == ["G", "C", "G", "D"]


def aimo_recipe_checked(tmp_path, **prompt_change):
    """recipes/aimo.yaml checked against files shaped like the competition's: reference.csv (id, problem, answer) and
    test.csv (id, problem) (its hub models are not looked up: HF_HUB_OFFLINE is left unset)."""
    import os

    from workflow_scripts.config_check import check_config

    assert "HF_HUB_OFFLINE" not in os.environ

    folder = tmp_path / "data" / "aimo"
    folder.mkdir(parents=True)
    (folder / "reference.csv").write_text("id,problem,answer\nr1,What is 1+1?,2\n")
    (folder / "test.csv").write_text("id,problem\nt1,What is 2+2?\n")
    config = yaml.safe_load((Path(__file__).resolve().parent.parent / "recipes" / "aimo.yaml").read_text())
    prompt = config["answers"]["prompts"]["by_category"]
    prompt.update(prompt_change)
    for key in [key for key, value in prompt_change.items() if value is None]:
        del prompt[key]
    return check_config(config, tmp_path)


def test_the_aimo_recipe_runs_on_the_competitions_test_columns(tmp_path, monkeypatch):
    """Its category prompt finds the category in the problem text: the real test (id, problem) needs no column."""
    from workflow_scripts.generated.answers import problem_prompts
    from workflow_scripts.rule_params import answer_flags

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    config = aimo_recipe_checked(tmp_path)
    test = pl.read_csv(tmp_path / "data" / "aimo" / "test.csv")
    flags = shlex.split(answer_flags(config["answers"], "by_category", split="test"))
    keywords = [tuple(pair) for pair in json.loads(flags[flags.index("--category-keywords") + 1])]
    assert [category for category, _ in keywords] == ["geometry", "combinatorics", "algebra", "arithmetic"]
    templates = json.loads(flags[flags.index("--category-templates") + 1])
    assert problem_prompts(test, "problem", flags[flags.index("--template") + 1], None, templates, "by_category",
                           keywords)[0].endswith("Problem: What is 2+2?")


def test_a_category_column_the_problems_files_lack_stops_before_any_job(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(OoflineError) as error:
        aimo_recipe_checked(tmp_path, by="category", keywords=None)
    assert str(error.value).splitlines() == [
        "invalid config: 2 problems",
        "config: answers.prompts.by_category.by: column 'category' is not in answers.problems data/aimo/reference.csv "
        "(it has id, problem, answer); name a column it has, or find the category from the problem text with "
        "`keywords: {category: [words]}`",
        "config: answers.prompts.by_category.by: column 'category' is not in answers.test_problems data/aimo/test.csv "
        "(it has id, problem); name a column it has, or find the category from the problem text with "
        "`keywords: {category: [words]}`"]
    with pytest.raises(OoflineError, match=r"^config: answers.prompts.by_category: set `by` .* not both$"):
        aimo_recipe_checked(tmp_path / "both", by="category")
