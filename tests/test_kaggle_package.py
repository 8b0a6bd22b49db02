"""Kaggle code-competition packages built by a real Snakemake run of a stacked and a thresholded debates submission,
then run as Kaggle runs them: only dataset/ and notebook/ in a fresh /kaggle tree, offline, no project on sys.path."""
from __future__ import annotations

import filecmp
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml
from kaggle_tree import kaggle_tree, run_notebook
from step_images import apptainer_stand_in, images_by_step

from workflow_scripts.errors import OoflineError, run_cli

REPO = Path(__file__).resolve().parent.parent

# tfidf + frozen-MiniLM heads + a MiniLM fine-tune: stacked, and their mean with hybrid thresholds; two embedding
# heads share one base (shipped once)
DEBATES = {
    "demo": {"dataset": "debates", "n_train": 90, "n_test": 24, "seed": 0},
    "data": {"train": "results/demo/train.csv", "test": "results/demo/test.csv",
             "sample_submission": "results/demo/sample_submission.csv"},
    "task": {"type": "multihead", "text_template": "{text}", "metric": "mean_f1",
             "heads": [{"name": "is_democrat", "type": "binary"}, {"name": "is_republican", "type": "binary"},
                       {"name": "is_question", "type": "binary"}, {"name": "debate", "type": "multiclass"},
                       {"name": "speaker", "type": "multiclass"}]},
    "folds": {"scheme": "multilabel_stratified", "n_folds": 2, "seed": 42},
    "model_defaults": {"max_length": 48, "resources": {"threads": 1}},
    "models": {
        "tfidf": {"kind": "tfidf_linear", "word_ngrams": [1, 2], "char_ngrams": [1, 4]},
        "minilm_embed": {"source": "packaged:minilm", "kind": "embedding_head", "pooling": "mean"},
        "minilm_cls": {"source": "packaged:minilm", "kind": "embedding_head", "pooling": "cls"},
        "minilm": {"source": "packaged:minilm", "kind": "encoder_full", "lr": 3.0e-4, "epochs": 1, "batch_size": 16},
    },
    "ensembles": {"stacked": {"members": ["tfidf", "minilm_embed", "minilm"], "method": "stack"},
                  "cheap": {"members": ["tfidf", "minilm_embed", "minilm_cls", "minilm"], "method": "mean"}},
    "thresholds": {"cheap": {"method": "hybrid", "weight": 0.5}},
    "submissions": {"stacked_heads": {"source": "stacked", "format": "labels"},
                    "cheap_heads": {"source": "cheap", "format": "labels", "thresholds": True}},
}
COMPETITION = "debates-demo"
# unseen rows: statements no train or test row holds
UNSEEN = ["Will you cut taxes for working families this year?", "We will rebuild the roads and the bridges.",
          "My opponent has no plan for the economy."]


def snakemake(workdir: Path, images: tuple, *args: str) -> subprocess.CompletedProcess:
    """The run as under --sdm apptainer: each job in an environment holding only its rule's image's packages."""
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
               "--cores", "2", "--sdm", "apptainer", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=workdir, timeout=1500, env=images[1])


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> tuple:
    """(container config, environment, log): tests/step_images.py's stand-in for apptainer and the two images."""
    return apptainer_stand_in(tmp_path_factory.mktemp("images"), dict(os.environ))


@pytest.fixture(scope="module")
def probe_wheel(tmp_path_factory) -> Path:
    """A local wheel the package ships (no network): the notebook installs it with pip --no-index --find-links."""
    from workflow_scripts.kaggle.wheels import build_wheel

    root = tmp_path_factory.mktemp("probe")
    (root / "oofline_probe").mkdir()
    (root / "oofline_probe" / "__init__.py").write_text("SHIPPED = True\n")
    return build_wheel(root / "oofline_probe", "oofline-probe", "1.2.3", root / "dist")


