# Shared by every rule file: config validation, wildcard constraints, input, params and resource functions.
# What params hold (flags, the ensemble graph, manifest slices) is built in workflow_scripts/rule_params.py;
# the functions here only pick the config section for a job's wildcards.
import functools
import json
import os
import re
import sys
from pathlib import Path

sys.path.insert(0, workflow.basedir)
# jobs run `python -m workflow_scripts...` from the working directory, which may be elsewhere (-d)
# (once: a nested run, such as a record's rebuild, keeps the same PYTHONPATH, so its jobs share a warm-start server)
if workflow.basedir not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [workflow.basedir, os.environ.get("PYTHONPATH")]))

from workflow_scripts.execution.code_version import code_digest  # rules pass it as a param: editing a step reruns it
from workflow_scripts.execution.planning import cache_function_signatures

# Snakemake reads the signature of every input, param and resource function once per job: a large sweep's plan
# spent a quarter of its time there (bench/dag.py --sweep)
cache_function_signatures()
from workflow_scripts.execution.failures import print_user_errors  # the Snakefile's onerror

RUN_STARTED = __import__("time").time()  # logs written since then belong to this run
from workflow_scripts.config_check import checked_config_and_sweeps
from workflow_scripts import sweeps
from workflow_scripts.errors import OoflineError
from workflow_scripts.model_spec import EMBED, FIT, MERGE, PREDICT, TRAIN, ModelSpec
from workflow_scripts import registry, rule_params
from workflow_scripts.rule_params import cli_flags
from workflow_scripts.generated import teacher_labels

try:
    # sweeps (grids, seeds, ensemble subsets) expand into ordinary models and ensembles here, before any rule
    # reads the config; SWEEPS keeps each sweep's variants for its table
    _checked, SWEEPS = checked_config_and_sweeps(config, base_dir=Path.cwd())
    config.update(_checked)
except OoflineError as error:
    # the problem lines alone, as the last output: no Snakemake frame around them, and nothing runs
    print(f"oofline error: {error}", file=sys.stderr)
    raise SystemExit(1)

OUT = config["output_dir"]


def speed_record(path):
    """The speed record a prediction step writes beside its test predictions `path`: a declared output, since a Kaggle
    package's runtime plan reads it (a missing one reruns its step; it is never a file nobody made)."""
    from workflow_scripts.io import inference_speed_path

    return str(inference_speed_path(path))

MODELS = config.get("models", {})
LORA_KINDS = ("decoder_lora", "encoder_lora")
LORA_MODELS = [name for name, model in MODELS.items() if model["kind"] in LORA_KINDS]
# linear heads on fixed features (workflow_scripts.linear_models, .embedding_head): no fine-tune, no predict_fold
TFIDF_MODELS = [name for name, model in MODELS.items() if model["kind"] == "tfidf_linear"]
EMBEDDING_HEAD_MODELS = [name for name, model in MODELS.items() if model["kind"] == "embedding_head"]
HEAD_FOLDERS = {"tfidf_linear": "linear", "embedding_head": "head"}
FULL_MODELS = [name for name, model in MODELS.items() if model["kind"] not in LORA_KINDS + tuple(HEAD_FOLDERS)]
from workflow_scripts.prepare_model import LOCAL_SOURCES  # packaged:* and tiny:* sources, built by prepare_model
PY = "python -m workflow_scripts"
# Step-group images (config `container: {train, cpu}`): used under --sdm apptainer, ignored otherwise.
TRAIN_CONTAINER = (config.get("container") or {}).get("train")
CPU_CONTAINER = (config.get("container") or {}).get("cpu")


def out(path):
    """A path under the configured output folder (default results/)."""
    return f"{OUT}/{path}"


def names_pattern(names):
    # a pattern that matches nothing when the list is empty, so no rule claims a stray target
    return "|".join(re.escape(name) for name in names) or "(?!x)x"


wildcard_constraints:
    model=names_pattern(MODELS),
    ensemble=names_pattern(config.get("ensembles") or {}),
    source=names_pattern(list(MODELS) + list(config.get("ensembles") or {})),
    submission=names_pattern(config.get("submissions") or {}),
    record=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    seed=r"\d+",
    generator=names_pattern(config.get("generators") or {}),
    lm=names_pattern(config.get("language_models") or {}),
    teacher=names_pattern(MODELS),
    dataset=r"[A-Za-z0-9][A-Za-z0-9_.-]*-seed\d+",
    vote=names_pattern(config.get("votes") or {}),
    prompt=r"[A-Za-z0-9_.-]+",
    pipeline=names_pattern(config.get("retrieval") or {}),
    iter=r"\d+",
    purpose=r"(reranker_)?",
    role=r"embedder|reranker",
    base=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    split=teacher_labels.SPLIT_PATTERN + "|full",  # fold2 (an outer fold model), fold0+2 (an inner teacher)
    fold=r"\d+",
    sweep=names_pattern(SWEEPS),


# ---- config slices handed to scripts (as quoted JSON; config strings never reach a shell bare) ----


def task_json():
    return json.dumps(config["task"], sort_keys=True)


@functools.cache
def model_spec(name):
    """The model's spec, built once per model (every job of a model reads it; a sweep makes many models)."""
    return ModelSpec.from_config(MODELS[name])


@functools.cache
def _step_config_json(name, step):
    return json.dumps(model_spec(name).step_config(step), sort_keys=True)


