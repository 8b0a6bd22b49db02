"""The staleness table (docs/reruns.md is generated from these rows by `make docs`): on a finished run, change
one key and assert the exact set of jobs `snakemake -n` plans. Resources, logging, checkpointing and inference batch sizes plan
nothing; a key that a model reads plans that model's chain from the first step that reads it; a key that
its kind does not have is a config error; ensemble, threshold and submission keys plan their own job and
what reads it.

One finished tiny run is the shared fixture (a model of every kind, three ensembles, thresholds, two
submissions); every row is then a dry run of the real Snakefile, in this process (no interpreter start
per row), restoring the config after each.
"""
from __future__ import annotations

import copy
import logging
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

from workflow_scripts.config_check import check_config
from workflow_scripts.errors import OoflineError
from workflow_scripts.model_spec import SPEC_BY_KIND, kind_keys

REPO = Path(__file__).resolve().parent.parent
FOLDS = (0, 1)
CONFIG = {
    "demo": {"dataset": "debates", "n_train": 80, "n_test": 20, "seed": 0},
    "data": {"train": "results/demo/train.csv", "test": "results/demo/test.csv",
             "sample_submission": "results/demo/sample_submission.csv"},
    "task": {"type": "multihead", "text_template": "{text}", "metric": "mean_f1",
             "heads": [{"name": "is_democrat", "type": "binary"}, {"name": "is_question", "type": "binary"},
                       {"name": "debate", "type": "multiclass"}]},
    "folds": {"scheme": "multilabel_stratified", "n_folds": len(FOLDS), "seed": 1},
    "model_defaults": {"max_length": 32, "epochs": 1, "batch_size": 8, "resources": {"threads": 1}},
    "models": {
        "tfidf": {"kind": "tfidf_linear", "word_ngrams": [1, 2], "char_ngrams": [2, 4]},
        "embed": {"kind": "embedding_head", "source": "tiny:llama", "pooling": "last"},
        "full": {"kind": "encoder_full", "source": "tiny:llama", "lr": 1e-3},
        "lora": {"kind": "encoder_lora", "source": "tiny:llama", "lr": 2e-3, "r": 4, "alpha": 8},
        "qlora": {"kind": "decoder_lora", "source": "tiny:llama", "lr": 2e-3, "r": 4, "alpha": 8, "quantization": "4bit"},
        # a sweep (docs/sweeps.md): sweep_tfidf.C0.5.seed1 ... and the seeds' means sweep_tfidf.C0.5, sweep_tfidf.C4
        "sweep_tfidf": {"kind": "tfidf_linear", "grid": {"C": [0.5, 4.0]}, "seeds": [1, 2]},
    },
    "ensembles": {
        "blend": {"members": {"full": 1.0, "qlora": 0.5}, "method": "mean"},
        "searched": {"members": ["tfidf", "embed", "lora"], "method": "search"},
        "stacked": {"members": ["tfidf", "embed"], "method": "stack"},
        # a weight-ratio sweep over the model sweep's variants: ratio_sweep.sweep_tfidf.C4_w1, ..._w2
        "ratio_sweep": {"members": ["sweep_tfidf.C0.5", "sweep_tfidf.C4"], "grid": {"weights": {"sweep_tfidf.C4": [1, 2]}}},
    },
    "thresholds": {"blend": {"method": "hybrid", "weight": 0.5}},
    "submissions": {"blend_labels": {"source": "blend", "format": "labels", "thresholds": True},
                    "tfidf_labels": {"source": "tfidf", "format": "labels"},
                    "searched_labels": {"source": "searched", "format": "labels"}},
    # a frozen record (verified in the fixture: its rebuild is the cheap TF-IDF chain) and a Kaggle package whose
    # members predict with batch sizes (lora) and embed with one (embed)
    "register": {"frozen-tfidf": "tfidf_labels"},
    "registry_dir": "records",
    "kaggle": {"searched_labels": {"competition": "debates-demo", "dataset": "me/searched", "kernel": "me/searched-submit",
                                   "accelerator": "cpu", "cpu_threads": 1}},
}
# the graph above, written out: the ensembles each model is a member of, the submission of each source, the packages
ENSEMBLES_OF = {"tfidf": {"searched", "stacked"}, "embed": {"searched", "stacked"}, "full": {"blend"},
                "lora": {"searched"}, "qlora": {"blend"}}