@pytest.fixture(scope="module")
def debates_run(tmp_path_factory, probe_wheel, images) -> Path:
    workdir = tmp_path_factory.mktemp("kaggle_debates")
    config = dict(DEBATES, container=images[0], kaggle={
        "stacked_heads": {"competition": COMPETITION, "dataset": "me/oofline-stacked", "kernel": "me/stacked-submit",
                          "accelerator": "cpu", "cpu_threads": 1, "wheels": [str(probe_wheel)]},
        # 100k hidden rows in 36 seconds: over the limit
        "cheap_heads": {"competition": COMPETITION, "dataset": "me/oofline-cheap", "kernel": "me/cheap-submit",
                        "accelerator": "t4x2", "time_limit_hours": 0.01, "hidden_test_rows": 100000}})
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(workdir, images)
    assert result.returncode == 0, result.stderr[-4000:]
    return workdir


@pytest.mark.slow
def test_every_step_of_the_graph_ran_in_its_rules_image(debates_run, images):
    """The whole run above ran each job in an environment with only its image's packages (as --sdm apptainer or
    conda would): building the package (it times torch's import, reads model cards) needs the train image, the
    TF-IDF fold (safetensors) the cpu image's."""
    ran = images_by_step(images[2])
    assert ran["kaggle.package"] == {"train"} and ran["linear_models"] == {"cpu"}
    assert ran["embedding_head"] == {"cpu", "train"}  # embed on the train image, fit the heads on the cpu one
    assert ran["train"] == ran["predict"] == {"train"}
    assert {"data", "folds", "oof", "ensemble", "thresholds", "submission"} <= {
        step for step, groups in ran.items() if groups == {"cpu"}}


def public_files(workdir: Path, sample: bool = True) -> dict[str, Path]:
    demo = workdir / "results" / "demo"
    return {"test.csv": demo / "test.csv", **({"sample_submission.csv": demo / "sample_submission.csv"} if sample else {})}


@pytest.mark.slow
def test_stacked_package_rebuilds_the_submission_offline_byte_identical(debates_run, tmp_path):
    results = debates_run / "results"
    tree = kaggle_tree(results / "kaggle" / "stacked_heads", tmp_path, public_files(debates_run))
    result, wall_seconds, cpu_seconds = run_notebook(tree)
    assert result.returncode == 0, result.stderr[-3000:]
    assert filecmp.cmp(tree["working"] / "submission.csv", results / "submissions" / "stacked_heads" / "submission.csv",
                       shallow=False)
    # oofline ran from the shipped wheel, installed with pip --no-index --find-links, beside the shipped probe wheel
    code_line = next(line for line in result.stdout.splitlines() if line.startswith("oofline code: "))
    assert Path(code_line.removeprefix("oofline code: ")).resolve() == (tree["site"] / "workflow_scripts").resolve()
    assert (tree["site"] / "oofline_probe" / "__init__.py").exists()
    assert "--no-index" in result.stdout and "--find-links" in result.stdout
    # the image check ran first: the versions the package was built with, none differing in this environment
    assert any(line.startswith("oofline: built with ") for line in result.stdout.splitlines())
    assert "WARNING: oofline" not in result.stdout
    # the runtime estimate for these rows on one CPU thread, against the measured run's CPU seconds (one thread:
    # its time on an idle machine, whatever else shares the cores): within 0.5x to 2x (the step timings it scales
    # include first-load costs each step process paid, which the notebook pays once)
    from workflow_scripts.kaggle.plan import estimate

    plan = json.loads((results / "kaggle" / "stacked_heads" / "plan.json").read_text())
    estimated = estimate(plan["measured"], 24, "cpu", 1, 9,
                         startup_seconds=plan["estimate"]["startup_seconds"])["estimated_seconds"]
    assert plan["estimate"]["estimated_seconds"] == pytest.approx(estimated)
    assert cpu_seconds / 2 <= estimated <= 2 * cpu_seconds, (estimated, cpu_seconds, wall_seconds)


