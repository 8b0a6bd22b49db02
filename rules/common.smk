# Shared by every rule file: config validation, wildcard constraints, input and resource functions.
import json
import os
import re
import sys
from pathlib import Path

sys.path.insert(0, workflow.basedir)
# jobs run `python -m workflow_scripts...` from the working directory, which may be elsewhere (-d)
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [workflow.basedir, os.environ.get("PYTHONPATH")]))

from workflow_scripts.execution.code_version import code_digest  # rules pass it as a param: editing a step reruns it
from workflow_scripts.execution.failures import print_user_errors  # the Snakefile's onerror

RUN_STARTED = __import__("time").time()  # logs written since then belong to this run
from workflow_scripts.config_check import check_config
from workflow_scripts.errors import OoflineError

try:
    config.update(check_config(config, base_dir=Path.cwd()))
except OoflineError as error:
    # the problem lines alone, as the last output: no Snakemake frame around them, and nothing runs
    print(f"oofline error: {error}", file=sys.stderr)
    raise SystemExit(1)

OUT = config["output_dir"]
MODELS = config.get("models", {})
LORA_KINDS = ("decoder_lora", "encoder_lora")
LORA_MODELS = [name for name, model in MODELS.items() if model["kind"] in LORA_KINDS]
FULL_MODELS = [name for name, model in MODELS.items() if model["kind"] not in LORA_KINDS]
LOCAL_SOURCES = ("packaged:minilm", "packaged:smollm2", "tiny:llama")
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
    split=r"fold\d+|full",
    fold=r"\d+",


# ---- config slices handed to scripts (as quoted JSON; config strings never reach a shell bare) ----


def task_json():
    return json.dumps(config["task"], sort_keys=True)


def model_json(wildcards):
    return json.dumps(MODELS[wildcards.model], sort_keys=True)


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


def fold_group_option():
    """`--group-column X` for group schemes; nothing otherwise."""
    import shlex

    if config["folds"]["scheme"] not in ("group", "stratified_group"):
        return ""
    return "--group-column " + shlex.quote(config["folds"].get("group_column") or config["task"].get("group_column"))


def model_folds(name):
    return MODELS[name].get("folds") or list(range(config["folds"]["n_folds"]))


# ---- input functions ----


def demo_or_data(key):
    return config["data"].get(key)


def base_model(wildcards):
    """The materialised base folder for packaged/tiny sources; nothing for hub ids and local folders."""
    if MODELS[wildcards.model]["source"] in LOCAL_SOURCES:
        return out(f"models/{wildcards.model}/base")
    return []


def base_model_path(wildcards):
    source = MODELS[wildcards.model]["source"]
    return out(f"models/{wildcards.model}/base") if source in LOCAL_SOURCES else source


def trained_dir(wildcards):
    subdir = "adapter" if wildcards.model in LORA_MODELS else "model"
    return out(f"models/{wildcards.model}/{wildcards.split}/{subdir}")


def fold_predictions(wildcards):
    folds = model_folds(wildcards.model)
    return {
        "valid": [out(f"predictions/{wildcards.model}/fold{k}/valid.parquet") for k in folds],
        "test": [out(f"predictions/{wildcards.model}/fold{k}/test.parquet") for k in folds],
    }


def model_targets(name):
    model = MODELS[name]
    targets = [out(f"oof/{name}.parquet"), out(f"test/{name}.parquet"), out(f"scores/{name}.json")]
    if name in LORA_MODELS and model.get("merge", True):
        targets += [out(f"models/{name}/fold{k}/merged") for k in model_folds(name)]
    if model.get("train_full"):
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
    return targets + submission_targets() + plot_targets() + generated_targets() + retrieval_targets()


# ---- resources: GPU steps take them from the model's config; `attempt` grows memory on retries ----


def step_resources(settings_of, mem_mb=None, runtime=None):
    """Resources of a step that may use GPUs, from its `resources:` config (settings_of(wildcards)):
    gpu (default 0), mem_mb (grown per retry attempt), runtime and the Slurm plugin's keys, so every
    GPU step lands on the configured partition with its GPU request, not only training."""

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
    return {key: lookup(key, default) for key, default in defaults.items()}