def model_step_config(step):
    """A params function: the model settings `step` reads (model_spec: what its output depends on), as JSON."""
    return lambda wildcards: _step_config_json(wildcards.model, step)


def model_run_settings(wildcards):
    """How a model's jobs run, not what they make (log and checkpoint frequency, inference batch sizes):
    a `resources:` string, which Snakemake does not track, so changing one reruns nothing. Compact, so that
    Snakemake's `resources: a=1, b=2` job line stays one item per resource."""
    return _run_settings_json(wildcards.model)


@functools.cache
def _run_settings_json(name):
    return json.dumps(model_spec(name).run_settings(), sort_keys=True, separators=(",", ":"))


def demo_submission_columns():
    """The label columns the demo's sample submission holds: the ones the task predicts."""
    task = config.get("task") or {}
    if task.get("type") == "multiclass":
        return [task["label_column"]] if not task.get("label_template") else template_label_sources(task)
    if task.get("type") == "multilabel":
        return task["label_columns"]
    return [head.get("column", head["name"]) for head in task.get("heads", [])]


def template_label_sources(task):
    from workflow_scripts.data import template_columns

    return template_columns(task["label_template"])


def task_rows_file(split):
    """The train or test rows the data step validates: data.prepare's output when configured, else the file as given."""
    return out(f"data/prepared/{split}.parquet") if config["data"].get("prepare") else config["data"][split]


def classification_required_flags():
    from workflow_scripts.prepare import classification_required

    return cli_flags([("require", [split, ",".join(classification_required(config["task"], split))])
                      for split in ("train", "test")])


def fold_group_option():
    return rule_params.fold_group_flags(config)


def model_folds(name):
    return MODELS[name].get("folds") or list(range(config["folds"]["n_folds"]))


# ---- input functions ----


def base_model(wildcards):
    """The materialised base folder for packaged/tiny sources; nothing for hub ids and local folders."""
    if MODELS[wildcards.model].get("source") in LOCAL_SOURCES:
        return out(f"models/{wildcards.model}/base")
    return []


def base_model_path(wildcards):
    source = MODELS[wildcards.model]["source"]
    return out(f"models/{wildcards.model}/base") if source in LOCAL_SOURCES else source


def trained_dir(wildcards):
    subdir = "adapter" if wildcards.model in LORA_MODELS else "model"
    return out(f"models/{wildcards.model}/{wildcards.split}/{subdir}")


def test_source(name):
    """`full` when a model's test predictions come from its full-data model, else `folds` (their mean)."""
    return MODELS[name].get("test_predictions", "folds")


def fold_predictions(wildcards):
    folds = model_folds(wildcards.model)
    if test_source(wildcards.model) == "full":
        test = [out(f"predictions/{wildcards.model}/full/test.parquet")]
    else:
        test = [out(f"predictions/{wildcards.model}/fold{k}/test.parquet") for k in folds]
    inputs = {"valid": [out(f"predictions/{wildcards.model}/fold{k}/valid.parquet") for k in folds], "test": test}
    if MODELS[wildcards.model].get("select_epoch") == "best":
        # the fold models' epoch histories and last-epoch predictions: the plain CV beside the optimistic one
        subdir = "adapter" if wildcards.model in LORA_MODELS else "model"
        inputs["trained"] = [out(f"models/{wildcards.model}/fold{k}/{subdir}") for k in folds]
    return inputs


def model_targets(name):
    model = MODELS[name]
    targets = [out(f"oof/{name}.parquet"), out(f"test/{name}.parquet"), out(f"scores/{name}.json")]
    if name in LORA_MODELS and model_spec(name).builds_merged:
        targets += [out(f"models/{name}/fold{k}/merged") for k in model_folds(name)]
    if model.get("train_full") and name in LORA_MODELS + FULL_MODELS:
        targets.append(out(f"models/{name}/full/{'adapter' if name in LORA_MODELS else 'model'}"))
    return targets


def plot_targets():
    if not MODELS:
        return []
    targets = [out("plots/cv_folds.png"), out("plots/cv_lb.png"), out("plots/leaderboard.html")]
    if ENSEMBLES:
        targets.append(out("plots/ensembles.png"))
    return targets + [out(f"plots/thresholds/{source}.png") for source in THRESHOLDS]


def final_targets():
    targets = []
    for name in MODELS:
        targets += model_targets(name)
    return (targets + submission_targets() + plot_targets() + generated_targets() + retrieval_targets()
            + kaggle_targets() + sweep_targets())


# ---- resources: GPU steps take them from the model's config; `attempt` grows memory on retries ----


def step_resources(settings_of, mem_mb=None, runtime=None, entries=None):
    """Resources of a step that may use GPUs, from its `resources:` config (settings_of(wildcards)):
    gpu (default 0), mem_mb (grown per retry attempt), runtime and the Slurm plugin's keys, so every
    GPU step lands on the configured partition with its GPU request, not only training. `entries`: every
    `resources:` block the step may read; a Slurm key none of them sets is left out (Snakemake evaluates each
    resource function of each job it plans, and a sweep plans thousands)."""

    def lookup(key, default):
        def resource(wildcards, attempt=1):
            value = settings_of(wildcards).get(key, default)
            if key == "mem_mb" and value is not None:
                from workflow_scripts.execution.oom import mem_mb_for_attempt

                return mem_mb_for_attempt(int(value), attempt)
            return value

        return resource

    defaults = {"gpu": 0, "mem_mb": mem_mb, "runtime": runtime, "gpu_model": None, "gres": None,
                "slurm_partition": None, "slurm_account": None, "cpus_per_gpu": None}
    if entries is not None:
        used = {key for entry in entries for key in (entry or {})}
        defaults = {key: default for key, default in defaults.items() if default is not None or key in used}
    return {key: lookup(key, default) for key, default in defaults.items()}