SUBMISSION_OF = {"blend": "blend_labels", "tfidf": "tfidf_labels", "searched": "searched_labels"}
PACKAGED = set(CONFIG["kaggle"])
TRAIN_RULE = {"encoder_full": "train_all_weights", "encoder_lora": "train_adapter", "decoder_lora": "train_adapter"}


def job(rule: str, **wildcards: str) -> tuple[str, frozenset]:
    return rule, frozenset(f"{key}={value}" for key, value in wildcards.items())


REPORTS = {job("leaderboard"), job("leaderboard_html"), job("plot_cv_lb"), job("all")}


def after_source(source: str) -> set:
    """An ensemble's or a model's OOF changed: what reads it, down to the reports (the per-fold CV plot
    shows models, the ensembles plot ensembles)."""
    if source in CONFIG["ensembles"]:
        jobs = REPORTS | {job("ensemble", ensemble=source), job("plot_ensembles")}
    else:
        jobs = REPORTS | {job("plot_cv_folds")}
    if source in CONFIG["thresholds"]:
        jobs |= {job("thresholds", source=source), job("plot_thresholds", source=source)}
    if source in SUBMISSION_OF:
        jobs |= submission_jobs(SUBMISSION_OF[source])
    return jobs


def submission_jobs(name: str) -> set:
    """A submission's job and, when it is packaged, its Kaggle package (built from its artifacts). Never the record
    frozen from it nor that record's verification: a record is written once."""
    return {job("submission", submission=name)} | ({job("kaggle_package", submission=name)} if name in PACKAGED else set())


def after_oof(model: str) -> set:
    jobs = {job("oof", model=model)} | after_source(model)
    for ensemble in ENSEMBLES_OF[model]:
        jobs |= after_source(ensemble)
    return jobs


def chain(model: str, first: str) -> set:
    """The jobs of `model` from its first stale step (prepare, train, predict, embed, fit, oof) on."""
    kind = CONFIG["models"][model]["kind"]
    steps = {"tfidf_linear": ["fit"], "embedding_head": ["prepare", "embed", "fit"]}.get(kind, ["prepare", "train", "predict"])
    jobs = after_oof(model)
    for step in steps[steps.index(first):] if first != "oof" else []:
        if step == "prepare":
            jobs.add(job("prepare_model", model=model))
        elif step == "embed":
            jobs.add(job("embed_texts", model=model))
        else:
            rule = {"fit": "tfidf_linear_fold" if kind == "tfidf_linear" else "embedding_head_fold",
                    "train": TRAIN_RULE.get(kind), "predict": "predict_fold"}[step]
            jobs |= {job(rule, model=model, split=f"fold{k}") for k in FOLDS}
    return jobs


def merged(model: str) -> set:
    return {job("merge_adapter", model=model, split=f"fold{k}") for k in FOLDS}