MODEL_STEP_RESOURCES = step_resources(lambda wildcards: MODELS[wildcards.model]["resources"])


def model_threads(wildcards):
    return MODELS[wildcards.model]["resources"].get("threads", 2)


# ---- training: inputs, params and the one command both train rules run ----


def train_inputs(wildcards):
    corrected_by = MODELS[wildcards.model].get("corrected_by")
    inputs = {
        # a model may train on another model's corrected labels (label correction round)
        "train": out(f"label_correction/{corrected_by}.parquet") if corrected_by else out("data/train.parquet"),
        "targets": out(f"label_correction/{corrected_by}.targets.parquet") if corrected_by else out("targets.parquet"),
        "folds": out("folds.parquet"),
        "labels": out("labels.json"),
        "base": base_model(wildcards),
    }
    inputs.update(extra_training_data(wildcards.model))
    return inputs


def extra_training_data(name):
    """Extra (soft-labelled) data sets a model's stages name: {dataset name: file}."""
    return {f"extra_{key}": path for key, path in MODELS[name].get("extra_data", {}).items()}


def extra_arguments(wildcards, input):
    import shlex

    names = MODELS[wildcards.model].get("extra_data", {})
    return " ".join(f"--extra {shlex.quote(key + '=' + input['extra_' + key])}" for key in names)


train_params = dict(
    fold=lambda wildcards: "full" if wildcards.split == "full" else wildcards.split[len("fold"):],
    model_config=model_json,
    base=base_model_path,
    extra=extra_arguments,
    work_dir=lambda wildcards: out(f"work/{wildcards.model}/{wildcards.split}"),
)

# GPU steps go through the allocator: each job gets its own free GPUs (CUDA_VISIBLE_DEVICES); under
# Slurm it leaves the scheduler's assignment alone.
ON_GPUS = "{PY}.execution.gpu_devices --gpus {resources.gpu} -- python -m workflow_scripts"

TRAIN_COMMAND = (
    ON_GPUS + ".train --train {input.train:q} --targets {input.targets:q} --folds {input.folds:q}"
    " --labels {input.labels:q} --fold {params.fold} --model-config {params.model_config:q}"
    " --base {params.base:q} {params.extra} --out {output:q} --work-dir {params.work_dir:q}"
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


def registered_records():
    """Frozen submission records in the registry folder (each rebuilt and checked by verify)."""
    folder = Path(REGISTRY_DIR)
    names = {path.stem for path in folder.glob("*.yaml")} if folder.is_dir() else set()
    return sorted(names | set(REGISTER))


def ensemble_members(name):
    members = ENSEMBLES[name]["members"]
    return list(members) if isinstance(members, (list, dict)) else []


def ensemble_weights(name):
    members = ENSEMBLES[name]["members"]
    return [float(members[m]) for m in members] if isinstance(members, dict) else [1.0] * len(members)


def source_files(name):
    """OOF, test and score files of a model or an ensemble."""
    if name in MODELS:
        return {"oof": out(f"oof/{name}.parquet"), "test": out(f"test/{name}.parquet"), "score": out(f"scores/{name}.json")}
    return {key: out(f"ensembles/{name}/{file}") for key, file in
            (("oof", "oof.parquet"), ("test", "test.parquet"), ("score", "score.json"))}


def source_models(name):
    """The models a source is built from (recursively through nested ensembles)."""
    if name in MODELS:
        return [name]
    return sorted({model for member in ensemble_members(name) for model in source_models(member)})


def ensemble_inputs(wildcards):
    members = ensemble_members(wildcards.ensemble)
    return {
        "oof": [source_files(m)["oof"] for m in members],
        "test": [source_files(m)["test"] for m in members],
        "labels": out("labels.json"),
        "targets": out("targets.parquet"),
    }


def threshold_inputs(wildcards):
    return {"oof": source_files(wildcards.source)["oof"], "labels": out("labels.json"), "targets": out("targets.parquet")}


def threshold_options(wildcards):
    import shlex

    settings = THRESHOLDS[wildcards.source]
    options = [f"--method {shlex.quote(settings.get('method', 'hybrid'))}", f"--weight {float(settings.get('weight', 0.5))}"]
    for key, flag in (("target_rates", "--target-rates"), ("probe_f1", "--probe-f1")):
        if settings.get(key):
            options.append(f"{flag} {shlex.quote(json.dumps(settings[key], sort_keys=True))}")
    return " ".join(options)


def model_artifacts(name):
    subdir = "adapter" if name in LORA_MODELS else "model"
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
        + [path for model in source_models(source) for path in model_artifacts(model) + [source_files(model)["oof"]]],
    }
    if settings.get("thresholds"):
        inputs["thresholds"] = out(f"thresholds/{source}.json")
    return inputs


