# Shared by every rule file: config validation, wildcard constraints, input and resource functions.
import json
import os
import re
import sys
from pathlib import Path

sys.path.insert(0, workflow.basedir)
# jobs run `python -m workflow_scripts...` from the working directory, which may be elsewhere (-d)
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [workflow.basedir, os.environ.get("PYTHONPATH")]))

from workflow_scripts.config_check import check_config
from workflow_scripts.errors import OoflineError

try:
    config.update(check_config(config, base_dir=Path.cwd()))
except OoflineError as error:
    raise WorkflowError(str(error)) from None

OUT = config["output_dir"]
MODELS = config.get("models", {})
LORA_KINDS = ("decoder_lora", "encoder_lora")
LORA_MODELS = [name for name, model in MODELS.items() if model["kind"] in LORA_KINDS]
FULL_MODELS = [name for name, model in MODELS.items() if model["kind"] not in LORA_KINDS]
LOCAL_SOURCES = ("packaged:minilm", "packaged:smollm2", "tiny:llama")
PY = "python -m workflow_scripts"


def out(path):
    """A path under the configured output folder (default results/)."""
    return f"{OUT}/{path}"


def names_pattern(names):
    # a pattern that matches nothing when the list is empty, so no rule claims a stray target
    return "|".join(re.escape(name) for name in names) or "(?!x)x"


wildcard_constraints:
    model=names_pattern(MODELS),
    split=r"fold\d+|full",
    fold=r"\d+",


# ---- config slices handed to scripts (as quoted JSON; config strings never reach a shell bare) ----


def task_json():
    return json.dumps(config["task"], sort_keys=True)


def model_json(wildcards):
    return json.dumps(MODELS[wildcards.model], sort_keys=True)


def fold_group_column():
    """The group column for group schemes; empty (no groups) otherwise."""
    if config["folds"]["scheme"] not in ("group", "stratified_group"):
        return ""
    return config["folds"].get("group_column") or config["task"].get("group_column")


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


def final_targets():
    targets = []
    for name in MODELS:
        targets += model_targets(name)
    return targets


# ---- resources: GPU steps take them from the model's config; `attempt` grows memory on retries ----


def model_resource(key, default=None):
    def resource(wildcards, attempt=1):
        value = MODELS[wildcards.model]["resources"].get(key, default)
        if key == "mem_mb" and value is not None:
            from workflow_scripts.oom import mem_mb_for_attempt

            return mem_mb_for_attempt(int(value), attempt)
        return value

    return resource


def model_threads(wildcards):
    return MODELS[wildcards.model]["resources"].get("threads", 2)


# ---- training: inputs, params and the one command both train rules run ----


def train_inputs(wildcards):
    inputs = {
        "train": out("data/train.parquet"),
        "targets": out("targets.parquet"),
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

TRAIN_COMMAND = (
    "{PY}.train --train {input.train:q} --targets {input.targets:q} --folds {input.folds:q}"
    " --labels {input.labels:q} --fold {params.fold} --model-config {params.model_config:q}"
    " --base {params.base:q} {params.extra} --out {output:q} --work-dir {params.work_dir:q}"
    " --attempt {resources.attempt} --threads {threads} > {log:q} 2>&1"
)
