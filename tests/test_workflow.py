"""A real Snakemake run of the whole classification graph on tiny data, then incremental reruns."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml
from movies_workflow import TWO_MODELS_AND_A_SUBMISSION, hand_map_at_3

REPO = Path(__file__).resolve().parent.parent

TINY_CONFIG = dict(TWO_MODELS_AND_A_SUBMISSION, register={"record-a": "pair_top3"}, registry_dir="records")


def snakemake(workdir: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
               "--cores", "2", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=workdir, timeout=timeout)


def planned_jobs(result: subprocess.CompletedProcess) -> set[tuple[str, str]]:
    """(rule, wildcards) of every job a dry run would execute."""
    jobs, rule = set(), None
    for line in result.stdout.splitlines():
        match = re.match(r"^(?:localrule|rule) (\w+):", line)
        if match:
            rule = match.group(1)
            jobs.add((rule, ""))
        wildcards = re.match(r"^\s+wildcards: (.*)$", line)
        if wildcards and rule:
            jobs.discard((rule, ""))
            jobs.add((rule, wildcards.group(1)))
    return jobs


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("workflow")
    (workdir / "config.yaml").write_text(yaml.safe_dump(TINY_CONFIG))
    result = snakemake(workdir)
    assert result.returncode == 0, result.stderr[-4000:]
    return workdir


@pytest.mark.slow
def test_run_builds_every_target(finished_run):
    results = finished_run / "results"
    train = pl.read_csv(results / "demo" / "train.csv")
    folds = pl.read_parquet(results / "folds.parquet")
    assert sorted(folds["id"].to_list()) == sorted(train["id"].to_list())
    for model in ("qlora", "full"):
        oof = pl.read_parquet(results / "oof" / f"{model}.parquet")
        assert oof["id"].to_list() == folds["id"].to_list()
        assert oof.columns == ["id", "fold", "fresh", "plot", "rotten"]
        test = pl.read_parquet(results / "test" / f"{model}.parquet")
        assert test.height == 20
        scores = yaml.safe_load((results / "scores" / f"{model}.json").read_text())
        assert scores["metric"] == "map@3" and set(scores["folds"]) == {"0", "1"}
        # MAP@3 recomputed by hand from the OOF file and the training labels, overall and per fold
        labels = oof.select(pl.col("id").cast(pl.String)).join(
            train.select(pl.col("id").cast(pl.String), "category"), on="id", how="left")["category"]
        assert scores["score"] == pytest.approx(hand_map_at_3(oof, labels), abs=1e-9)
        for fold in (0, 1):
            in_fold = (oof["fold"] == fold).to_numpy()
            assert scores["folds"][str(fold)]["score"] == pytest.approx(
                hand_map_at_3(oof.filter(in_fold), labels.filter(in_fold)), abs=1e-9)
    for fold in (0, 1):
        assert (results / "models" / "qlora" / f"fold{fold}" / "adapter" / "adapter_model.safetensors").exists()
        assert (results / "models" / "qlora" / f"fold{fold}" / "merged" / "model.safetensors").exists()
        assert (results / "models" / "full" / f"fold{fold}" / "model" / "model.safetensors").exists()
    assert not (results / "work").exists() or not any((results / "work").rglob("*.safetensors"))
    ensemble = pl.read_parquet(results / "ensembles" / "pair" / "oof.parquet")
    expected = (pl.read_parquet(results / "oof" / "qlora.parquet")["fresh"] * 1.0
                + pl.read_parquet(results / "oof" / "full.parquet")["fresh"] * 1.2) / 2.2
    assert (ensemble["fresh"] - expected).abs().max() < 1e-6


@pytest.mark.slow
def test_submission_matches_sample_and_record_verifies(finished_run):
    results = finished_run / "results"
    submission = pl.read_csv(results / "submissions" / "pair_top3" / "submission.csv")
    sample = pl.read_csv(results / "demo" / "sample_submission.csv")
    assert submission.columns == sample.columns and submission["id"].to_list() == sample["id"].to_list()
    # each row lists the three classes by falling blended test probability (any permutation would not do)
    blended = pl.read_parquet(results / "ensembles" / "pair" / "test.parquet")
    expected = {str(row["id"]): " ".join(sorted(("fresh", "plot", "rotten"), key=lambda name: -row[name]))
                for row in blended.iter_rows(named=True)}
    assert dict(zip(submission["id"].cast(pl.String), submission["category"])) == expected
    assert len(set(expected.values())) > 1  # rows are ranked differently, so the order is tested per row
    manifest = yaml.safe_load((results / "submissions" / "pair_top3" / "manifest.json").read_text())
    assert "results/demo/train.csv" in manifest["hashed"]["inputs"]
    assert any(path.startswith("results/models/qlora/fold0/adapter") for path in manifest["hashed"]["artifacts"])
    record = yaml.safe_load((finished_run / "records" / "record-a.yaml").read_text())
    assert record["submission"] == "pair_top3" and record["manifest"] == manifest
    assert "byte-identical" in (results / "verify" / "record-a.ok").read_text()
    leaderboard = pl.read_csv(results / "leaderboard.csv")
    assert {"qlora", "full", "pair", "pair_top3"} <= set(leaderboard["name"].to_list())


@pytest.mark.slow
def test_a_tampered_record_fails_verification_listing_the_file(finished_run):
    record_path = finished_run / "records" / "record-a.yaml"
    record = yaml.safe_load(record_path.read_text())
    outputs = record["manifest"]["hashed"]["outputs"]
    tampered_file = sorted(outputs)[0]
    outputs[tampered_file] = "0" * 64
    bad_record = finished_run / "records" / "record-bad.yaml"
    bad_record.write_text(yaml.safe_dump(record))
    try:
        result = snakemake(finished_run, "results/verify/record-bad.ok")
    finally:
        bad_record.unlink()
    log = (finished_run / "results" / "logs" / "verify" / "record-bad.log").read_text()
    assert result.returncode != 0
    assert f"{tampered_file} (outputs: sha256 differs)" in log
    assert not (finished_run / "results" / "verify" / "record-bad.ok").exists()


@pytest.mark.slow
def test_finished_run_has_nothing_to_do(finished_run):
    result = snakemake(finished_run, "-n")
    assert result.returncode == 0
    assert "Nothing to be done" in result.stdout + result.stderr


@pytest.mark.slow
def test_changing_one_learning_rate_reruns_exactly_that_model(finished_run):
    config = yaml.safe_load((finished_run / "config.yaml").read_text())
    config["models"]["qlora"]["lr"] = 1e-3
    (finished_run / "config.yaml").write_text(yaml.safe_dump(config))
    try:
        jobs = planned_jobs(snakemake(finished_run, "-n"))
    finally:
        (finished_run / "config.yaml").write_text(yaml.safe_dump(TINY_CONFIG))
    rules = {rule for rule, _ in jobs}
    # the frozen record and its verification stay as they are: they describe a past submission
    assert rules == {"train_adapter", "merge_adapter", "predict_fold", "oof", "ensemble", "submission",
                     "leaderboard", "leaderboard_html", "plot_cv_folds", "plot_ensembles", "plot_cv_lb", "all"}, jobs
    assert all("model=qlora" in wildcards for rule, wildcards in jobs
               if rule in {"train_adapter", "merge_adapter", "predict_fold", "oof"})
    assert len([1 for rule, _ in jobs if rule == "train_adapter"]) == 2


@pytest.mark.slow
def test_a_registered_record_becomes_a_kaggle_package_from_the_record_alone(finished_run, tmp_path):
    """The QLoRA record is rebuilt in a scratch folder from its frozen config (as verify does), checked against the
    record, packaged; the notebook, run offline on the public test, writes the recorded submission's bytes."""
    import hashlib

    from kaggle_tree import kaggle_tree, run_notebook

    record_path = finished_run / "records" / "record-a.yaml"
    frozen = record_path.read_bytes()
    config = dict(TINY_CONFIG, kaggle={"record-a": {"competition": "movies-demo", "dataset": "me/record-a",
                                                    "kernel": "me/record-a-submit", "accelerator": "cpu",
                                                    "cpu_threads": 1}})
    (finished_run / "kaggle.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(finished_run, "results/kaggle/record-a/plan.json", "--configfile",
                       str(finished_run / "kaggle.yaml"))
    assert result.returncode == 0, result.stderr[-4000:]
    assert record_path.read_bytes() == frozen  # a package's settings never re-freeze the record
    package = finished_run / "results" / "kaggle" / "record-a"
    plan = yaml.safe_load((package / "plan.json").read_text())
    assert plan["record"] == "record-a" and not (finished_run / "results" / "kaggle" / "record-a.scratch").exists()
    shipped = yaml.safe_load((package / "dataset" / "oofline_package.json").read_text())
    assert shipped["models"]["qlora"]["base"] and shipped["models"]["qlora"]["splits"]["fold0"].endswith("/adapter")
    demo = finished_run / "results" / "demo"
    tree = kaggle_tree(package, tmp_path, {"test.csv": demo / "test.csv",
                                           "sample_submission.csv": demo / "sample_submission.csv"})
    run, _, _ = run_notebook(tree)
    assert run.returncode == 0, run.stderr[-3000:]
    recorded = yaml.safe_load(frozen)["manifest"]["hashed"]["outputs"]["results/submissions/pair_top3/submission.csv"]
    assert hashlib.sha256((tree["working"] / "submission.csv").read_bytes()).hexdigest() == recorded