def submission_config_slice(name):
    """The part of the config that determines a submission (hashed into its manifest)."""
    source = SUBMISSIONS[name]["source"]
    models = source_models(source)
    ensembles = [source] if source in ENSEMBLES else []
    while True:  # nested ensembles
        nested = [m for e in ensembles for m in ensemble_members(e) if m in ENSEMBLES and m not in ensembles]
        if not nested:
            break
        ensembles += nested
    return {
        "submission": SUBMISSIONS[name],
        "task": config.get("task"),
        "data": config.get("data"),
        "demo": config.get("demo"),
        "folds": config.get("folds"),
        "models": {m: MODELS[m] for m in models},
        "ensembles": {e: ENSEMBLES[e] for e in ensembles},
        "thresholds": {source: THRESHOLDS[source]} if SUBMISSIONS[name].get("thresholds") else {},
    }


def submission_options(wildcards, input):
    import shlex

    name = wildcards.submission
    settings = SUBMISSIONS[name]
    options = [f"--format {shlex.quote(settings.get('format', 'argmax'))}",
               f"--id-column {shlex.quote(settings.get('id_column', config['task'].get('id_column', 'id')))}",
               f"--top-k {int(settings.get('top_k', 3))}"]
    if settings.get("prediction_columns"):
        options.append("--prediction-columns " + " ".join(shlex.quote(c) for c in settings["prediction_columns"]))
    if settings.get("separator"):
        options.append(f"--separator {shlex.quote(settings['separator'])}")
    if settings.get("thresholds"):
        options.append(f"--thresholds {shlex.quote(input.thresholds)}")
    if config["data"].get("sample_submission"):
        options.append(f"--sample-submission {shlex.quote(config['data']['sample_submission'])}")
    models = source_models(settings["source"])
    options.append("--base-models " + " ".join(shlex.quote(f"{m}={MODELS[m]['source']}") for m in models))
    if config.get("container", {}).get("train"):
        options.append(f"--container {shlex.quote(config['container']['train'])}")
    options.append(f"--config-slice {shlex.quote(json.dumps(submission_config_slice(name), sort_keys=True))}")
    return " ".join(options)


def leaderboard_inputs(wildcards):
    inputs = {
        "models": [out(f"scores/{m}.json") for m in MODELS],
        "ensembles": [out(f"ensembles/{e}/score.json") for e in ENSEMBLES],
        "manifests": [out(f"submissions/{s}/manifest.json") for s in SUBMISSIONS],
    }
    if Path(config.get("lb_scores", "lb_scores.yaml")).exists():
        inputs["lb"] = config.get("lb_scores", "lb_scores.yaml")
    return inputs


def submission_targets():
    targets = [out(f"ensembles/{e}/score.json") for e in ENSEMBLES]
    targets += [out(f"thresholds/{t}.json") for t in THRESHOLDS]
    targets += [out(f"submissions/{s}/submission.csv") for s in SUBMISSIONS]
    targets += [f"{REGISTRY_DIR}/{r}.yaml" for r in REGISTER]
    targets += [out(f"verify/{r}.ok") for r in registered_records()]
    if MODELS:
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


