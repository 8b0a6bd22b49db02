"""data.prepare: a user's function turns raw competition files into task rows; the recipes' own functions on files
shaped like the competitions', and a function that raises or lacks a column is one `oofline error:` line."""
from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from workflow_scripts import prepare
from workflow_scripts.errors import OoflineError, run_cli

REPO = Path(__file__).resolve().parent.parent


def load(reference: str):
    path, name = prepare.parse_reference(reference)
    return prepare.load_function(prepare.resolve_file(path), name, reference)


def eedi_wide(tmp_path: Path) -> Path:
    """Two questions shaped like Eedi's train.csv: misconception ids written as floats, one wrong answer unlabelled."""
    frame = pl.DataFrame({
        "QuestionId": ["0", "1"], "ConstructId": ["856", "1612"], "ConstructName": ["Order of operations", "Area"],
        "SubjectId": ["33", "1077"], "SubjectName": ["BIDMAS", "Shapes"], "CorrectAnswer": ["A", "D"],
        "QuestionText": ["3 + 2 x 4 = ?", "Area of a 2 by 3 rectangle?"],
        "AnswerAText": ["11", "5"], "AnswerBText": ["20", "10"], "AnswerCText": ["24", "12"], "AnswerDText": ["9", "6"],
        "MisconceptionAId": ["", "1672.0"], "MisconceptionBId": ["2142.0", "891.0"], "MisconceptionCId": ["143.0", ""],
        "MisconceptionDId": ["2142.0", ""]})
    path = tmp_path / "train.csv"
    frame.write_csv(path)
    return path


def test_eedi_prepare_makes_one_query_per_wrong_answer_with_its_misconception(tmp_path):
    reference = "prepare/eedi.py:queries_from_wide"
    function = load(reference)
    raw = eedi_wide(tmp_path)
    train = prepare.prepare_file(reference, raw, "train", prepare.RETRIEVAL_REQUIRED["train"], function=function)
    # question 1's C is unlabelled: no query; the correct answers (0_A, 1_D) never are
    assert train["id"].to_list() == ["0_B", "0_C", "0_D", "1_A", "1_B"]
    assert train["positive_ids"].to_list() == [["2142"], ["143"], ["2142"], ["1672"], ["891"]]
    assert train["query"][0].endswith("Correct answer: 11\nStudent's answer: 20")
    # the hidden test has no misconception columns: every wrong answer is a query, in the file's order
    pl.read_csv(raw, infer_schema=False).drop(pl.selectors.starts_with("Misconception")).write_csv(tmp_path / "test.csv")
    test = prepare.prepare_file(reference, tmp_path / "test.csv", "test", prepare.RETRIEVAL_REQUIRED["test"],
                                function=function)
    assert test.columns == ["id", "query"] and test["id"].to_list() == ["0_B", "0_C", "0_D", "1_A", "1_B", "1_C"]
    pl.DataFrame({"MisconceptionId": ["0", "1"], "MisconceptionName": ["Adds first", "Multiplies sides"]}).write_csv(
        tmp_path / "mapping.csv")
    corpus = prepare.prepare_file(reference, tmp_path / "mapping.csv", "corpus", prepare.RETRIEVAL_REQUIRED["corpus"],
                                  function=function)
    assert corpus.rows() == [("0", "Adds first"), ("1", "Multiplies sides")]


def test_unlp_prepare_turns_the_list_of_techniques_into_one_column_each(tmp_path):
    reference = "prepare/unlp.py:techniques_to_columns"
    function = load(reference)
    raw = pl.DataFrame({"id": ["a", "b", "c"], "content": ["x", "y", "z"], "lang": ["uk", "ru", "uk"],
                        "manipulative": [True, False, True], "techniques": [["fud", "euphoria"], None, ["cliche"]]})
    raw.write_parquet(tmp_path / "train.parquet")
    task = {"type": "multilabel", "text_template": "{content}", "label_columns": list(function.__globals__["TECHNIQUES"])}
    train = prepare.prepare_file(reference, tmp_path / "train.parquet", "train",
                                 prepare.classification_required(task, "train"), function=function)
    assert "techniques" not in train.columns
    assert train.select("fud", "euphoria", "cliche", "straw_man").rows() == [(1, 1, 0, 0), (0, 0, 0, 0), (0, 0, 1, 0)]
    # a csv copy holds the list as text; the test file passes through
    raw.with_columns(pl.col("techniques").list.join(",")).write_csv(tmp_path / "train.csv")
    again = prepare.prepare_file(reference, tmp_path / "train.csv", "train",
                                 prepare.classification_required(task, "train"), function=function)
    assert again.select("fud", "euphoria", "cliche").rows() == [(1, 1, 0), (0, 0, 0), (0, 0, 1)]


