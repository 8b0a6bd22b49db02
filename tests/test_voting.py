"""Voting strategies against hand-worked examples, the tie rule, scoring and bad input."""
import polars as pl
import pytest

from workflow_scripts.errors import OoflineError, run_cli
from workflow_scripts.generated.voting import STRATEGIES, canonical_answer, main, vote, vote_all

# Problem A, worked by hand:
#   answers 7 (conf .9), 7 (.2), 7 (.1), 5 (.8), 5 (.7), 9 (.95)
#   majority: 7 has 3 votes                                    -> 7
#   confidence-weighted: 7: 1.2, 5: 1.5, 9: .95                -> 5
#   max-confidence: the single most confident sample is 9     -> 9
#   median-confidence: 7: .2, 5: .75, 9: .95                   -> 9
#   unanimous: not unanimous -> majority                       -> 7
#   numeric mean: (7+7+7+5+5+9)/6 = 6.67 -> rounded            -> 7
PROBLEM_A = [("7", 0.9), ("7", 0.2), ("7", 0.1), ("5", 0.8), ("5", 0.7), ("9", 0.95)]
EXPECTED_A = {
    "majority": "7",
    "confidence_weighted": "5",
    "max_confidence": "9",
    "median_confidence": "9",
    "unanimous": "7",
    "numeric_mean": "7",
}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_hand_worked_example(strategy):
    assert vote(PROBLEM_A, strategy)[0] == EXPECTED_A[strategy]


def test_supports_are_the_hand_computed_shares():
    assert vote(PROBLEM_A, "majority")[1] == pytest.approx(3 / 6)
    assert vote(PROBLEM_A, "confidence_weighted")[1] == pytest.approx(1.5 / 3.65)
    assert vote(PROBLEM_A, "max_confidence")[1] == pytest.approx(0.95)
    assert vote(PROBLEM_A, "median_confidence")[1] == pytest.approx(0.95)


def test_unanimous_takes_the_common_answer_and_falls_back_otherwise():
    assert vote([("3", 0.1), ("3", 0.2)], "unanimous") == ("3", 1.0)
    assert vote(PROBLEM_A, "unanimous", fallback="confidence_weighted")[0] == "5"


def test_numeric_mean_rounds_half_up_only_for_integer_answers():
    assert vote([("2", 0.5), ("3", 0.5)], "numeric_mean")[0] == "3"  # 2.5 -> 3 (half up, not banker's 2)
    assert vote([("-2", 0.5), ("-3", 0.5)], "numeric_mean")[0] == "-2"  # -2.5 -> -2 (half up)
    assert vote([("1.5", 0.5), ("2", 0.5)], "numeric_mean")[0] == "1.75"
    assert vote([("abc", 0.5), ("4", 0.5), ("6", 0.1)], "numeric_mean")[0] == "5"  # text ignored


def test_ties_are_broken_by_confidence_then_by_smallest_answer():
    # majority tie 2-2: 8 has more summed confidence
    assert vote([("4", 0.1), ("4", 0.1), ("8", 0.3), ("8", 0.3)], "majority")[0] == "8"
    # full tie (same count, same confidence): smaller number wins, whatever the order
    tied = [("10", 0.5), ("9", 0.5)]
    assert vote(tied, "majority")[0] == "9"
    assert vote(list(reversed(tied)), "majority")[0] == "9"
    assert vote(tied, "max_confidence")[0] == "9"
    # numbers sort before text
    assert vote([("x", 0.5), ("3", 0.5)], "confidence_weighted")[0] == "3"
    # confidence-weighted tie on weight: more votes win
    assert vote([("1", 0.6), ("2", 0.3), ("2", 0.3)], "confidence_weighted")[0] == "2"


def test_no_answers_gives_no_vote():
    for strategy in STRATEGIES:
        assert vote([], strategy) == (None, 0.0)


def test_canonical_answer_merges_spellings():
    assert canonical_answer("12.0") == "12"
    assert canonical_answer(" 1,000 ") == "1000"
    assert canonical_answer("") is None
    assert vote([("12.0", 0.5), ("12", 0.5), ("13", 0.9)], "majority")[0] == "12"


def _answers_frame():
    rows = [("a", i, ans, conf) for i, (ans, conf) in enumerate(PROBLEM_A)]
    rows += [("b", 0, "4", 0.6), ("b", 1, None, None), ("b", 2, "4", 0.4)]
    return pl.DataFrame(rows, schema=["id", "sample", "answer", "confidence"], orient="row")


def test_cli_writes_votes_and_scores(tmp_path):
    _answers_frame().slice(0, 7).write_parquet(tmp_path / "p1.parquet")
    _answers_frame().slice(7).write_parquet(tmp_path / "p2.parquet")
    pl.DataFrame({"id": ["a", "b", "c"], "answer": [5, 4, 1]}).write_csv(tmp_path / "dev.csv")
    assert run_cli(main, [
        "--answers", str(tmp_path / "p1.parquet"), str(tmp_path / "p2.parquet"),
        "--dev", str(tmp_path / "dev.csv"),
        "--votes", str(tmp_path / "out/votes.parquet"), "--score", str(tmp_path / "out/score.json"),
    ]) == 0
    votes = pl.read_parquet(tmp_path / "out/votes.parquet")
    assert votes.height == 3 * len(STRATEGIES)
    import json
    score = json.loads((tmp_path / "out/score.json").read_text())
    # gold a=5: only confidence_weighted gets it; b=4: all do; c has no samples: none do
    assert score["strategies"]["confidence_weighted"]["correct"] == 2
    assert score["strategies"]["majority"]["correct"] == 1
    assert score["strategies"]["majority"]["accuracy"] == pytest.approx(1 / 3)
    assert score["best"] == "confidence_weighted"
    c_votes = votes.filter(pl.col("id") == "c")
    assert c_votes["answer"].null_count() == len(STRATEGIES)


def test_bad_confidence_names_the_column_and_id():
    frame = pl.DataFrame({"id": ["q1"], "answer": ["3"], "confidence": [1.7]})
    with pytest.raises(OoflineError, match=r"'confidence'.*'q1'"):
        vote_all(frame, ["q1"])


def test_missing_answer_column_is_named(tmp_path):
    pl.DataFrame({"id": ["q1"], "confidence": [0.3]}).write_parquet(tmp_path / "p.parquet")
    pl.DataFrame({"id": ["q1"], "answer": [3]}).write_csv(tmp_path / "dev.csv")
    with pytest.raises(OoflineError, match="answer"):
        main(["--answers", str(tmp_path / "p.parquet"), "--dev", str(tmp_path / "dev.csv"),
              "--votes", str(tmp_path / "v.parquet"), "--score", str(tmp_path / "s.json")])
    assert not (tmp_path / "v.parquet").exists()
