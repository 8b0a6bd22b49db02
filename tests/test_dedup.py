"""Exact and near-duplicate removal against a brute-force reference; the CLI's counts and bad input."""
import json
import random

import polars as pl
import pytest

from workflow_scripts.generated.dedup import brute_force_reasons, deduplicate, jaccard, main, normalise, shingles
from workflow_scripts.errors import OoflineError

WORDS = "the a patient said he felt sad tired anxious after school work home family friend night day".split()


def _sentence(rng, n=30):
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _edit(rng, text, n_changes):
    words = text.split()
    for _ in range(n_changes):
        words[rng.randrange(len(words))] = rng.choice(WORDS)
    return " ".join(words)


def test_normalisation_makes_exact_duplicates_of_case_and_punctuation():
    assert normalise("  Hello,   WORLD!! ") == normalise("hello world")
    reasons, counts = deduplicate(["Hello, world!", "hello   WORLD", "Something else"], ["HELLO WORLD."])
    assert reasons == ["exact_reference", "exact_reference", "keep"]


def test_matches_brute_force_on_planted_duplicates():
    rng = random.Random(0)
    reference = [_sentence(rng) for _ in range(40)]
    generated = []
    for _ in range(120):
        kind = rng.random()
        if kind < 0.2:
            generated.append(_edit(rng, rng.choice(reference), rng.choice([0, 1, 8])))
        elif kind < 0.4 and generated:
            generated.append(_edit(rng, rng.choice(generated), rng.choice([0, 1, 8])))
        else:
            generated.append(_sentence(rng))
    reasons, counts = deduplicate(generated, reference, threshold=0.8)
    assert reasons == brute_force_reasons(generated, reference, 0.8)
    # the planted copies were found: every kind of removal happened
    assert all(counts[k] > 0 for k in ("exact_reference", "exact_self", "near_reference", "near_self", "keep"))


def test_threshold_is_respected():
    a = "the patient said he felt sad after school and tired at night"
    b = "the patient said he felt sad after school and tired at noon"
    sim = jaccard(shingles(a), shingles(b))
    assert deduplicate([a, b], [], threshold=sim - 1e-9)[0] == ["keep", "near_self"]
    assert deduplicate([a, b], [], threshold=sim + 1e-9)[0] == ["keep", "keep"]


def test_cli_drops_unparsed_and_duplicates_and_reports_counts(tmp_path):
    pl.DataFrame({"id": [1, 2], "text": ["Known training narrative one.", "another known row"]}).write_csv(tmp_path / "train.csv")
    raw = pl.DataFrame({
        "id": ["g0", "g1", "g2", "g3", "g4"],
        "text": ["known training narrative ONE", "fresh text here", None, "Fresh text here!", "a brand new story"],
        "raw_text": ["..."] * 5,
        "parse_error": [None, None, "missing field 'text'", None, None],
    })
    raw.write_parquet(tmp_path / "raw.parquet")
    main(["--generated", str(tmp_path / "raw.parquet"), "--reference", str(tmp_path / "train.csv"),
          "--text-columns", "text", "--output", str(tmp_path / "out.parquet"), "--report", str(tmp_path / "out.json")])
    out = pl.read_parquet(tmp_path / "out.parquet")
    assert out["id"].to_list() == ["g1", "g4"]
    assert "parse_error" not in out.columns and "raw_text" not in out.columns
    report = json.loads((tmp_path / "out.json").read_text())
    assert report["unparsed"] == 1 and report["kept"] == 2
    assert report["removed"]["exact_reference"] == 1 and report["removed"]["exact_self"] == 1


def test_missing_text_column_is_named(tmp_path):
    pl.DataFrame({"id": ["g0"], "body": ["x"]}).write_parquet(tmp_path / "raw.parquet")
    with pytest.raises(OoflineError, match="'text'"):
        main(["--generated", str(tmp_path / "raw.parquet"), "--text-columns", "text",
              "--output", str(tmp_path / "o.parquet"), "--report", str(tmp_path / "o.json")])
    assert not (tmp_path / "o.parquet").exists()
