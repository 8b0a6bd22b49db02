"""Ids are text, verbatim, from the competition files to the submission: zero padding and numeric-looking ids
survive a real Snakemake run byte for byte, and the submission is checked against the test file's ids."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
# ids a csv reader would turn into numbers: zero padded integers (test), decimals with trailing zeros (train)
TEST_IDS = ["0900000", "0900001", "007", "0000", "0900002", "0900010"]


def write_competition(folder: Path) -> None:
    words = {"pos": ["great", "lovely", "superb", "fine"], "neg": ["awful", "dull", "poor", "bad"]}
    rows = ["id,text,label"] + [
        f"{i}.50,{words[label][i % 4]} film {i},{label}" for i in range(24) for label in ["pos" if i % 2 else "neg"]]
    (folder / "train.csv").write_text("\n".join(rows) + "\n")
    (folder / "test.csv").write_text("id,text\n" + "".join(f"{i},{['great', 'dull'][n % 2]} film\n" for n, i in enumerate(TEST_IDS)))


@pytest.mark.slow
def test_submission_ids_are_the_test_files_ids_byte_for_byte(tmp_path):
    write_competition(tmp_path)
    config = {
        "data": {"train": "train.csv", "test": "test.csv"},
        "task": {"type": "multiclass", "label_column": "label", "metric": "accuracy"},
        "folds": {"scheme": "stratified", "n_folds": 2, "seed": 0},
        "models": {"tiny": {"source": "tiny:llama", "kind": "encoder_full", "lr": 1e-3, "max_length": 16,
                            "batch_size": 8, "resources": {"threads": 1}}},
        "submissions": {"labels": {"source": "tiny", "format": "argmax"}},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--cores", "2",
                             "results/submissions/labels/submission.csv"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    submitted = (tmp_path / "results" / "submissions" / "labels" / "submission.csv").read_bytes().splitlines()
    expected = (tmp_path / "test.csv").read_bytes().splitlines()
    assert [line.split(b",")[0] for line in submitted] == [line.split(b",")[0] for line in expected]
    train_ids = [line.split(b",")[0] for line in (tmp_path / "train.csv").read_bytes().splitlines()[1:]]
    import polars as pl

    assert pl.read_parquet(tmp_path / "results" / "oof" / "tiny.parquet")["id"].sort().to_list() == sorted(
        i.decode() for i in train_ids)