NOTHING: set = set()
# every key of every kind: a value different from the fixture's, and what it reruns (a function of the model)
MODEL_KEYS = {
    # every kind
    "seed": (7, lambda m: chain(m, "fit" if m == "tfidf" else "prepare")),  # tiny:llama bases are seeded
    "folds": ([0], lambda m: after_oof(m)),  # fewer folds: the OOF and what reads it; no fold model retrains
    # tfidf_linear
    "word_ngrams": ([1, 1], lambda m: chain(m, "fit")),
    "char_ngrams": (None, lambda m: chain(m, "fit")),
    "min_df": (2, lambda m: chain(m, "fit")),
    "max_features": (500, lambda m: chain(m, "fit")),
    "sublinear_tf": (False, lambda m: chain(m, "fit")),
    "C": (0.5, lambda m: chain(m, "fit")),
    "max_iter": (200, lambda m: chain(m, "fit")),
    # every kind that loads a transformer
    "source": ("packaged:minilm", lambda m: chain(m, "prepare")),
    "trust_remote_code": (True, lambda m: chain(m, "embed" if m == "embed" else "train")),
    "precision": ("bf16", lambda m: chain(m, "embed" if m == "embed" else "train")),
    "attn_implementation": ("eager", lambda m: chain(m, "embed" if m == "embed" else "train")),
    "max_length": (48, lambda m: chain(m, "embed" if m == "embed" else "train")),
    # embedding_head
    "pooling": ("mean", lambda m: chain(m, "embed")),
    # the Kaggle package of `searched` (embed, lora) included: it ships the batch sizes its predictions were made with
    "embed_batch_size": (4, lambda m: NOTHING),
    # fine-tunes
    "lr": (5e-3, lambda m: chain(m, "train")),
    "scheduler": ("cosine", lambda m: chain(m, "train")),
    "warmup_ratio": (0.1, lambda m: chain(m, "train")),
    "weight_decay": (0.01, lambda m: chain(m, "train")),
    "label_smoothing": (0.1, lambda m: chain(m, "train")),
    "max_grad_norm": (0.5, lambda m: chain(m, "train")),
    "epochs": (2, lambda m: chain(m, "train")),
    "select_epoch": ("best", lambda m: chain(m, "train")),
    "batch_size": (4, lambda m: chain(m, "train")),
    "grad_accum": (2, lambda m: chain(m, "train")),
    "stages": ([{"epochs": 1, "data": ["official"]}], lambda m: chain(m, "train")),
    "extra_data": ({"extra": "extra.parquet"}, lambda m: chain(m, "train")),
    # with `label_correction: {tfidf: {nested: false}}` (TOP_LEVEL): trains on tfidf's corrected labels
    "corrected_by": ("tfidf", lambda m: chain(m, "train") | {job("label_correction", model="tfidf")}),
    "predict_batch_size": (4, lambda m: NOTHING),
    "log_every": (1, lambda m: NOTHING),
    "checkpoint_every": (5, lambda m: NOTHING),
    "gradient_checkpointing": (False, lambda m: NOTHING),
    # only adds the full-data model; test predictions stay the fold models' mean
    "train_full": (True, lambda m: {job(TRAIN_RULE[CONFIG["models"][m]["kind"]], model=m, split="full"), job("all")}),
    # LoRA
    "quantization": ("8bit", lambda m: chain(m, "train")),
    "r": (8, lambda m: chain(m, "train")),
    "alpha": (16, lambda m: chain(m, "train")),
    "dropout": (0.1, lambda m: chain(m, "train")),
    "target_modules": (["q_proj", "v_proj"], lambda m: chain(m, "train")),
    "merge": (True, lambda m: merged(m) | {job("all")}),  # export copies of the adapters; nothing reads them
}
# keys that need another one set with them: (the change, what it reruns)
JOINT_CHANGES = {
    "test_predictions": ({"train_full": True, "test_predictions": "full"},
                         lambda m: chain(m, "train") - {job(TRAIN_RULE[CONFIG["models"][m]["kind"]], model=m, split=f"fold{k}")
                                                        for k in FOLDS} - {job("predict_fold", model=m, split=f"fold{k}") for k in FOLDS}
                         | {job(TRAIN_RULE[CONFIG["models"][m]["kind"]], model=m, split="full"),
                            job("predict_fold", model=m, split="full")}),
}
# what a key needs elsewhere in the config
TOP_LEVEL = {"corrected_by": {"label_correction": {"tfidf": {"nested": False}}}}  # tfidf has no inner fold models
RESOURCES = {"mem_mb": 9000, "runtime": 240, "threads": 2, "gpu_model": "h100", "cpus_per_gpu": 4,
             "slurm_partition": "gpu", "slurm_account": "lab"}