MODEL_STEP_RESOURCES = {**step_resources(lambda wildcards: MODELS[wildcards.model]["resources"],
                                         entries=[model["resources"] for model in MODELS.values()]),
                        "run_settings": model_run_settings}


def train_mem_mb(wildcards, attempt=1):
    """Training's mem_mb: grown per retry, except retries after a user error, which the trainer records in
    its work folder (bad input fails the same way with more memory)."""
    from workflow_scripts.execution.oom import mem_mb_after_failures

    mem_mb = MODELS[wildcards.model]["resources"].get("mem_mb")
    if mem_mb is None:
        return None
    record = Path(out(f"work/{wildcards.model}/{wildcards.split}/user_errors.json"))
    user_errors = len(json.loads(record.read_text())["attempts"]) if record.exists() else 0
    return mem_mb_after_failures(int(mem_mb), attempt, user_errors)


def train_launcher(wildcards):
    """`--torchrun` for a model that trains on more than one GPU: one process per GPU (DDP). A resource, not
    a param: the batches and their order do not depend on the number of processes (train.rank_share)."""
    return "--torchrun" if model_gpu_count(wildcards.model) > 1 else ""


# scratch folders and how a job runs go to resources, which Snakemake does not track: changing them reruns nothing
TRAIN_STEP_RESOURCES = {**MODEL_STEP_RESOURCES, "mem_mb": train_mem_mb, "launcher": train_launcher,
                        "work_dir": lambda wildcards: out(f"work/{wildcards.model}/{wildcards.split}")}


def model_threads(wildcards):
    return MODELS[wildcards.model]["resources"].get("threads", 2)


# ---- training: inputs, params and the one command both train rules run ----


def train_inputs(wildcards):
    # a model may train on another model's corrected labels and on soft-labelled data sets; a nested teacher's
    # labels come per held-out set (generated/teacher_labels.py), so none was made by a model that saw the split's folds
    files = teacher_labels.training_files(config, wildcards.model, wildcards.split)
    inputs = {
        "folds": out("folds.parquet"),
        "labels": out("labels.json"),
        "base": base_model(wildcards),
    }
    inputs.update(files)
    if MODELS[wildcards.model].get("select_epoch") == "best":
        # each epoch's held-out fold is scored against the targets OOF scoring reads (not corrected labels),
        # on every official row of the fold (a corrected file may have dropped some)
        inputs["held_out_targets"] = out("targets.parquet")
        if files["train"] != out("data/train.parquet"):
            inputs["official_train"] = out("data/train.parquet")
    return inputs


def extra_arguments(wildcards):
    """`--extra NAME=FILE` per extra data set: which file each stage's data name reads. Built from the config (not
    from `input`, which Snakemake does not track), so swapping two names' files retrains."""
    names = MODELS[wildcards.model].get("extra_data", {})
    files = train_inputs(wildcards)
    return rule_params.extra_data_flags({key: files["extra_" + key] for key in names})


def model_gpu_count(name):
    return model_spec(name).gpu_count


train_params = dict(
    fold=lambda wildcards: "full" if wildcards.split == "full" else wildcards.split[len("fold"):],
    model_config=model_step_config(TRAIN),
    base=base_model_path,
    extra=extra_arguments,
    # of wildcards only: a param whose function takes `input` is not tracked, and the metric must be
    epoch_selection=lambda wildcards: rule_params.epoch_selection_flags(
        MODELS[wildcards.model], config["task"]["metric"], train_inputs(wildcards).get("held_out_targets"),
        train_inputs(wildcards).get("official_train")),
)

# GPU steps go through the allocator: each job gets its own free GPUs (CUDA_VISIBLE_DEVICES); under
# Slurm it leaves the scheduler's assignment alone.
ON_GPUS = "{PY}.execution.gpu_devices --gpus {resources.gpu} -- python -m workflow_scripts"

TRAIN_COMMAND = (
    "{PY}.execution.gpu_devices --gpus {resources.gpu} {resources.launcher} -- python -m workflow_scripts.train --train {input.train:q} --targets {input.targets:q} --folds {input.folds:q}"
    " --labels {input.labels:q} --fold {params.fold} --model-config {params.model_config:q} --run-settings {resources.run_settings:q}"
    " --base {params.base:q} {params.extra} {params.epoch_selection} --out {output:q} --work-dir {resources.work_dir:q}"
    " --attempt {resources.attempt} --threads {threads} > {log:q} 2>&1"
)


# ---- ensembles, thresholds, submissions: a "source" is a model or an ensemble ----

ENSEMBLES = config.get("ensembles") or {}
THRESHOLDS = config.get("thresholds") or {}
SUBMISSIONS = config.get("submissions") or {}
REGISTER = config.get("register") or {}
REGISTRY_DIR = config.get("registry_dir", "submissions")


def verify_threads(wildcards):
    """A verify rebuild runs its own Snakemake with all local cores; on a cluster (no --cores) with 4."""
    try:
        return workflow.cores
    except WorkflowError:
        return 4


