"""The three submission shapes a Kaggle package rebuilds, and the one table that maps each to its functions.

- classification: a `submissions:` entry (models -> ensembles -> thresholds -> a CSV);
- retrieval: a `retrieval:` pipeline (embed the queries, retrieve top_n, rerank, k ids per query);
- answers: a `votes:` entry that submits (sample answers from language models, extract, vote).

Every caller looks a shape up here (`SHAPES`): the config check, the rules' spec and input functions, the
package step's builder and the notebook's runner; adding a shape touches this table and the shape's own module.
Functions are named as "module:function" strings and imported when used, so reading the table (the rules do,
at every Snakemake start) imports nothing heavy.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Mapping


@dataclass(frozen=True)
class Shape:
    # spec(config, out_dir, name, local_sources) -> dict: what the package copies and how it runs (rule params)
    spec: str
    # inputs(spec, local_sources) -> list[str]: the files and folders it copies (the package rule's inputs)
    inputs: str
    # build(spec, dataset_out, notebook_out, plan_out, log) -> plan: the package step
    build: str
    # the module whose main(argv) the notebook runs: --package DIR --test FILE --out-dir DIR [--threads N] ...
    runner: str
    # config_problems(config, name) -> list[str]: the shape's own checks of a kaggle entry
    problems: str
    # the LoRA folders shipped by default (kaggle.members): the ones the workflow predicted with
    default_members: str


SHAPES: dict[str, Shape] = {
    "classification": Shape(
        spec="workflow_scripts.rule_params:kaggle_package_spec",
        inputs="workflow_scripts.rule_params:kaggle_package_inputs",
        build="workflow_scripts.kaggle.package:build_package",
        runner="workflow_scripts.kaggle.inference",
        problems="workflow_scripts.kaggle.shapes:classification_problems",
        default_members="adapter",
    ),
    "retrieval": Shape(
        spec="workflow_scripts.kaggle.retrieval_package:package_spec",
        inputs="workflow_scripts.kaggle.retrieval_package:package_inputs",
        build="workflow_scripts.kaggle.retrieval_package:build_package",
        runner="workflow_scripts.kaggle.retrieval_package",
        problems="workflow_scripts.kaggle.retrieval_package:config_problems",
        default_members="merged",  # the evaluation step ranked with the merged fine-tunes
    ),
    "answers": Shape(
        spec="workflow_scripts.kaggle.answers_package:package_spec",
        inputs="workflow_scripts.kaggle.answers_package:package_inputs",
        build="workflow_scripts.kaggle.answers_package:build_package",
        runner="workflow_scripts.kaggle.answers_package",
        problems="workflow_scripts.kaggle.answers_package:config_problems",
        default_members="merged",  # a fine-tuned language model is written merged (lms/{lm}/base)
    ),
}


def submitting_votes(config: Mapping[str, Any]) -> list[str]:
    """Votes that write a test-set submission: every vote when test problems are configured, unless `submit: false`."""
    answers = config.get("answers") or {}
    if not (answers.get("test_problems") or answers.get("n_test_problems")):
        return []
    return [name for name, entry in (config.get("votes") or {}).items() if (entry or {}).get("submit", True)]


def submission_names(config: Mapping[str, Any]) -> dict[str, str]:
    """Every submission this config builds, name -> shape: the one place that says which names a package
    (`kaggle:`) may take."""
    names = {name: "classification" for name in config.get("submissions") or {}}
    names.update({name: "retrieval" for name in config.get("retrieval") or {}})
    names.update({name: "answers" for name in submitting_votes(config)})
    return names


def submission_shape(config: Mapping[str, Any], name: str) -> str | None:
    """The shape of submission `name`, or None when the config builds no submission of that name."""
    return submission_names(config).get(name)


def function(shape: str, role: str) -> Callable:
    """The `role` function of `shape` (spec, inputs, build, problems), imported."""
    module, _, attribute = getattr(SHAPES[shape], role).partition(":")
    return getattr(importlib.import_module(module), attribute)


# keys of answer (vote) packages only
ANSWERS_KEYS = ("interface", "server", "seconds_per_problem")


def classification_problems(config: Mapping[str, Any], name: str) -> list[str]:
    """A classification package's kaggle keys: no answers-only key, and a `quantization` that every LoRA member
    predicted with (the notebook loads each member as its prediction step did)."""
    from workflow_scripts.config_check import with_model_defaults
    from workflow_scripts.rule_params import source_dependencies

    entry = config["kaggle"][name]
    problems = [f"config: kaggle.{name}.{key}: a key of answer (vote) packages, not classification ones"
                for key in ANSWERS_KEYS if key in entry]
    if "quantization" in entry:
        models, _ = source_dependencies(config["submissions"][name]["source"], config.get("ensembles") or {})
        for model in models:
            settings = with_model_defaults(config["models"][model], config.get("model_defaults") or {})
            used = settings.get("quantization", "none") if settings["kind"] in ("decoder_lora", "encoder_lora") else "none"
            if used != entry["quantization"]:
                problems.append(f"config: kaggle.{name}.quantization: {entry['quantization']} but member {model!r} "
                                f"predicted with quantization {used} in the workflow; the package predicts as the "
                                "workflow did (drop the key, or retrain the member that way)")
    return problems