def model_rows():
    """(row id, config edit, expected jobs): every key of every model's kind, every resource key (a sweep's
    models have SWEEP_ROWS)."""
    rows = []
    for model, entry in CONFIG["models"].items():
        if model in SWEEPS:
            continue
        for key in kind_keys(entry["kind"]):
            if key in ("kind", "resources"):
                continue
            if key in JOINT_CHANGES:
                change, expected = JOINT_CHANGES[key]
            else:
                value, expected = MODEL_KEYS[key]
                change = {key: value}
            rows.append((f"models.{model}.{key}", {"models": {model: change}, **TOP_LEVEL.get(key, {})}, expected(model)))
        # with `merge` unset, a LoRA model on a GPU also builds merged/ export copies (nothing reruns)
        for key, value in (("gpu", 1), ("gres", "gpu:a100:1")):
            rows.append((f"models.{model}.resources.{key}", {"models": {model: {"resources": {key: value}}}},
                         merged(model) | {job("all")} if SPEC_BY_KIND[entry["kind"]].is_lora else NOTHING))
        # the other resource keys together: a change that plans nothing has no part that plans something (nor
        # re-freezes the record of tfidf_labels, nor rebuilds it for verify)
        rows.append((f"models.{model}.resources.other", {"models": {model: {"resources": RESOURCES}}}, NOTHING))
    return rows


def chains(*models: str, first: str = "train") -> set:
    return set().union(*(chain(m, first) for m in models))


def submitted(name: str) -> set:
    """A submission's own job (and package), and the leaderboard that reads its manifest."""
    return submission_jobs(name) | {job("leaderboard"), job("leaderboard_html"), job("plot_cv_lb"), job("all")}


SHARED_ROWS = [
    # model_defaults: each model gets the keys its kind has
    ("model_defaults.dropout", {"model_defaults": {"dropout": 0.1}}, chains("lora", "qlora")),
    ("model_defaults.quantization", {"model_defaults": {"quantization": "8bit"}}, chains("lora")),  # qlora sets its own
    ("model_defaults.C", {"model_defaults": {"C": 0.5}}, chain("tfidf", "fit") | chain("embed", "fit")),
    ("model_defaults.max_length", {"model_defaults": {"max_length": 48}},
     chains("full", "lora", "qlora") | chain("embed", "embed")),
    ("model_defaults.lr", {"model_defaults": {"lr": 1e-2}}, NOTHING),  # every fine-tune sets its own
    ("model_defaults.log_every", {"model_defaults": {"log_every": 1, "checkpoint_every": 2, "predict_batch_size": 2,
                                                     "embed_batch_size": 2, "gradient_checkpointing": False}}, NOTHING),
    ("model_defaults.resources", {"model_defaults": {"resources": {"threads": 2, "mem_mb": 6000, "runtime": 60,
                                                                   "slurm_partition": "gpu", "cpus_per_gpu": 2}}}, NOTHING),
    # ensembles
    ("ensembles.blend.members", {"ensembles": {"blend": {"members": {"full": 1.0, "qlora": 1.0}}}}, after_source("blend")),
    ("ensembles.blend.method", {"ensembles": {"blend": {"method": "rank"}}}, after_source("blend")),
    ("ensembles.searched.blend", {"ensembles": {"searched": {"blend": "rank"}}}, after_source("searched")),
    ("ensembles.searched.member_top_k", {"ensembles": {"searched": {"member_top_k": 2}}}, after_source("searched")),
    ("ensembles.stacked.C", {"ensembles": {"stacked": {"C": 0.5}}}, after_source("stacked")),
    ("ensembles.stacked.blend", {"ensembles": {"stacked": {"blend": "rank"}}}, after_source("stacked")),
    # accepted for compatibility and read by nothing (the task metric and the submissions' top_k are)
    ("ensembles.blend.top_k", {"ensembles": {"blend": {"top_k": 2}}}, NOTHING),
    ("ensembles.blend.metric", {"ensembles": {"blend": {"metric": "accuracy"}}}, NOTHING),
    # thresholds: the thresholds, their plot and the submission that applies them
    *[(f"thresholds.blend.{key}", {"thresholds": {"blend": {key: value}}},
       {job("thresholds", source="blend"), job("plot_thresholds", source="blend")} | submitted("blend_labels"))
      for key, value in (("method", "exact"), ("weight", 0.3), ("target_rates", {"is_democrat": 0.4}),
                         ("probe_f1", {"is_democrat": 0.6}))],
    # submissions
    ("submissions.tfidf_labels.source", {"submissions": {"tfidf_labels": {"source": "embed"}}}, submitted("tfidf_labels")),
    ("submissions.tfidf_labels.format", {"submissions": {"tfidf_labels": {"format": "argmax"}}}, submitted("tfidf_labels")),
    ("submissions.tfidf_labels.id_column", {"submissions": {"tfidf_labels": {"id_column": "row"}}},
     submitted("tfidf_labels")),
    ("submissions.tfidf_labels.prediction_columns",
     {"submissions": {"tfidf_labels": {"prediction_columns": ["a", "b", "c"]}}}, submitted("tfidf_labels")),
    ("submissions.blend_labels.thresholds", {"submissions": {"blend_labels": {"thresholds": False}}},
     submitted("blend_labels")),
    # a package's settings rebuild the package alone (never the submission nor the record)
    ("kaggle.searched_labels.accelerator", {"kaggle": {"searched_labels": {"accelerator": "t4x2"}}},
     {job("kaggle_package", submission="searched_labels"), job("all")}),
    # the registry: a new record is frozen and verified; the frozen one stays as it is
    ("register.new", {"register": {"frozen-blend": "blend_labels"}},
     {job("register_submission", record="frozen-blend"), job("verify_submission", record="frozen-blend"), job("all")}),
    ("competition", {"competition": "results"}, NOTHING),  # its default (output_dir), written out
]