COMPETITION = registry.competition_of(config)
# records in the registry folder frozen from this competition (verified by `all`), and those of others (left alone)
OWN_RECORDS, OTHER_RECORDS = registry.records_by_competition(REGISTRY_DIR, COMPETITION)
if OTHER_RECORDS:
    logger.info(f"registry {REGISTRY_DIR}: {len(OTHER_RECORDS)} record(s) of other competitions left alone (this "
                f"config's competition is {COMPETITION!r}): "
                + ", ".join(f"{name} ({competition})" for name, competition in sorted(OTHER_RECORDS.items())))


def frozen_config():
    """The whole config a record freezes (a Kaggle package's settings do not determine a submission), as JSON."""
    return json.dumps({key: value for key, value in config.items() if key != "kaggle"}, sort_keys=True, default=str)


def records_to_freeze():
    """The register: records not frozen yet (the register rule makes only these)."""
    return [name for name in REGISTER if not Path(REGISTRY_DIR, f"{name}.yaml").exists()]


def registered_records():
    """The records `all` verifies: those this config registers and those frozen from its competition."""
    return sorted(set(OWN_RECORDS) | set(REGISTER))


def ensemble_members(name):
    return rule_params.ensemble_members(ENSEMBLES, name)


def ensemble_weights(name):
    return rule_params.ensemble_weights(ENSEMBLES, name)


def source_files(name):
    """OOF, test and score files of a model or an ensemble."""
    if name in MODELS:
        return {"oof": out(f"oof/{name}.parquet"), "test": out(f"test/{name}.parquet"), "score": out(f"scores/{name}.json")}
    return {key: out(f"ensembles/{name}/{file}") for key, file in
            (("oof", "oof.parquet"), ("test", "test.parquet"), ("score", "score.json"))}


def source_models(name):
    """The models a source is built from (recursively through nested ensembles)."""
    return rule_params.source_dependencies(name, ENSEMBLES)[0]


def ensemble_inputs(wildcards):
    members = ensemble_members(wildcards.ensemble)
    return {
        "oof": [source_files(m)["oof"] for m in members],
        "test": [source_files(m)["test"] for m in members],
        "labels": out("labels.json"),
        "targets": out("targets.parquet"),
        "folds": out("folds.parquet"),  # the prior's score on the ensemble's rows
    }


def threshold_inputs(wildcards):
    inputs = {"oof": source_files(wildcards.source)["oof"], "labels": out("labels.json"), "targets": out("targets.parquet")}
    if ENSEMBLES.get(wildcards.source, {}).get("method") in ("search", "stack"):  # refitted for the nested score
        inputs["members"] = [source_files(m)["oof"] for m in ensemble_members(wildcards.source)]
    return inputs


def threshold_options(wildcards):
    # the member paths from the config, not from `input`: Snakemake does not track a param that reads input
    members = threshold_inputs(wildcards).get("members", [])
    return " ".join(filter(None, [rule_params.threshold_flags(THRESHOLDS[wildcards.source]),
                                  rule_params.threshold_refit_flags(ENSEMBLES, wildcards.source, members)]))


def model_artifacts(name):
    subdir = "adapter" if name in LORA_MODELS else HEAD_FOLDERS.get(MODELS[name]["kind"], "model")
    return [out(f"models/{name}/fold{k}/{subdir}") for k in model_folds(name)]


def submission_inputs(wildcards):
    settings = SUBMISSIONS[wildcards.submission]
    source = settings["source"]
    inputs = {
        "test": source_files(source)["test"],
        "test_data": out("data/test.parquet"),  # ids, count and order are checked against it
        "score": source_files(source)["score"],
        "labels": out("labels.json"),
        "data": [config["data"][key] for key in ("train", "test", "sample_submission") if config["data"].get(key)],
        "artifacts": [out("folds.parquet"), source_files(source)["oof"]]
        + [path for model in source_models(source) for path in model_artifacts(model) + [source_files(model)["oof"]]]
        + made_label_files(source_models(source)),
    }
    if settings.get("thresholds"):
        inputs["thresholds"] = out(f"thresholds/{source}.json")
    return inputs


def made_label_files(models):
    """The training files of `models`' fold models beyond the official rows: corrected labels, soft-labelled and
    extra data sets (a manifest hashes what the members learnt from; none for a model without them)."""
    official = {out("data/train.parquet"), out("targets.parquet")}
    splits = {model: [f"fold{k}" for k in model_folds(model)] + (["full"] if MODELS[model].get("train_full") else [])
              for model in models}
    files = [path for model in models for split in splits[model]
             for path in teacher_labels.training_files(config, model, split).values() if path not in official]
    return list(dict.fromkeys(files))


def submission_config_slice(name):
    """The part of the config that determines a submission (hashed into its manifest)."""
    return rule_params.submission_config_slice(config, name)


def submission_options(wildcards):
    """The submission's flags; a params function of wildcards only, so a format or column change reruns it."""
    inputs = submission_inputs(wildcards)
    return rule_params.submission_flags(config, wildcards.submission, inputs.get("thresholds"))


def lb_scores_file():
    """The user's lb_scores.yaml when it exists (a missing file means no LB yet), else None."""
    path = config.get("lb_scores", "lb_scores.yaml")
    return path if Path(path).exists() else None


