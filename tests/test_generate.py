"""Few-shot generation: prompt building within the word budget, parsing, failures counted, never-parsing
generators fail with nothing written, and a real tiny Llama producing a parquet."""
import json

import numpy as np
import polars as pl
import pytest

from workflow_scripts.errors import OoflineError, run_cli
from workflow_scripts.generated.generate import (Completion, GeneratorSettings, build_prompts, generate_rows, main,
                                       parse_output)


TRAIN = pl.DataFrame({
    "id": [f"t{i}" for i in range(12)],
    "story": [f"the child felt {w} after school number {i}" for i, w in enumerate(["sad", "angry", "calm"] * 4)],
    "mood": [0, 1, 2] * 4,
})
TEMPLATE = "Write one new record like these.\n{examples}Answer with one JSON object."


def test_parse_json_lines_and_text():
    fields = ["story", "mood"]
    assert parse_output('Sure! {"story": "x y", "mood": 1} done', fields, "json") == ({"story": "x y", "mood": "1"}, None)
    assert parse_output('{"story": "x"', fields, "json") == (None, "no JSON object")
    assert parse_output('{"story": "x"}', fields, "json") == (None, "missing field 'mood'")
    assert parse_output('{"story": "  ", "mood": 1}', fields, "json") == (None, "empty field 'story'")
    assert parse_output("Story: line one\nline two\nmood: 2\nstory: second record", fields, "lines") == (
        {"story": "line one\nline two", "mood": "2"}, None)
    assert parse_output("mood: 2", fields, "lines") == (None, "missing field 'story'")
    assert parse_output("  free text  ", ["story"], "text") == ({"story": "free text"}, None)
    assert parse_output("   ", ["story"], "text") == (None, "empty output")


def test_prompts_draw_fresh_examples_within_the_word_budget():
    rng = np.random.default_rng(0)
    prompts = build_prompts(TRAIN, 60, TEMPLATE, ["story", "mood"], "json", 5, 60, rng)
    drawn = set()
    for text, ids in prompts:
        assert 1 <= len(ids) <= 5 and len(set(ids)) == len(ids)
        assert len(text.split()) <= 60 or len(ids) == 1  # the first example always goes in
        for example_id in ids:
            row = TRAIN.filter(pl.col("id") == example_id).to_dicts()[0]
            assert json.dumps({"story": row["story"], "mood": row["mood"]}) in text
        drawn.update(ids)
    assert len(drawn) == 12  # random draws per prompt cover the training rows
    big = build_prompts(TRAIN, 1, TEMPLATE, ["story", "mood"], "json", 5, 10_000, np.random.default_rng(0))
    assert len(big[0][1]) == 5


def _fake_sampler(outputs):
    """Cycles through canned outputs; records the seeds it was called with."""
    calls = []

    def sample(prompts, seed):
        calls.append((len(prompts), seed))
        start = sum(n for n, _ in calls[:-1])
        return [Completion(outputs[(start + i) % len(outputs)], [], []) for i in range(len(prompts))]

    sample.calls = calls
    return sample


def test_failures_are_counted_and_kept_not_dropped():
    outputs = ['{"story": "a new story", "mood": 1}', "garbage", '{"story": "b", "mood": "x"}',
               '{"story": "c", "mood": 7}', '{"story": "another one", "mood": 2}']
    settings = GeneratorSettings(fields=["story", "mood"], template=TEMPLATE, n_rows=4, batch_size=5,
                                 label_fields=["mood"], name="g", seed=3, text_template="Story: {story}")
    frame, report = generate_rows(TRAIN, settings, _fake_sampler(outputs))
    assert report["valid"] == 4 and report["attempts"] == 10 and report["failed"] == 6
    assert report["failures"] == {"field 'mood' has a label never seen in training": 2,
                                  "field 'mood' is not a Int64": 2, "no JSON object": 2}
    assert frame.height == 10 and frame["parse_error"].null_count() == 4
    valid = frame.filter(pl.col("parse_error").is_null())
    assert valid["mood"].dtype == TRAIN["mood"].dtype and valid["mood"].to_list() == [1, 2, 1, 2]
    assert valid["text"].to_list()[0] == "Story: a new story"
    assert frame["id"].to_list()[0] == "g-s3-00000"