def generated_datasets():
    """Every generated data set: {name: file}, named `{generator}-seed{seed}`."""
    return {f"{g}-seed{s}": out(f"generated/{g}/seed{s}.parquet")
            for g, settings in GENERATORS.items() for s in settings.get("seeds", [0])}


def dataset_file(name):
    datasets = generated_datasets()
    if name in datasets:
        return datasets[name]
    raise WorkflowError(f"unknown data set {name!r} (generated data sets: {sorted(datasets)})")


GENERATOR_STEP_RESOURCES = step_resources(
    lambda wildcards: GENERATORS[wildcards.generator].get("resources", {}), mem_mb=8000, runtime=60
)


def generator_options(wildcards):
    import shlex

    settings = GENERATORS[wildcards.generator]
    options = ["--fields " + " ".join(shlex.quote(f) for f in settings["fields"])]
    if settings.get("label_fields"):
        options.append("--label-fields " + " ".join(shlex.quote(f) for f in settings["label_fields"]))
    options.append(f"--template {shlex.quote(settings['template'])}")
    if settings.get("system"):
        options.append(f"--system {shlex.quote(settings['system'])}")
    text_template = (config.get("task") or {}).get("text_template")
    if text_template:
        options.append(f"--text-template {shlex.quote(text_template)}")
    for key in ("format", "n_rows", "examples_per_prompt", "word_budget", "temperature", "top_p",
                "max_new_tokens", "batch_size", "max_attempts"):
        if key in settings:
            flag = "--" + key.replace("_", "-")
            options.append(f"{flag} {shlex.quote(str(settings[key]))}")
    return " ".join(options)


def answer_problems_file():
    """The problems to answer: a configured file, or the built-in arithmetic set."""
    return ANSWERS.get("problems") or out("data/math_problems.parquet")


def answer_options(wildcards):
    import shlex

    prompt = (ANSWERS.get("prompts") or {}).get(wildcards.prompt)
    options = []
    if prompt:
        options.append(f"--template {shlex.quote(prompt)}")
    for key in ("samples", "temperature", "top_p", "max_new_tokens", "batch_size", "answer_regex", "limit",
                "problem_column", "system", "seed"):
        if key in ANSWERS:
            options.append(f"--{key.replace('_', '-')} {shlex.quote(str(ANSWERS[key]))}")
    return " ".join(options)


def generated_targets():
    targets = [out(f"generated/{g}/seed{s}.parquet") for g, settings in GENERATORS.items() for s in settings.get("seeds", [0])]
    for teacher, settings in SOFT_LABELS.items():
        targets += [out(f"soft_labels/{teacher}/{d}.parquet") for d in settings.get("datasets", generated_datasets())]
    targets += [out(f"label_correction/{m}.parquet") for m in LABEL_CORRECTION]
    targets += [out(f"votes/{v}/score.json") for v in VOTES]
    return targets


# ---- retrieval pipelines ----

RETRIEVAL = config.get("retrieval") or {}
MINING_KEYS = ("range_for_sampling", "negative_number", "seed", "prompt", "query_chunk", "passage_chunk")


def cli_flags(settings, keys=None):
    """`--key value` for each setting (lists repeat values, booleans become true/false), shell-quoted."""
    import shlex

    flags = []
    for key, value in settings.items():
        if keys is not None and key not in keys:
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(f"{flag} {'true' if value else 'false'}")
        elif isinstance(value, list):
            flags.append(flag + " " + " ".join(shlex.quote(str(v)) for v in value))
        elif value is not None:
            flags.append(f"{flag} {shlex.quote(str(value))}")
    return " ".join(flags)


def iteration(wildcards):
    return RETRIEVAL[wildcards.pipeline]["iterations"][int(wildcards.iter)]


def last_iteration(pipeline):
    return len(RETRIEVAL[pipeline]["iterations"]) - 1