# ---- sweeps: a grid value, a seed or a weight ratio added plans only the new variant's jobs ----

SWEEPS = {"sweep_tfidf", "ratio_sweep"}
SWEEP_C, SWEEP_SEEDS = (0.5, 4.0), (1, 2)


def sweep_reports(*sweeps: str) -> set:
    """A sweep's table changed: its figure and the leaderboard that reads the table."""
    return REPORTS | {job(rule, sweep=name) for name in sweeps for rule in ("sweep_table", "plot_sweep")}


def seed_models(c: str, seeds=SWEEP_SEEDS) -> set:
    """The per-seed models of variant sweep_tfidf.C<c>: their fold fits and OOF."""
    jobs = set()
    for seed in seeds:
        model = f"sweep_tfidf.C{c}.seed{seed}"
        jobs |= {job("tfidf_linear_fold", model=model, split=f"fold{k}") for k in FOLDS} | {job("oof", model=model)}
    return jobs


RATIO_VARIANTS = {job("ensemble", ensemble=f"ratio_sweep.sweep_tfidf.C4_w{w}") for w in (1, 2)}
SWEEP_ROWS = [
    # a third C: only the new variant's seeds, their mean, the sweep's table; the ratio sweep names other variants
    ("models.sweep_tfidf.grid.C (a value added)", {"models": {"sweep_tfidf": {"grid": {"C": [0.5, 4.0, 1.0]}}}},
     seed_models("1") | {job("ensemble", ensemble="sweep_tfidf.C1"), job("plot_cv_folds"), job("plot_ensembles")}
     | sweep_reports("sweep_tfidf")),
    # a third seed: each variant's new seed model, each variant's mean, and the ensembles over those means
    ("models.sweep_tfidf.seeds (a seed added)", {"models": {"sweep_tfidf": {"seeds": [1, 2, 3]}}},
     seed_models("0.5", [3]) | seed_models("4", [3]) | RATIO_VARIANTS
     | {job("ensemble", ensemble=f"sweep_tfidf.C{c}") for c in ("0.5", "4")}
     | {job("plot_cv_folds"), job("plot_ensembles")} | sweep_reports("sweep_tfidf", "ratio_sweep")),
    # how the best variant is picked changes the table only
    ("models.sweep_tfidf.select", {"models": {"sweep_tfidf": {"select": "nested"}}}, sweep_reports("sweep_tfidf")),
    # a third weight ratio: one more ensemble
    ("ensembles.ratio_sweep.grid.weights (a value added)",
     {"ensembles": {"ratio_sweep": {"grid": {"weights": {"sweep_tfidf.C4": [1, 2, 3]}}}}},
     {job("ensemble", ensemble="ratio_sweep.sweep_tfidf.C4_w3"), job("plot_ensembles")} | sweep_reports("ratio_sweep")),
]