@pytest.mark.slow
def test_thresholded_package_on_shuffled_and_unseen_rows_predicts_each_shared_row_as_the_workflow(debates_run, tmp_path):
    results = debates_run / "results"
    public = pl.read_csv(results / "demo" / "test.csv", infer_schema=False)
    subset = public.sample(n=15, seed=3, shuffle=True)
    unseen = pl.DataFrame({"id": [f"new-{i}" for i in range(len(UNSEEN))], "text": UNSEEN})
    hidden = pl.concat([subset.select("id", "text"), unseen]).sample(fraction=1.0, seed=5, shuffle=True)
    hidden_path = tmp_path / "hidden.csv"
    hidden.write_csv(hidden_path)
    tree = kaggle_tree(results / "kaggle" / "cheap_heads", tmp_path / "run", {"test.csv": hidden_path})
    result, _, _ = run_notebook(tree)
    assert result.returncode == 0, result.stderr[-3000:]
    written = pl.read_csv(tree["working"] / "submission.csv", infer_schema=False)
    assert written["id"].to_list() == hidden["id"].to_list()  # no sample submission: the test file's order
    workflow = pl.read_csv(results / "submissions" / "cheap_heads" / "submission.csv", infer_schema=False)
    shared = written.join(workflow, on="id", how="inner", suffix="_workflow")
    assert shared.height == 15
    for column in [c for c in workflow.columns if c != "id"]:
        assert shared[column].to_list() == shared[f"{column}_workflow"].to_list(), column
    # the thresholds are what the workflow tuned, applied: the package carries them unchanged
    shipped = json.loads((tree["dataset"] / "thresholds" / "cheap.json").read_text())
    assert shipped == json.loads((results / "thresholds" / "cheap.json").read_text())


@pytest.mark.slow
def test_package_contents_metadata_plan_and_shared_base(debates_run):
    package = debates_run / "results" / "kaggle" / "cheap_heads"
    kernel = json.loads((package / "notebook" / "kernel-metadata.json").read_text())
    assert kernel["id"] == "me/cheap-submit" and kernel["enable_internet"] is False and kernel["enable_gpu"] is True
    assert kernel["dataset_sources"] == ["me/oofline-cheap"] and kernel["competition_sources"] == [COMPETITION]
    assert (package / "notebook" / kernel["code_file"]).exists()
    metadata = json.loads((package / "dataset" / "dataset-metadata.json").read_text())
    assert metadata["id"] == "me/oofline-cheap"
    # MiniLM's model card says apache-2.0 (never a hard-coded CC0); TF-IDF ships no third-party weights
    assert metadata["licenses"] == [{"name": "apache-2.0"}] and "minilm: apache-2.0" in metadata["description"]
    plan = json.loads((package / "plan.json").read_text())
    files = [path for path in (package / "dataset").rglob("*") if path.is_file()]
    assert plan["dataset_bytes"] == sum(path.stat().st_size for path in files)
    # the two embedding heads load one MiniLM: shipped once
    assert list(plan["bases"].values()) == [["minilm_cls", "minilm_embed"]]
    assert plan["bytes_saved_by_shared_bases"] > 50e6
    assert len(list((package / "dataset" / "bases").iterdir())) == 1
    shipped = json.loads((package / "dataset" / "oofline_package.json").read_text())
    assert sorted(shipped["models"]) == ["minilm", "minilm_cls", "minilm_embed", "tfidf"]
    # the versions it was built and tested with (the notebook compares the image's); the template column's type
    import transformers

    assert shipped["built_with"]["transformers"] == transformers.__version__ and "scikit-learn" in shipped["built_with"]
    assert shipped["columns"] == {"text": "String"}
    # the plan's load time counts the bytes each member reads from /kaggle/input
    assert plan["measured"]["minilm"]["bytes_read"] > 2 * 80e6 and plan["measured"]["minilm"]["shared_base"] is False
    assert plan["estimate"]["member_load_seconds"]["minilm"] >= plan["measured"]["minilm"]["bytes_read"] / 150e6
    assert sorted(shipped["models"]["minilm"]["splits"]) == ["fold0", "fold1"]
    # the batch sizes the shipped predictions were made with (their speed records; the config's at that time), not
    # a config value: a later batch-size change rebuilds no package and the notebook still predicts as the workflow did
    assert shipped["models"]["minilm"]["batch_sizes"] == {"fold0": 32, "fold1": 32}  # twice batch_size 16
    assert "predict_batch_size" not in shipped["models"]["minilm"]["config"]
    assert shipped["models"]["minilm_embed"]["config"]["embed_batch_size"] == 64
    assert (package / "dataset" / "wheels" / "oofline-0.1.0-py3-none-any.whl").exists()
    # over the time limit: one warning line naming the costliest members; the two kaggle commands printed
    log = (debates_run / "results" / "logs" / "kaggle" / "cheap_heads.log").read_text()
    warning = next(line for line in log.splitlines() if line.startswith("WARNING: kaggle cheap_heads"))
    assert "over the 0.01 h limit" in warning and plan["estimate"]["over_limit"] is True
    assert plan["estimate"]["costliest_members"][0] in warning
    assert f"kaggle datasets create -p {plan['commands'][0].split(' -p ')[1]}" in log
    assert "kaggle kernels push -p results/kaggle/cheap_heads/notebook" in log
    wheels = debates_run / "results" / "kaggle" / "stacked_heads" / "dataset" / "wheels"
    assert (wheels / "requirements.txt").read_text().splitlines() == ["oofline==0.1.0", "oofline-probe==1.2.3"]