def model_reference(pipeline, reference):
    """A base model name -> its materialised folder; `iterJ` -> iteration J's fine-tuned embedder folder."""
    match = re.fullmatch(r"iter(\d+)", str(reference))
    if match:
        return out(f"retrieval/{pipeline}/iter{match.group(1)}/embedder"), "/merged"
    return out(f"retrieval/{pipeline}/base/{reference}"), ""


def retrieval_uses_demo(pipeline):
    """A `demo` section wins over `files`, so a demo overlay can swap in the demo task."""
    return bool(RETRIEVAL[pipeline].get("demo")) or not RETRIEVAL[pipeline].get("files")


def retrieval_data_inputs(wildcards):
    if retrieval_uses_demo(wildcards.pipeline):
        return {}
    return dict(RETRIEVAL[wildcards.pipeline]["files"])


def retrieval_data_options(wildcards, input):
    import shlex

    settings = RETRIEVAL[wildcards.pipeline]
    if not retrieval_uses_demo(wildcards.pipeline):
        return "--source files " + " ".join(
            f"--{key.replace('_', '-')} {shlex.quote(input[key])}" for key in settings["files"])
    return "--source demo " + cli_flags(settings.get("demo", {}), ("n_passages", "n_queries", "n_test_queries", "seed"))


RETRIEVAL_STEP_RESOURCES = step_resources(
    lambda wildcards: RETRIEVAL[wildcards.pipeline].get("resources", {}), mem_mb=8000, runtime=60
)


def mining_source(wildcards):
    """(embedder folder, suffix, mining settings) for this iteration's mining of the given purpose."""
    settings = iteration(wildcards)
    if wildcards.purpose == "reranker_":
        # the reranker's data is mined again with this iteration's fine-tuned embedder (seed 002)
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


def mining_options(wildcards, input):
    _, suffix, settings = mining_source(wildcards)
    pipeline = RETRIEVAL[wildcards.pipeline]
    options = [cli_flags(pipeline.get("embedder_inference", {})), cli_flags(settings, MINING_KEYS)]
    if retrieval_valid_fold(wildcards.pipeline) is not None:
        options.append(f"--valid-fold {retrieval_valid_fold(wildcards.pipeline)}")
    # the mining CLI reads the model from the merged/ folder of a fine-tune
    return " ".join(options) + (f" --embedder {input.embedder}{suffix}" if suffix else "")


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
    return {"base": base, "data": training_data(wildcards.pipeline, int(wildcards.iter), wildcards.role)}


def finetune_options(wildcards):
    settings = {k: v for k, v in iteration(wildcards)[wildcards.role].items() if k not in ("base", "mine")}
    return cli_flags(settings)


def retrieval_valid_fold(pipeline):
    """The held-out query fold (default 0, the same for mining and evaluation); None: a final fit on every query."""
    return RETRIEVAL[pipeline].get("valid_fold", 0)


def evaluation_options(wildcards):
    pipeline = RETRIEVAL[wildcards.pipeline]
    valid_fold = retrieval_valid_fold(wildcards.pipeline)
    return " ".join([
        "--final-fit" if valid_fold is None else f"--valid-folds {int(valid_fold)}",
        f"--k {int(pipeline.get('k', 25))} --top-n {int(pipeline.get('top_n', 50))}",
        cli_flags(pipeline.get("embedder_inference", {})),
        cli_flags(pipeline.get("reranker_inference", {})),
    ])


def retrieval_artifacts(wildcards):
    pipeline = wildcards.pipeline
    return [out(f"retrieval/{pipeline}/folds.parquet")] + [
        out(f"retrieval/{pipeline}/iter{i}/{role}") for i in range(last_iteration(pipeline) + 1)
        for role in ("embedder", "reranker")]


def retrieval_targets():
    targets = []
    for pipeline, settings in RETRIEVAL.items():
        targets += [out(f"retrieval/{pipeline}/iter{i}/score.json") for i in range(len(settings["iterations"]))]
        targets.append(out(f"submissions/{pipeline}/submission.csv"))
    return targets