def merged_config(edit: dict) -> dict:
    def merge(base, override):
        for key, value in override.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                merge(base[key], value)
            else:
                base[key] = copy.deepcopy(value)
        return base

    return merge(copy.deepcopy(CONFIG), edit)


def describe(jobs: set) -> list[str]:
    return sorted(f"{rule}[{','.join(sorted(wildcards))}]" for rule, wildcards in jobs)


def test_the_table_has_a_row_for_every_key_of_every_kind():
    rows = {row for row, _, _ in model_rows()}
    for model, entry in CONFIG["models"].items():
        if model not in SWEEPS:
            assert {f"models.{model}.{key}" for key in kind_keys(entry["kind"]) if key not in ("kind", "resources")} <= rows
    every_key = {key for spec in SPEC_BY_KIND.values() for key in spec.keys()} - {"kind", "resources"}
    assert set(MODEL_KEYS) | set(JOINT_CHANGES) == every_key
    # a model sweep's grid, seeds and select, an ensemble sweep's grid (variants are grid rows with labels)
    assert {row.split(" (")[0] for row, _, _ in SWEEP_ROWS} == {
        "models.sweep_tfidf.grid.C", "models.sweep_tfidf.seeds", "models.sweep_tfidf.select",
        "ensembles.ratio_sweep.grid.weights"}


# ---- the finished run and dry runs in this process ----