def test_echoed_examples_count_as_failures_and_sampling_goes_on():
    echo = '{"story": "The child felt SAD after school, number 0", "mood": 0}'  # training row t0, re-cased
    settings = GeneratorSettings(fields=["story", "mood"], template=TEMPLATE, n_rows=2, batch_size=2, label_fields=["mood"])
    frame, report = generate_rows(TRAIN, settings, _fake_sampler([echo, '{"story": "brand new", "mood": 1}']))
    assert report["valid"] == 2 and report["failures"] == {"copy of a training row": 2}
    assert frame.filter(pl.col("parse_error").is_null())["story"].to_list() == ["brand new", "brand new"]


def test_never_parsing_generator_fails_after_max_attempts_and_writes_nothing(tmp_path, monkeypatch):
    settings = GeneratorSettings(fields=["story", "mood"], template=TEMPLATE, n_rows=3, batch_size=4, max_attempts=10)
    sampler = _fake_sampler(["I cannot do that."])
    with pytest.raises(OoflineError, match=r"none of 10 outputs parsed as format 'json'.*no JSON object"):
        generate_rows(TRAIN, settings, sampler)
    assert sum(n for n, _ in sampler.calls) == 10


def test_bad_settings_name_the_key():
    with pytest.raises(OoflineError, match="'feeling'"):
        generate_rows(TRAIN, GeneratorSettings(fields=["story", "feeling"], template=TEMPLATE), _fake_sampler(["x"]))
    with pytest.raises(OoflineError, match=r"\{examples\}"):
        generate_rows(TRAIN, GeneratorSettings(fields=["story"], template="no slot"), _fake_sampler(["x"]))


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    from workflow_scripts.prepare_model import materialise

    root = tmp_path_factory.mktemp("tiny")
    corpus = pl.DataFrame({"text": TRAIN["story"].to_list() * 5 + ['{"story": "x", "mood": 1}']})
    corpus.write_csv(root / "corpus.csv")
    return materialise("tiny:llama", root / "model", seed=0, corpus=root / "corpus.csv")


def _cli_args(model, tmp_path, fmt, out_name):
    TRAIN.write_csv(tmp_path / "train.csv")
    fields = ["story"] if fmt == "text" else ["story", "mood"]
    return ["--model", str(model), "--train", str(tmp_path / "train.csv"), "--generator", "tiny",
            "--fields", *fields, "--format", fmt, "--template", TEMPLATE, "--n-rows", "4", "--batch-size", "4",
            "--max-new-tokens", "12", "--max-attempts", "8", "--seed", "1", "--threads", "1",
            "--output", str(tmp_path / f"{out_name}.parquet"), "--report", str(tmp_path / f"{out_name}.json")]


@pytest.mark.slow
def test_tiny_llama_generates_a_parquet_deterministically(tiny_llama, tmp_path):
    assert run_cli(main, _cli_args(tiny_llama, tmp_path, "text", "a")) == 0
    assert run_cli(main, _cli_args(tiny_llama, tmp_path, "text", "b")) == 0
    frame = pl.read_parquet(tmp_path / "a.parquet")
    assert frame.height >= 4 and frame["parse_error"].null_count() >= 4
    assert set(frame.columns) >= {"id", "story", "raw_text", "parse_error", "example_ids"}
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    assert json.loads((tmp_path / "a.json").read_text())["backend"] == "transformers"


@pytest.mark.slow
def test_tiny_llama_that_never_writes_json_fails_cleanly(tiny_llama, tmp_path, capsys):
    assert run_cli(main, _cli_args(tiny_llama, tmp_path, "json", "c")) == 2
    assert "none of 8 outputs parsed as format 'json'" in capsys.readouterr().err
    assert not (tmp_path / "c.parquet").exists() and not (tmp_path / "c.json").exists()