BROKEN = '''
import polars as pl

def raises(frame, split):
    return frame["nope"]

def lacks_query(frame, split):
    return frame.select(pl.col("id"))

def not_a_frame(frame, split):
    return [1, 2]
'''


@pytest.mark.parametrize("function, named", [
    ("raises", "raises: on {raw} (test) it raised ColumnNotFoundError"),
    ("lacks_query", "lacks_query: on {raw} (test) its rows lack column 'query'"),
    ("not_a_frame", "not_a_frame: on {raw} (test) it returned list, not a polars (or pandas) DataFrame"),
])
def test_a_function_that_raises_or_returns_the_wrong_columns_is_one_line_naming_it(tmp_path, capsys, function, named):
    (tmp_path / "mine.py").write_text(BROKEN)
    raw = tmp_path / "test.csv"
    pl.DataFrame({"id": ["1", "2"], "text": ["a", "b"]}).write_csv(raw)
    out = tmp_path / "rows.parquet"
    code = run_cli(prepare.main, ["--function", f"{tmp_path}/mine.py:{function}", "--split", "test", str(raw), str(out),
                                  "--require", "test", "id,query"])
    error = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in error and error.startswith("oofline error: prepare ")
    assert named.format(raw=raw) in error
    assert not out.exists()


def test_a_missing_file_or_function_is_a_config_line(tmp_path):
    from workflow_scripts.config_check import check_config
    from workflow_scripts.rule_params import prepare_code

    config = {"data": {"train": "train.csv", "test": "test.csv", "prepare": "prepare/nowhere.py:rows"},
              "task": {"type": "multiclass", "label_column": "label"}}
    with pytest.raises(OoflineError) as error:
        check_config(config, tmp_path)
    assert "config: data.prepare: prepare/nowhere.py is not a file" in str(error.value)
    with pytest.raises(OoflineError, match=r"is not FILE.py:FUNCTION"):
        prepare.parse_reference("prepare/eedi.py")
    (tmp_path / "mine.py").write_text(BROKEN)
    with pytest.raises(OoflineError, match=r"mine.py has no function 'absent'"):
        prepare.prepare_file(f"{tmp_path}/mine.py:absent", tmp_path / "mine.py", "train", [])
    assert prepare_code(None, "data.prepare") is None


def test_the_digest_moves_with_the_code_not_with_comments(tmp_path):
    path = tmp_path / "rows.py"
    path.write_text("def rows(frame, split):\n    return frame\n")
    digest = prepare.source_digest(path)
    path.write_text("# a comment\ndef rows(frame, split):\n\n    return frame  # unchanged\n")
    assert prepare.source_digest(path) == digest
    path.write_text("def rows(frame, split):\n    return frame.head(1)\n")
    assert prepare.source_digest(path) != digest


def test_a_csv_reaches_the_function_as_text_whatever_its_rows_hold(tmp_path):
    """A hidden test whose later rows would infer other types is read as the public one was."""
    rows = ["id,score"] + [f"{i},{i}" for i in range(20_000)] + ["20000,2.5"]
    (tmp_path / "test.csv").write_text("\n".join(rows) + "\n")
    frame = prepare.read_raw(tmp_path / "test.csv")
    assert frame.schema == {"id": pl.String, "score": pl.String} and frame["score"][-1] == "2.5"
    assert frame["score"][1] == "1"


def test_a_retrieval_demo_writes_raw_files_exactly_for_a_prepare_function():
    from test_recipe_runs import recipe_config

    from workflow_scripts.config_check import check_config

    config = recipe_config("eedi")
    config["retrieval"]["misconceptions"] = {**config["retrieval"]["misconceptions"],
                                             "demo": {"n_passages": 30, "n_queries": 6, "n_test_queries": 3}}
    with pytest.raises(OoflineError, match=r"retrieval.misconceptions.demo.format: the demo writes task rows, but "
                                           r"retrieval.misconceptions.prepare expects raw files"):
        check_config(config, REPO)
    config["retrieval"]["misconceptions"]["prepare"] = None
    config["retrieval"]["misconceptions_cv"]["prepare"] = None
    with pytest.raises(OoflineError, match=r"retrieval.misconceptions_cv.demo.format: eedi_wide writes raw files for a "
                                           r"prepare function, but the pipeline has no `prepare`"):
        check_config(config, REPO)