def leaderboard_inputs(wildcards):
    inputs = {
        "models": [out(f"scores/{m}.json") for m in MODELS],
        "ensembles": [out(f"ensembles/{e}/score.json") for e in ENSEMBLES],
        "manifests": [out(f"submissions/{s}/manifest.json") for s in SUBMISSIONS],
        # a row per retrieval stage (zero-shot, each iteration's embedder and reranked), lift over zero-shot
        "retrieval": [out(f"retrieval/{p}/stages.json") for p in (config.get("retrieval") or {})],
        "sweeps": [out(f"sweeps/{s}.json") for s in SWEEPS],
    }
    if MODELS:  # the prior baseline of the classification task (a retrieval-only config has none)
        inputs["prior"] = out("scores/prior.json")
    if lb_scores_file():
        inputs["lb"] = lb_scores_file()
    return inputs


# ---- sweeps: one table per sweep over its variants (ordinary models and ensembles) ----


def sweep_inputs(wildcards):
    inputs = sweeps.table_inputs(OUT, SWEEPS[wildcards.sweep])
    if lb_scores_file():
        inputs["lb"] = lb_scores_file()
    return inputs


def sweep_options(wildcards):
    """The sweep's spec (variants, swept values, select) and files; of wildcards only, so a change reruns it."""
    inputs = sweeps.table_inputs(OUT, SWEEPS[wildcards.sweep])
    return cli_flags({"spec": SWEEPS[wildcards.sweep].to_json(), "scores": inputs["scores"],
                      "seed_scores": inputs["seed_scores"] or None, "oof": inputs.get("oof"),
                      "targets": inputs.get("targets"), "labels": inputs.get("labels")})


def sweep_targets():
    return [out(f"sweeps/{s}.csv") for s in SWEEPS] + [out(f"plots/sweeps/{s}.png") for s in SWEEPS]


if SWEEPS:
    # a dry run (and a real run, before its first job) prints each sweep's variants, its planned jobs and GPU
    # jobs per resource class, after Snakemake's job table
    sweeps.print_plan_after_job_stats(SWEEPS, lambda: workflow.dag)


def submission_targets():
    targets = [out(f"ensembles/{e}/score.json") for e in ENSEMBLES]
    targets += [out(f"thresholds/{t}.json") for t in THRESHOLDS]
    targets += [out(f"submissions/{s}/submission.csv") for s in SUBMISSIONS]
    targets += [f"{REGISTRY_DIR}/{r}.yaml" for r in REGISTER]
    targets += [out(f"verify/{r}.ok") for r in registered_records()]
    if MODELS or config.get("retrieval"):
        targets.append(out("leaderboard.csv"))
    return targets


# ---- data that models make: generators, soft labels, label correction, answers and votes ----

LANGUAGE_MODELS = config.get("language_models") or {}
GENERATORS = config.get("generators") or {}
SOFT_LABELS = config.get("soft_labels") or {}
LABEL_CORRECTION = config.get("label_correction") or {}
ANSWERS = config.get("answers") or {}
ANSWER_STEP_RESOURCES = step_resources(lambda wildcards: ANSWERS.get("resources", {}), mem_mb=8000, runtime=60)
VOTES = config.get("votes") or {}


SOFT_LABEL_COMMAND = (
    "{PY}.generated.soft_labels --dataset {input.rows:q} --teacher {input.teacher:q} --label-spec {input.labels:q}"
    " --text-columns text --temperature {params.temperature} {params.options} --output {output.rows:q}"
    " --summary {output.summary:q} > {log:q} 2>&1"
)
LABEL_CORRECTION_COMMAND = (
    "{PY}.generated.label_correction --train {input.train:q} --oof {input.oof:q} --label-spec {input.labels:q}"
    " --targets {input.targets:q} --top-percent {params.top_percent} --action {params.action:q} {params.options}"
    " --output {output.train:q} --targets-output {output.targets:q} --report {output.report:q}"
    " --summary {output.summary:q} > {log:q} 2>&1"
)


def inner_oof_inputs(wildcards):
    """A teacher's inner models' predictions of every fold outside the held-out set (each without that fold too)."""
    files = teacher_labels.inner_oof_files(wildcards.teacher, wildcards.split, config["folds"]["n_folds"])
    return {f"part{fold}": out(path) for fold, path in files.items()}


def inner_oof_parts(wildcards, input):
    return cli_flags({"parts": [f"{key[len('part'):]}={path}" for key, path in input.items() if key.startswith("part")]})


def generated_datasets():
    """Every generated data set: {name: file}, named `{generator}-seed{seed}`."""
    return {f"{g}-seed{s}": out(f"generated/{g}/seed{s}.parquet")
            for g, settings in GENERATORS.items() for s in settings.get("seeds", [0])}


def dataset_file(name, split=None):
    """A generated data set's file; for a nested generator and a held-out set, the rows generated for it."""
    datasets = generated_datasets()
    if name not in datasets:
        raise WorkflowError(f"unknown data set {name!r} (generated data sets: {sorted(datasets)})")
    if split and split != "full" and generator_is_nested(name):
        generator, seed = name.rsplit("-seed", 1)
        return out(f"generated/{generator}/{split}/seed{seed}.parquet")
    return datasets[name]


def generator_is_nested(dataset):
    return bool(GENERATORS.get(teacher_labels.generator_of(dataset), {}).get("nested", False))


DEDUP_COMMAND = (
    "{PY}.generated.dedup --generated {input.rows:q} --reference {input.train:q} --text-columns {params.columns:q}"
    " --threshold {params.threshold} --output {output.rows:q} --report {output.report:q} > {log:q} 2>&1"
)