@pytest.mark.slow
@pytest.mark.parametrize("key, value", [("time_limit_hours", 5), ("glibc", "2.35"), ("license", "other"),
                                        ("read_mb_per_second", 50)])
def test_a_kaggle_setting_reruns_only_the_package(debates_run, images, key, value):
    config = yaml.safe_load((debates_run / "config.yaml").read_text())
    config["kaggle"]["stacked_heads"][key] = value
    (debates_run / "changed.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(debates_run, images, "-n", "--configfile", str(debates_run / "changed.yaml"))
    assert result.returncode == 0, result.stderr[-2000:]
    rules = {line.split()[-1].rstrip(":") for line in result.stdout.splitlines()
             if line.startswith(("rule ", "localrule "))}
    assert rules == {"kaggle_package", "all"}, result.stdout[-2000:]


@pytest.mark.slow
def test_a_missing_speed_record_is_rebuilt_by_its_step_before_the_package_reads_it(debates_run, images):
    """The speed records the plan reads are declared outputs: one lost (a copy that skips dot-files) is remade by the
    step that writes it when the package next builds, instead of the package failing on it. (Snakemake leaves a
    missing intermediate alone while what reads it is up to date, as it does for temp() files.)"""
    record = debates_run / "results" / "predictions" / "tfidf" / "fold0" / ".test.parquet.speed.json"
    saved, stat = record.read_bytes(), record.stat()
    config = yaml.safe_load((debates_run / "config.yaml").read_text())
    config["kaggle"]["stacked_heads"]["time_limit_hours"] = 5
    (debates_run / "changed.yaml").write_text(yaml.safe_dump(config))
    record.unlink()
    try:
        result = snakemake(debates_run, images, "-n", "--configfile", str(debates_run / "changed.yaml"))
    finally:
        record.write_bytes(saved)
        os.utime(record, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert result.returncode == 0, result.stderr[-2000:]
    rules = {line.split()[-1].rstrip(":") for line in result.stdout.splitlines()
             if line.startswith(("rule ", "localrule "))}
    assert {"tfidf_linear_fold", "kaggle_package"} <= rules, result.stdout[-2000:]


# ---- bad input: each one clear line ----

@pytest.mark.slow
@pytest.mark.parametrize("drop, named", [("id", "id column 'id'"), ("text", "['text']")])
def test_a_test_file_without_its_id_or_text_column_is_one_line(debates_run, tmp_path, capsys, drop, named):
    from workflow_scripts.kaggle import inference

    public = pl.read_csv(debates_run / "results" / "demo" / "test.csv", infer_schema=False)
    broken = tmp_path / "test.csv"
    public.drop(drop).write_csv(broken)
    dataset = debates_run / "results" / "kaggle" / "stacked_heads" / "dataset"
    code = run_cli(inference.main, ["--package", str(dataset), "--test", str(broken), "--out-dir", str(tmp_path)])
    error = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in error and error.startswith("oofline error: ") and named in error
    assert not (tmp_path / "submission.csv").exists()


@pytest.mark.slow
def test_a_missing_member_is_one_line_when_building_and_when_running(debates_run, tmp_path, monkeypatch):
    from workflow_scripts import rule_params
    from workflow_scripts.config_check import check_config
    from workflow_scripts.kaggle.inference import load_package
    from workflow_scripts.kaggle.package import build_package

    monkeypatch.chdir(debates_run)
    config = check_config(yaml.safe_load((debates_run / "config.yaml").read_text()), debates_run)
    spec = rule_params.kaggle_package_spec(config, "results", "stacked_heads", ["packaged:minilm"])
    fold = debates_run / "results" / "models" / "minilm" / "fold1" / "model"
    fold.rename(fold.with_name("model.away"))
    try:
        with pytest.raises(OoflineError, match=r"member 'minilm' has no fold1 model at results/models/minilm/fold1/model"):
            build_package(spec, tmp_path / "dataset", tmp_path / "notebook", tmp_path / "plan.json")
    finally:
        fold.with_name("model.away").rename(fold)
    assert not (tmp_path / "dataset").exists()  # nothing half-written
    copied = tmp_path / "copied"
    shutil.copytree(debates_run / "results" / "kaggle" / "stacked_heads" / "dataset", copied)
    shutil.rmtree(copied / "models" / "tfidf" / "fold0")
    with pytest.raises(OoflineError, match=r"lacks \['models/tfidf/fold0/linear'\]"):
        load_package(copied)


@pytest.mark.slow
def test_a_package_ships_data_prepare_and_its_notebook_runs_it_on_the_raw_test(debates_run, tmp_path, monkeypatch):
    """The same members with a data.prepare function (raw `text` -> `statement`, the template's column): the package
    ships the function and the notebook's rows, prepared from the raw test, are the workflow's byte for byte."""
    from workflow_scripts import rule_params
    from workflow_scripts.config_check import check_config
    from workflow_scripts.kaggle import inference
    from workflow_scripts.kaggle.package import build_package

    monkeypatch.chdir(debates_run)
    config = yaml.safe_load((debates_run / "config.yaml").read_text())
    config["data"]["prepare"] = "tests/fixtures/debates_prepare.py:statements"  # found in the checkout
    config["task"]["text_template"] = "{statement}"
    config = check_config(config, debates_run)
    spec = rule_params.kaggle_package_spec(config, "results", "stacked_heads", ["packaged:minilm"])
    build_package(spec, tmp_path / "dataset", tmp_path / "notebook", tmp_path / "plan.json")
    shipped = json.loads((tmp_path / "dataset" / "oofline_package.json").read_text())["prepare"]
    assert (tmp_path / "dataset" / shipped["file"]).read_text() == (REPO / "tests/fixtures/debates_prepare.py").read_text()
    demo = debates_run / "results" / "demo"
    inference.main(["--package", str(tmp_path / "dataset"), "--test", str(demo / "test.csv"), "--sample-submission",
                    str(demo / "sample_submission.csv"), "--out-dir", str(tmp_path / "out")])
    assert filecmp.cmp(tmp_path / "out" / "submission.csv",
                       debates_run / "results" / "submissions" / "stacked_heads" / "submission.csv", shallow=False)


def test_unknown_accelerator_and_unknown_package_name_are_config_lines(tmp_path):
    from workflow_scripts.config_check import check_config

    base = dict(DEBATES)
    settings = {"competition": COMPETITION, "dataset": "me/a-dataset", "kernel": "me/a-kernel"}
    with pytest.raises(OoflineError) as error:
        check_config(dict(base, kaggle={"stacked_heads": dict(settings, accelerator="v100")}), tmp_path)
    assert str(error.value).count("\n") == 0 and "kaggle.stacked_heads.accelerator" in str(error.value)
    assert "'v100'" in str(error.value)
    with pytest.raises(OoflineError, match=r"^config: kaggle.nothing: no submission or register: record is called"):
        check_config(dict(base, kaggle={"nothing": settings}), tmp_path)


def test_plan_over_the_limit_names_the_costliest_members():
    from workflow_scripts.kaggle.plan import estimate, summary_line

    record = {"rows": 100, "tokens": 5000, "seconds": 10.0, "load_seconds": 2.0, "device_name": "cpu", "threads": 4}
    members = {"big": {"kind": "decoder_lora", "speeds": {"fold0": dict(record, seconds=100.0)}, "embed_speed": None},
               "small": {"kind": "encoder_full", "speeds": {"fold0": record}, "embed_speed": None}}
    plan = estimate(members, 100_000, "t4x2", 4, 1.0)
    # on a T4 (325 thread units) 100k rows of the CPU-measured 4-thread run: 1000x the work at 81x the speed
    assert plan["member_seconds"]["big"] == pytest.approx(2 + 100 * 1000 / (65 * 5 / 4))
    line = summary_line("demo", dict(plan, time_limit_seconds=60.0, over_limit=True))
    assert line.startswith("WARNING: kaggle demo:") and "costliest members: big" in line and "\n" not in line


def test_oofline_wheel_is_reproducible_and_installs_offline(tmp_path):
    from workflow_scripts.kaggle.wheels import build_oofline_wheel

    first, second = build_oofline_wheel(tmp_path / "a"), build_oofline_wheel(tmp_path / "b")
    assert first.read_bytes() == second.read_bytes()
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
                             "--find-links", str(first.parent), "--target", str(tmp_path / "site"), "oofline==0.1.0"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "site" / "workflow_scripts" / "kaggle" / "inference.py").exists()


def test_package_spec_ships_adapters_with_their_base_or_merged_models_alone(tmp_path):
    from movies_workflow import TWO_MODELS_AND_A_SUBMISSION

    from workflow_scripts import rule_params
    from workflow_scripts.config_check import check_config

    settings = {"competition": "movies-demo", "dataset": "me/movies-pair", "kernel": "me/movies-pair-submit"}
    for members, folder, base in (("adapter", "adapter", "results/models/qlora/base"), ("merged", "merged", None)):
        config = check_config(dict(TWO_MODELS_AND_A_SUBMISSION, kaggle={"pair_top3": dict(settings, members=members)}),
                              tmp_path)
        spec = rule_params.kaggle_package_spec(config, "results", "pair_top3", ["tiny:llama"])
        assert spec["models"]["qlora"]["splits"] == {f"fold{k}": f"results/models/qlora/fold{k}/{folder}" for k in (0, 1)}
        assert spec["models"]["qlora"]["base"] == base
        # a full fine-tune's fold folders hold the whole model: no base either way
        assert spec["models"]["full"]["base"] is None
        assert spec["ensembles"] == {"pair": "results/ensembles/pair/weights.json"}
        inputs = rule_params.kaggle_package_inputs(spec, ["tiny:llama"])
        assert ("results/models/qlora/base" in inputs) == (members == "adapter")