@pytest.mark.slow
def test_a_merged_member_package_runs_a_hidden_test_with_a_blank_row_and_a_late_decimal(finished_run, tmp_path):
    """members: merged: the QLoRA member ships its merged folds alone (no base) and loads them 4-bit, as it was
    trained; offline, the notebook predicts every row of a hidden test nobody has seen, in its order: a blank row and
    a numeric column that turns decimal after row 10,000 (which the per-file type inference it used would crash on)."""
    from kaggle_tree import kaggle_tree, run_notebook

    from workflow_scripts.kaggle.inference import model_test_probabilities, read_test_rows
    from workflow_scripts.labels import LabelSpec

    config = dict(TINY_CONFIG, kaggle={"pair_top3": {"competition": "movies-demo", "dataset": "me/pair-merged",
                                                     "kernel": "me/pair-merged-submit", "accelerator": "cpu",
                                                     "cpu_threads": 1, "members": "merged", "sample_submission": None}})
    (finished_run / "merged.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(finished_run, "results/kaggle/pair_top3/plan.json", "--configfile",
                       str(finished_run / "merged.yaml"))
    assert result.returncode == 0, result.stderr[-4000:]
    results = finished_run / "results"
    package = results / "kaggle" / "pair_top3"
    shipped = json.loads((package / "dataset" / "oofline_package.json").read_text())
    qlora = shipped["models"]["qlora"]
    assert qlora["base"] is None and all(folder.endswith("/merged") for folder in qlora["splits"].values())
    assert not (package / "dataset" / "bases").exists()

    # what merging cost in probabilities: the merged folds, loaded 4-bit, against base + adapter (the workflow's
    # test predictions, the folds' mean), on the public test
    spec = LabelSpec.load(package / "dataset" / "labels.json")
    public = read_test_rows(results / "demo" / "test.csv", shipped["task"], shipped["columns"])
    merged, _ = model_test_probabilities(package / "dataset", "qlora", qlora, spec, public["text"].to_list(), print)
    workflow = public.select("id").join(pl.read_parquet(results / "test" / "qlora.parquet"), on="id", how="left")
    gap = float(abs(merged - workflow.select(spec.probability_columns).to_numpy()).max())
    print(f"qlora merged (4-bit) vs base + adapter on {public.height} public rows: max |difference| {gap:.2e}")
    assert 0 < gap < 0.05

    test = pl.read_csv(results / "demo" / "test.csv", infer_schema=False)
    texts = test["text"].to_list()
    filler = pl.DataFrame({"id": [f"x{i}" for i in range(10_030)],
                           "text": [texts[i % len(texts)] for i in range(10_030)],
                           "year": [str(1990 + i % 30) if i != 10_010 else "2001.5" for i in range(10_030)]})
    rows = test.select("id", "text").with_columns(pl.lit("2000").alias("year"))
    blank = pl.DataFrame({"id": ["blank-row"], "text": [""], "year": [""]})
    hidden = pl.concat([rows.head(7), blank, rows.tail(-7), filler])
    hidden_path = tmp_path / "hidden.csv"
    hidden.write_csv(hidden_path)
    tree = kaggle_tree(package, tmp_path / "kaggle", {"test.csv": hidden_path})
    run, wall, cpu = run_notebook(tree, timeout=1200)
    assert run.returncode == 0, run.stderr[-3000:]
    print(f"hidden test of {hidden.height} rows: {wall:.0f} s wall, {cpu:.0f} s CPU")
    written = pl.read_csv(tree["working"] / "submission.csv", infer_schema=False)
    assert written["id"].to_list() == hidden["id"].to_list()
    assert written.filter(pl.col("id") == "blank-row")["category"].to_list()[0].count(" ") == 2  # a top 3 for it
    assert "oofline: 1 test row(s) have every column of the text template blank" in run.stdout
    assert "qlora fold0: loaded" in run.stdout and "weights 4bit" in run.stdout