GENERATOR_STEP_RESOURCES = step_resources(
    lambda wildcards: GENERATORS[wildcards.generator].get("resources", {}), mem_mb=8000, runtime=60
)


def generator_options(wildcards):
    settings = GENERATORS[wildcards.generator]
    return " ".join(filter(None, [
        rule_params.generator_flags(settings, (config.get("task") or {}).get("text_template")),
        language_model_options(settings["model"]),
    ]))


def language_model_options(lm):
    """The language model's precision, quantization and sampling settings (absent: the step's defaults)."""
    return rule_params.language_model_flags(LANGUAGE_MODELS.get(lm) or {})


def answer_problems_file():
    """The problems to answer: a configured file, or the built-in arithmetic set."""
    return ANSWERS.get("problems") or out("data/math_problems.parquet")


SOURCED_LMS = [name for name, entry in LANGUAGE_MODELS.items() if "source" in entry]
FINETUNED_LMS = {name: entry["finetune"] for name, entry in LANGUAGE_MODELS.items() if "finetune" in entry}
FINETUNE_STEP_RESOURCES = step_resources(lambda wildcards: FINETUNED_LMS[wildcards.lm].get("resources", {}),
                                         mem_mb=8000, runtime=120)


def language_model_finetune_rows(wildcards):
    """The (problem, solution) rows of a fine-tuned language model: its data file or the built-in set."""
    return finetune_rows_file(wildcards.lm)


def finetune_rows_file(lm):
    return FINETUNED_LMS[lm].get("data") or out(f"data/math_solutions/{lm}.parquet")


def language_model_finetune_options(wildcards):
    from workflow_scripts.generated.answers import PROMPTS

    return rule_params.language_model_finetune_flags(wildcards.lm, FINETUNED_LMS[wildcards.lm], ANSWERS, PROMPTS)


def answer_test_problems_file():
    """Unlabelled problems to submit answers for: a configured file, the built-in set, or None."""
    if ANSWERS.get("test_problems"):
        return ANSWERS["test_problems"]
    return out("data/math_test_problems.parquet") if ANSWERS.get("n_test_problems") else None


def vote_submissions():
    """Votes that write a test-set submission: every vote when test problems are configured, unless `submit: false`."""
    return rule_params.vote_submission_names(config)


def answer_options(wildcards, split="dev"):
    return " ".join(filter(None, [rule_params.answer_flags(ANSWERS, wildcards.prompt, split),
                                  language_model_options(wildcards.lm)]))


def vote_submission_options(wildcards):
    return " ".join(filter(None, [
        rule_params.vote_submission_flags(VOTES[wildcards.vote], rule_params.vote_config_slice(config, wildcards.vote)),
        rule_params.vote_base_models(config, wildcards.vote)]))


def vote_submission_inputs(wildcards):
    """What a vote submission reads (test answers, test problems, the dev score that picks the strategy) and what
    its manifest hashes besides: the dev problems and answers the strategy was chosen on, each fine-tuned language
    model's weights and the rows it was fine-tuned on."""
    answer_sets = VOTES[wildcards.vote]["answers"]
    lms = rule_params.language_model_chain_names(config, [a.partition("/")[0] for a in answer_sets])
    finetuned = [lm for lm in lms if lm in FINETUNED_LMS]
    return {
        "answers": [out(f"test_answers/{a}.parquet") for a in answer_sets],
        "test_problems": answer_test_problems_file(),
        "dev_score": out(f"votes/{wildcards.vote}/score.json"),
        "inputs": [answer_problems_file()] + [finetune_rows_file(lm) for lm in finetuned],
        "artifacts": [out(f"answers/{a}.parquet") for a in answer_sets] + [out(f"votes/{wildcards.vote}/votes.parquet")]
        + [out(f"lms/{lm}/base") for lm in finetuned],
    }


def generated_targets():
    # a nested generator's rows are made per held-out set, for the students that need them
    targets = [out(f"generated/{g}/seed{s}.parquet") for g, settings in GENERATORS.items()
               if not settings.get("nested") for s in settings.get("seeds", [0])]
    for teacher, settings in SOFT_LABELS.items():
        targets += [out(f"soft_labels/{teacher}/{d}.parquet") for d in settings.get("datasets", generated_datasets())]
        targets += [out(f"soft_labels/{teacher}/official.parquet")] if settings.get("official") else []
    targets += [out(f"label_correction/{m}.parquet") for m in LABEL_CORRECTION]
    targets += [out(f"votes/{v}/score.json") for v in VOTES]
    targets += [out(f"submissions/{v}/submission.csv") for v in vote_submissions()]
    return targets


# ---- retrieval pipelines ----

# each iteration's fine-tunes laid over the pipeline's embedder_defaults / reranker_defaults
RETRIEVAL = {name: rule_params.resolved_pipeline(pipeline) for name, pipeline in (config.get("retrieval") or {}).items()}


def iteration(wildcards):
    return RETRIEVAL[wildcards.pipeline]["iterations"][int(wildcards.iter)]


def last_iteration(pipeline):
    return len(RETRIEVAL[pipeline]["iterations"]) - 1


def model_reference(pipeline, reference):
    return rule_params.model_reference(OUT, pipeline, reference)


def retrieval_uses_demo(pipeline):
    return rule_params.retrieval_uses_demo(RETRIEVAL[pipeline])