def snakemake_run(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
               "--cores", "2", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=workdir, timeout=1200)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("staleness")
    (workdir / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    result = snakemake_run(workdir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # extra training rows that an `extra_data` row names (soft targets over the label columns)
    labels = pl.read_parquet(workdir / "results" / "targets.parquet")
    texts = pl.read_parquet(workdir / "results" / "data" / "train.parquet").select("text").head(8)
    texts.hstack(labels.drop("id").head(8)).write_parquet(workdir / "extra.parquet")
    return workdir


class PlannedJobs(logging.Handler):
    """Collects the (rule, wildcards) of every job a dry run logs."""

    def __init__(self):
        super().__init__()
        self.jobs = set()

    def emit(self, record):
        if str(getattr(record, "event", "")) == "job_info":
            self.jobs.add(job(record.rule_name, **{k: str(v) for k, v in (record.wildcards or {}).items()}))


def planned_jobs(workdir: Path, config: dict) -> set:
    """The jobs `snakemake -n` plans in `workdir` with `config`, from a dry run of the real Snakefile in this
    process (config.yaml is written for the run and restored after)."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.enums import Quietness
    from snakemake.settings.types import (ConfigSettings, DAGSettings, ExecutionSettings, OutputSettings,
                                          ResourceSettings, StorageSettings)

    config_path = workdir / "config.yaml"
    original = config_path.read_text()
    config_path.write_text(yaml.safe_dump(config))
    collector = PlannedJobs()
    logger = logging.getLogger("snakemake")
    logger.addHandler(collector)
    cwd = os.getcwd()
    try:
        with SnakemakeApi(OutputSettings(quiet={Quietness.PROGRESS, Quietness.HOST})) as api:
            workflow = api.workflow(resource_settings=ResourceSettings(cores=1),
                                    config_settings=ConfigSettings(configfiles=[config_path]),
                                    storage_settings=StorageSettings(), snakefile=REPO / "Snakefile", workdir=workdir)
            workflow.dag(DAGSettings()).execute_workflow(executor="local", pseudo_executor="dryrun",
                                                         execution_settings=ExecutionSettings())
    finally:
        logger.removeHandler(collector)
        os.chdir(cwd)
        config_path.write_text(original)
    return collector.jobs


@pytest.mark.slow
def test_a_finished_run_plans_nothing(finished_run):
    assert describe(planned_jobs(finished_run, CONFIG)) == []


@pytest.mark.slow
@pytest.mark.parametrize("edit, expected", [pytest.param(edit, expected, id=row)
                                            for row, edit, expected in model_rows() + SHARED_ROWS + SWEEP_ROWS])
def test_a_change_plans_exactly_its_jobs(finished_run, edit, expected):
    assert describe(planned_jobs(finished_run, merged_config(edit))) == describe(expected)


KEY_VALUES = {**{key: value for key, (value, _) in MODEL_KEYS.items()}, "test_predictions": "full"}


def test_a_key_its_kind_has_not_is_one_config_line_naming_model_and_key():
    for model, entry in CONFIG["models"].items():
        for key in sorted(set(KEY_VALUES) - set(kind_keys(entry["kind"]))):
            with pytest.raises(OoflineError) as error:
                check_config(merged_config({"models": {model: {key: KEY_VALUES[key]}}}), REPO)
            assert str(error.value).startswith(f"config: models.{model}.{key}: {entry['kind']} models have no {key} "
                                               "(a key of "), str(error.value)


@pytest.mark.parametrize("edit, expected", [
    ({"ensembles": {"blend": {"C": 0.5}}}, "config: ensembles.blend.C: a key of stack ensembles (this one's method is mean)"),
    ({"ensembles": {"blend": {"blend": "rank"}}},
     "config: ensembles.blend.blend: a key of search and stack ensembles (this one's method is mean)"),
    ({"submissions": {"tfidf_labels": {"top_k": 2}}},
     "config: submissions.tfidf_labels.top_k: a key of top_k submissions (this one's format is labels)"),
    ({"submissions": {"tfidf_labels": {"separator": ","}}},
     "config: submissions.tfidf_labels.separator: a key of top_k and joined submissions (this one's format is labels)"),
])
def test_an_ensemble_or_submission_key_its_method_or_format_does_not_read_is_an_error(edit, expected):
    with pytest.raises(OoflineError) as error:
        check_config(merged_config(edit), REPO)
    assert str(error.value) == expected


@pytest.mark.slow
def test_the_error_ends_the_dry_run_before_any_job(finished_run):
    config_path = finished_run / "config.yaml"
    config_path.write_text(yaml.safe_dump(merged_config({"models": {"tfidf": {"r": 4}}})))
    try:
        result = snakemake_run(finished_run, "-n")
    finally:
        config_path.write_text(yaml.safe_dump(CONFIG))
    assert result.returncode == 1 and "rule " not in result.stdout
    assert result.stderr.strip().splitlines()[-1] == (
        "oofline error: config: models.tfidf.r: tfidf_linear models have no r (a key of encoder_lora, decoder_lora)")


# ---- what each stage trains on, and records of two competitions in one checkout ----


@pytest.mark.slow
def test_swapping_the_files_of_two_extra_data_names_retrains_that_model(finished_run):
    """A stage trains on extra data sets by name: pointing two names at each other's files changes what each stage
    learns from, so the model retrains, although the set of input files is the same."""
    second = finished_run / "extra_b.parquet"
    pl.read_parquet(finished_run / "extra.parquet").head(4).write_parquet(second)
    stages = [{"epochs": 1, "data": ["a", "official"]}, {"epochs": 1, "data": ["official"]}]
    trained = merged_config({"models": {"full": {"extra_data": {"a": "extra.parquet", "b": "extra_b.parquet"},
                                                 "stages": stages}}})
    swapped = merged_config({"models": {"full": {"extra_data": {"a": "extra_b.parquet", "b": "extra.parquet"},
                                                 "stages": stages}}})
    config_path = finished_run / "config.yaml"
    try:
        # the state after training with `trained`, recorded without training (--touch keeps params and mtimes)
        config_path.write_text(yaml.safe_dump(trained))
        touched = snakemake_run(finished_run, "--touch")
        assert touched.returncode == 0, touched.stderr[-3000:]
        assert describe(planned_jobs(finished_run, trained)) == []
        assert describe(planned_jobs(finished_run, swapped)) == describe(chain("full", "train"))
    finally:
        config_path.write_text(yaml.safe_dump(CONFIG))
        restored = snakemake_run(finished_run, "--touch")
        assert restored.returncode == 0, restored.stderr[-3000:]
    assert describe(planned_jobs(finished_run, CONFIG)) == []


OTHER_COMPETITION = {
    "competition": "movies-reviews", "output_dir": "results_movies", "registry_dir": "records",
    "demo": {"dataset": "movies", "n_train": 60, "n_test": 20, "seed": 0},
    "data": {"train": "results_movies/demo/train.csv", "test": "results_movies/demo/test.csv",
             "sample_submission": "results_movies/demo/sample_submission.csv"},
    "task": {"type": "multiclass", "text_template": "Review: {text}", "label_column": "category", "metric": "map@3"},
    "folds": {"scheme": "stratified_group", "group_column": "movie_name", "n_folds": 2, "seed": 1},
    "models": {"tfidf": {"kind": "tfidf_linear", "resources": {"threads": 1}}},
    "submissions": {"top3": {"source": "tfidf", "format": "top_k", "top_k": 3, "prediction_columns": ["category"]}},
    "register": {"movies-lb": "top3"},
}


@pytest.mark.slow
def test_two_competitions_in_one_checkout_never_verify_each_others_records(finished_run):
    """The fixture's config (competition: its output folder, `results`) and a movies config (competition
    movies-reviews) share one registry folder: each config's `all` verifies its own records and leaves the other's
    alone, saying so in its log."""
    other = finished_run / "movies.yaml"
    other.write_text(yaml.safe_dump(OTHER_COMPETITION))
    # the target before --configfile, which would read it as a second config file
    frozen = snakemake_run(finished_run, "records/movies-lb.yaml", "--configfile", str(other))
    assert frozen.returncode == 0, frozen.stderr[-3000:]
    records = finished_run / "records"
    assert yaml.safe_load((records / "movies-lb.yaml").read_text())["competition"] == "movies-reviews"
    assert yaml.safe_load((records / "frozen-tfidf.yaml").read_text())["competition"] == "results"
    assert (finished_run / "results" / "verify" / "frozen-tfidf.ok").exists()  # the fixture verified its own

    # the movies config verifies its record, not the fixture's, and lists that one as left alone
    plan = snakemake_run(finished_run, "--configfile", str(other), "-n")
    assert plan.returncode == 0, plan.stderr[-3000:]
    verified = {line.split("record=")[1] for line in plan.stdout.splitlines() if "wildcards: record=" in line}
    assert verified == {"movies-lb"}, plan.stdout[-3000:]
    assert ("records: 1 record(s) of other competitions left alone (this config's competition is 'movies-reviews'): "
            "frozen-tfidf (results)") in plan.stdout + plan.stderr
    # the fixture's config plans nothing: the movies record is not its competition's
    assert describe(planned_jobs(finished_run, CONFIG)) == []
    # and a config that registers a name another competition's record holds is stopped before any job
    clash = merged_config({"register": {"movies-lb": "tfidf_labels"}})
    with pytest.raises(OoflineError, match=r"^config: register.movies-lb: records/movies-lb.yaml is a record of "
                                           r"competition 'movies-reviews', not this config's 'results'"):
        check_config(clash, finished_run)