# the raw files of a pipeline with a `prepare` function: file key -> (the function's split, the demo's file name)
RETRIEVAL_RAW = {"queries": ("train", "train.csv"), "corpus": ("corpus", "misconception_mapping.csv"),
                 "test_queries": ("test", "test.csv")}


def retrieval_data_inputs(wildcards):
    pipeline = wildcards.pipeline
    if RETRIEVAL[pipeline].get("prepare"):
        return {key: out(f"retrieval/{pipeline}/prepared/{key}.parquet") for key in RETRIEVAL_RAW}
    if retrieval_uses_demo(pipeline):
        return {}
    return dict(RETRIEVAL[pipeline]["files"])


def retrieval_raw_inputs(wildcards):
    """What a pipeline's prepare function reads: the demo's raw files (demo.format eedi_wide) or the configured ones."""
    pipeline = wildcards.pipeline
    if retrieval_uses_demo(pipeline):
        return {key: out(f"retrieval/{pipeline}/raw/{name}") for key, (_, name) in RETRIEVAL_RAW.items()}
    return dict(RETRIEVAL[pipeline]["files"])


def retrieval_prepare_flags(wildcards):
    from workflow_scripts.prepare import RETRIEVAL_REQUIRED

    return cli_flags([("require", [split, ",".join(RETRIEVAL_REQUIRED[split])]) for split, _ in RETRIEVAL_RAW.values()])


# Params functions take only wildcards: Snakemake tracks no param whose function takes input, output,
# threads or resources (a "derived" param), so a config flag built there would change without a rerun.
def retrieval_data_options(wildcards):
    return rule_params.retrieval_data_flags(RETRIEVAL[wildcards.pipeline], retrieval_data_inputs(wildcards))


RETRIEVAL_STEP_RESOURCES = step_resources(
    lambda wildcards: RETRIEVAL[wildcards.pipeline].get("resources", {}), mem_mb=8000, runtime=60
)

def retrieval_threads(wildcards):
    """CPU threads of a retrieval step (Snakemake sets OMP_NUM_THREADS from it): a fine-tune's own
    `resources.threads`, else the pipeline's, else 2."""
    own = iteration(wildcards)[wildcards.role].get("resources") if hasattr(wildcards, "role") else None
    return (own or RETRIEVAL[wildcards.pipeline].get("resources") or {}).get("threads", 2)


# a fine-tune may set its own resources (the write-ups train the embedder on 2 GPUs, the reranker on 4)
FINETUNE_RETRIEVER_RESOURCES = step_resources(
    lambda wildcards: iteration(wildcards)[wildcards.role].get("resources")
    or RETRIEVAL[wildcards.pipeline].get("resources", {}), mem_mb=8000, runtime=60
)


def mining_source(wildcards):
    """(embedder folder, suffix, mining settings) for this iteration's mining of the given purpose."""
    settings = iteration(wildcards)
    if wildcards.purpose == "reranker_":
        # the reranker's negatives are mined again with this iteration's fine-tuned embedder, so they are
        # hard for the retriever the reranker will follow
        folder, suffix = model_reference(wildcards.pipeline, f"iter{wildcards.iter}")
        return folder, suffix, settings["reranker"]["mine"]
    folder, suffix = model_reference(wildcards.pipeline, settings["mine"]["embedder"])
    return folder, suffix, settings["mine"]


def mining_inputs(wildcards):
    folder, _, _ = mining_source(wildcards)
    return {
        "queries": out(f"retrieval/{wildcards.pipeline}/data/queries.parquet"),
        "corpus": out(f"retrieval/{wildcards.pipeline}/data/corpus.parquet"),
        "folds": out(f"retrieval/{wildcards.pipeline}/folds.parquet"),
        "embedder": folder,
    }


def mining_options(wildcards):
    folder, suffix, settings = mining_source(wildcards)
    return rule_params.mining_flags(RETRIEVAL[wildcards.pipeline], settings, folder, suffix)


def teacher_reranker(wildcards):
    teacher = iteration(wildcards).get("teacher")
    if not teacher:
        raise WorkflowError(f"retrieval.{wildcards.pipeline}.iterations[{wildcards.iter}] names no teacher")
    return out(f"retrieval/{wildcards.pipeline}/{teacher}/reranker")


def reranker_inference_options(pipeline):
    return cli_flags(RETRIEVAL[pipeline].get("reranker_inference", {}))


def training_data(pipeline, index, role):
    settings = RETRIEVAL[pipeline]["iterations"][index]
    purpose = "reranker_" if role == "reranker" and settings["reranker"].get("mine") else ""
    kind = "scored" if settings.get("teacher") else "mined"
    return out(f"retrieval/{pipeline}/iter{index}/{purpose}{kind}.jsonl")


def finetune_inputs(wildcards):
    settings = iteration(wildcards)[wildcards.role]
    base, _ = model_reference(wildcards.pipeline, settings["base"])
    inputs = {"base": base, "data": training_data(wildcards.pipeline, int(wildcards.iter), wildcards.role)}
    if rule_params.selects_best_checkpoint(settings):
        # the valid fold its epochs are scored on; a reranker reranks this iteration's embedder's candidates
        data = f"retrieval/{wildcards.pipeline}"
        inputs.update(queries=out(f"{data}/data/queries.parquet"), corpus=out(f"{data}/data/corpus.parquet"),
                      folds=out(f"{data}/folds.parquet"))
        if wildcards.role == "reranker":
            inputs["candidate_embedder"] = out(f"{data}/iter{wildcards.iter}/embedder")
    return inputs


def finetune_options(wildcards):
    return rule_params.finetune_flags(iteration(wildcards)[wildcards.role], RETRIEVAL[wildcards.pipeline], wildcards.role)


def checkpoint_validation_options(wildcards):
    if not rule_params.selects_best_checkpoint(iteration(wildcards)[wildcards.role]):
        return ""
    return rule_params.checkpoint_validation_flags(RETRIEVAL[wildcards.pipeline], wildcards.role,
                                                   finetune_inputs(wildcards))


def evaluation_options(wildcards):
    folder = out(f"retrieval/{wildcards.pipeline}/iter{wildcards.iter}")
    records = {role: f"{folder}/{role}/checkpoints.json" for role in ("embedder", "reranker")
               if rule_params.selects_best_checkpoint(iteration(wildcards)[role])}
    return rule_params.evaluation_flags(RETRIEVAL[wildcards.pipeline], records)


def zero_shot_embedder(wildcards):
    """The zero-shot stage's embedder: the base model iteration 0 mines with."""
    return out(f"retrieval/{wildcards.pipeline}/base/{rule_params.zero_shot_model(RETRIEVAL[wildcards.pipeline])}")


def stage_plan(pipeline):
    """Every stage of the pipeline (zero-shot, each iteration's embedder and reranked) and its files."""
    return rule_params.retrieval_stage_plan(OUT, pipeline, RETRIEVAL[pipeline])


def stage_scores(wildcards):
    return sorted({stage["score"] for stage in stage_plan(wildcards.pipeline)})


def stage_rankings(wildcards):
    return sorted({stage["test_rankings"] for stage in stage_plan(wildcards.pipeline)})


def retrieval_artifacts(wildcards):
    """What a retrieval submission's manifest hashes besides its data: the query folds and, per iteration, the
    mined negatives and teacher scores each fine-tune trained on and the fine-tunes (adapters, merged models,
    checkpoints.json: the epoch kept); the zero-shot base when a stage scores it."""
    pipeline = wildcards.pipeline
    iterations = range(last_iteration(pipeline) + 1)
    training = [path for i in iterations for path in [out(f"retrieval/{pipeline}/iter{i}/mined.jsonl")]
                + [training_data(pipeline, i, role) for role in ("embedder", "reranker")]]
    zero_shot = [zero_shot_embedder(wildcards)] if rule_params.builds_zero_shot(RETRIEVAL[pipeline]) else []
    return [out(f"retrieval/{pipeline}/folds.parquet")] + zero_shot + list(dict.fromkeys(training)) + [
        out(f"retrieval/{pipeline}/iter{i}/{role}") for i in iterations for role in ("embedder", "reranker")]


def retrieval_targets():
    targets = []
    for pipeline, settings in RETRIEVAL.items():
        targets += [out(f"retrieval/{pipeline}/iter{i}/score.json") for i in range(len(settings["iterations"]))]
        targets.append(out(f"retrieval/{pipeline}/stages.json"))
        targets.append(out(f"submissions/{pipeline}/submission.csv"))
    return targets


# ---- Kaggle code-competition packages: a submission's (or a frozen record's) dataset + offline notebook ----

from workflow_scripts.kaggle import shapes as kaggle_shapes

KAGGLE = config.get("kaggle") or {}
# a package of a submission this config builds, by shape (classification, retrieval, answers); else of a record
KAGGLE_SHAPES = {name: shape for name, shape in kaggle_shapes.submission_names(config).items() if name in KAGGLE}
KAGGLE_SUBMISSIONS = list(KAGGLE_SHAPES)
KAGGLE_RECORDS = [name for name in KAGGLE if name not in KAGGLE_SHAPES]
KAGGLE_RETRIEVAL = [name for name, shape in KAGGLE_SHAPES.items() if shape == "retrieval"]


def _oofline_code():
    from workflow_scripts.kaggle.package import tree_digest

    return tree_digest(Path(workflow.basedir) / "workflow_scripts")


OOFLINE_CODE = _oofline_code() if KAGGLE else ""


def kaggle_spec(wildcards):
    shape = KAGGLE_SHAPES[wildcards.submission]
    return kaggle_shapes.function(shape, "spec")(config, OUT, wildcards.submission, LOCAL_SOURCES)


def kaggle_inputs(wildcards):
    shape = KAGGLE_SHAPES[wildcards.submission]
    return kaggle_shapes.function(shape, "inputs")(kaggle_spec(wildcards), LOCAL_SOURCES)


def kaggle_corpus_inputs(wildcards):
    """A retrieval package's build-time pass reads the evaluation step's data and the submitted stage's models (any
    stage's: the choice is made on scores, after the graph is built)."""
    spec = kaggle_spec(wildcards)
    return [spec["queries"], spec["corpus"], spec["folds"], spec["public_test"], spec["models"]["stage_file"],
            *spec["models"]["folders"]]


def kaggle_corpus_options(wildcards):
    from workflow_scripts.kaggle.retrieval_package import corpus_pass_flags

    return corpus_pass_flags(kaggle_spec(wildcards))


# the build-time pass runs like the pipeline's evaluation step: its resources and threads
KAGGLE_CORPUS_RESOURCES = step_resources(lambda wildcards: RETRIEVAL[wildcards.submission].get("resources", {}),
                                         mem_mb=8000, runtime=60)


def kaggle_targets():
    return [out(f"kaggle/{name}/plan.json") for name in KAGGLE]
