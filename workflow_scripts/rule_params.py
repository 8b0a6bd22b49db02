"""What the rules hand their steps, built from the validated config: command-line flags, the ensemble
graph (which models and ensembles a source is built from) and the config slice a manifest hashes.

Pure functions of config sections, so they are tested without Snakemake; `rules/common.smk` wraps them
as input and params functions of `wildcards`. Every optional flag of every rule goes through
`cli_flags`, so config values reach the shell one way: shell-quoted, lists as repeated values,
mappings as JSON.
"""
from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workflow_scripts.errors import OoflineError
from workflow_scripts.model_spec import ModelSpec

# mining settings the mining CLI takes; the rest of a `mine:` block (`embedder`) names its inputs
MINING_KEYS = ("range_for_sampling", "negative_number", "seed", "prompt", "query_chunk", "passage_chunk")
GENERATOR_KEYS = ("format", "n_rows", "examples_per_prompt", "word_budget", "temperature", "top_p",
                  "max_new_tokens", "batch_size", "max_attempts")
ANSWER_KEYS = ("samples", "temperature", "top_p", "max_new_tokens", "batch_size", "answer_regex", "limit",
               "problem_column", "system", "seed")
SFT_SETTING_KEYS = ("epochs", "batch_size", "lr", "warmup_steps", "eval_every", "eval_fraction", "max_length", "r",
                    "alpha", "dropout", "quantization", "precision", "seed")
RETRIEVAL_DEMO_KEYS = ("n_passages", "n_queries", "n_test_queries", "seed", "n_distractors", "format")


def cli_flags(settings: Mapping[str, Any] | Iterable[tuple[str, Any]], keys: Iterable[str] | None = None) -> str:
    """`--key value` per setting, in order, shell-quoted: None is left out, booleans become true/false,
    lists give their values after one flag, mappings give JSON. Pairs instead of a mapping repeat a flag.
    `keys` keeps only those settings."""
    pairs = settings.items() if isinstance(settings, Mapping) else settings
    wanted = None if keys is None else set(keys)
    flags = []
    for key, value in pairs:
        if value is None or (wanted is not None and key not in wanted):
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(f"{flag} {'true' if value else 'false'}")
        elif isinstance(value, (list, tuple)):
            flags.append(" ".join([flag] + [shlex.quote(str(item)) for item in value]))
        elif isinstance(value, Mapping):
            flags.append(f"{flag} {shlex.quote(json.dumps(value, sort_keys=True))}")
        else:
            flags.append(f"{flag} {shlex.quote(str(value))}")
    return " ".join(flags)


def epoch_selection_flags(model: Mapping[str, Any], metric: str, held_out_targets: str | None,
                          official_train: str | None = None) -> str:
    """Training's flags for `select_epoch: best` (the metric, targets and, for a corrected training file, the
    official rows each epoch's held-out fold is scored on); nothing for `last`, so those jobs' commands stay as
    they were."""
    if model.get("select_epoch") != "best":
        return ""
    return cli_flags({"metric": metric, "held_out_targets": held_out_targets, "official_train": official_train})


def cv_optimistic_flags(config: Mapping[str, Any], model: str) -> str:
    """The oof step's `--cv-optimistic-reason` per reason a model's fold models may have learnt from labels of
    the fold they are scored on (teacher-made labels that are not nested); nothing for an honest model."""
    from workflow_scripts.generated.teacher_labels import optimistic_reasons

    return cli_flags({"cv_optimistic_reason": optimistic_reasons(config, model) or None})


def selected_epoch_flags(trained_dirs: Iterable[str]) -> str:
    """The oof step's flag naming the fold models of a `select_epoch: best` model (their last-epoch predictions
    and epoch history); nothing for other models."""
    trained_dirs = list(trained_dirs)
    return cli_flags({"trained": trained_dirs}) if trained_dirs else ""


# ---- the ensemble graph: a source is a model or an ensemble of sources ----


def ensemble_members(ensembles: Mapping[str, Any], name: str) -> list[str]:
    """Member names of an ensemble, in config order (`members` is a list or a mapping name -> weight)."""
    members = ensembles[name]["members"]
    return list(members) if isinstance(members, (list, dict)) else []


def ensemble_weights(ensembles: Mapping[str, Any], name: str) -> list[float]:
    """Member weights in member order; a list of members weighs each 1.0."""
    members = ensembles[name]["members"]
    return [float(members[m]) for m in members] if isinstance(members, dict) else [1.0] * len(members)


def source_dependencies(name: str, ensembles: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(models, ensembles) a source is built from, each sorted; the source itself counts if an ensemble.

    The one walk of the ensemble graph: an ensemble that reaches itself through its members raises an
    OoflineError naming the cycle, instead of recursing forever. Names that are not ensembles are models.
    """
    models, seen = set(), set()

    def visit(node: str, path: list[str]) -> None:
        if node not in ensembles:
            models.add(node)
            return
        if node in path:
            cycle = " -> ".join(path[path.index(node):] + [node])
            raise OoflineError(f"config: ensembles.{path[-1]}.members: ensembles form a cycle ({cycle})")
        if node in seen:
            return
        for member in ensemble_members(ensembles, node):
            visit(member, path + [node])
        seen.add(node)

    visit(name, [])
    return sorted(models), sorted(seen)


def ensemble_cycle_problems(ensembles: Mapping[str, Any]) -> list[str]:
    """One line per ensemble cycle (each reported once, from the first ensemble in config order on it)."""
    problems = []
    for name in ensembles:
        try:
            source_dependencies(name, ensembles)
        except OoflineError as error:
            if str(error) not in problems:
                problems.append(str(error))
    return problems


# ensemble keys accepted for compatibility that no step reads (the task metric and each submission's top_k are)
ENSEMBLE_UNREAD_KEYS = ("top_k", "metric")


def submission_config_slice(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The part of the config that determines submission `name` (hashed into its manifest): the task,
    data, folds, and the models, ensembles and thresholds its source is built from; where a member trains on
    labels a teacher made, also the teachers and the soft-label, label-correction, generator and language-model
    settings that made them (`label_maker_config`)."""
    settings = config["submissions"][name]
    source = settings["source"]
    models, ensembles = source_dependencies(source, config.get("ensembles") or {})
    makers = label_maker_config(config, models)
    return {
        "submission": settings,
        "task": config.get("task"),
        "data": config.get("data"),
        "demo": config.get("demo"),
        "folds": config.get("folds"),
        # what their predictions depend on: not resources, logging or export-only keys (merge, train_full)
        "models": {m: ModelSpec.from_config(config["models"][m]).prediction_config()
                   for m in sorted(set(models) | set(makers.pop("teachers")))},
        "ensembles": {e: {key: value for key, value in config["ensembles"][e].items() if key not in ENSEMBLE_UNREAD_KEYS}
                      for e in ensembles},
        "thresholds": {source: config["thresholds"][source]} if settings.get("thresholds") else {},
        # only where a member trains on made labels, so a plain submission's slice (and its records) stay as they were
        **{section: entries for section, entries in makers.items() if entries},
        **({"prepare_code": prepare_code(config["data"]["prepare"], "data.prepare")}
           if (config.get("data") or {}).get("prepare") else {}),
    }


def label_maker_config(config: Mapping[str, Any], models: Iterable[str]) -> dict[str, Any]:
    """What made the training labels of `models`, through every round of teachers: {teachers: [model names],
    soft_labels, label_correction, generators, language_models: {name: settings}} (settings without resources)."""
    from workflow_scripts.generated.teacher_labels import generator_of, label_sources

    found: dict[str, Any] = {"teachers": [], "soft_labels": {}, "label_correction": {}, "generators": {},
                             "language_models": {}}
    queue, seen = list(models), set()
    while queue:
        model = queue.pop()
        if model in seen or model not in (config.get("models") or {}):
            continue
        seen.add(model)
        for source in label_sources(config, model):
            if source.teacher not in found["teachers"]:
                found["teachers"].append(source.teacher)
            queue.append(source.teacher)
            found[source.section][source.teacher] = without_resources((config.get(source.section) or {}).get(source.teacher) or {})
            generator = (config.get("generators") or {}).get(generator_of(source.dataset)) if not source.official else None
            if generator is not None:
                found["generators"][generator_of(source.dataset)] = without_resources(generator)
                found["language_models"].update(language_model_chain(config, generator["model"]))
    found["teachers"] = sorted(found["teachers"])
    return found


def language_model_chain(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    """A language model's settings and those of the models its fine-tune starts from (without resources)."""
    language_models = config.get("language_models") or {}
    chain: dict[str, Any] = {}
    while name in language_models and name not in chain:
        chain[name] = without_resources(language_models[name])
        name = (language_models[name].get("finetune") or {}).get("base")
    return chain


def without_resources(settings: Any) -> Any:
    """`settings` with every `resources` block removed, at any depth: where and how long a job runs is not what
    it makes, so a manifest does not hash it."""
    if isinstance(settings, Mapping):
        return {key: without_resources(value) for key, value in settings.items() if key != "resources"}
    if isinstance(settings, list):
        return [without_resources(item) for item in settings]
    return settings


def language_model_chain_names(config: Mapping[str, Any], names: Iterable[str]) -> list[str]:
    """The language models `names` and every model their fine-tunes start from, in first-seen order."""
    chain: dict[str, None] = {}
    for name in names:
        chain.update(dict.fromkeys(language_model_chain(config, name)))
    return list(chain)


def vote_base_models(config: Mapping[str, Any], name: str) -> str:
    """`--base-models lm=source ...`: the sourced language models under a vote's answer sets (a manifest records
    their ids; a fine-tuned model's weights are hashed as an artifact)."""
    language_models = config.get("language_models") or {}
    names = language_model_chain_names(config, [a.partition("/")[0] for a in config["votes"][name]["answers"]])
    return cli_flags({"base_models": [f"{lm}={language_models[lm]['source']}" for lm in names
                                      if "source" in language_models.get(lm, {})] or None})


def vote_config_slice(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    """What a vote submission depends on: the answers settings (prompts, sampling, extraction, seed), the vote and
    the language models its answer sets name, with the models their fine-tunes start from (no resources)."""
    language_models = {lm: without_resources(config["language_models"][lm]) for lm in language_model_chain_names(
        config, [answer_set.partition("/")[0] for answer_set in config["votes"][name]["answers"]])}
    return {"answers": without_resources(config.get("answers") or {}), "votes": {name: config["votes"][name]},
            "language_models": dict(sorted(language_models.items()))}


def retrieval_config_slice(config: Mapping[str, Any], pipeline: str) -> dict[str, Any]:
    """The part of the config that determines a retrieval pipeline's submission (no resources): its settings and
    its prepare function's code."""
    settings = config["retrieval"][pipeline]
    return {"retrieval": without_resources(settings), **({"prepare_code": prepare_code(settings["prepare"], f"retrieval.{pipeline}.prepare")}
                                                          if settings.get("prepare") else {})}


# ---- submission shapes: one table of what the registry and the manifests need of each ----


@dataclass(frozen=True)
class SubmissionShape:
    """A kind of submission: which config section names it, which of its entries write a submission
    (`{output_dir}/submissions/{name}/submission.csv` + `manifest.json`, each) and the config slice its manifest
    hashes. A record (`register:`) freezes any of them; verify rebuilds its manifest in scratch."""

    section: str
    describe: str  # what one is called in messages
    names: Callable[[Mapping[str, Any]], list[str]]
    config_slice: Callable[[Mapping[str, Any], str], dict[str, Any]]


def vote_submission_names(config: Mapping[str, Any]) -> list[str]:
    """Votes that write a test-set submission: every vote when test problems are configured (a file or the
    built-in set's `n_test_problems`), unless its `submit: false`."""
    answers = config.get("answers") or {}
    if not (answers.get("test_problems") or answers.get("n_test_problems")):
        return []
    return [name for name, entry in (config.get("votes") or {}).items() if entry.get("submit", True)]


SUBMISSION_SHAPES = {
    "classification": SubmissionShape("submissions", "submission", lambda config: list(config.get("submissions") or {}),
                                      submission_config_slice),
    "retrieval": SubmissionShape("retrieval", "retrieval pipeline", lambda config: list(config.get("retrieval") or {}),
                                 retrieval_config_slice),
    "answers": SubmissionShape("votes", "vote submission", vote_submission_names, vote_config_slice),
}


def submission_shapes(config: Mapping[str, Any]) -> dict[str, str]:
    """{submission name: its shape} for every submission the config writes."""
    return {name: shape for shape, entry in SUBMISSION_SHAPES.items() for name in entry.names(config)}


def manifest_config_slice(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The config slice submission `name`'s manifest hashes, whatever its shape."""
    return SUBMISSION_SHAPES[submission_shapes(config)[name]].config_slice(config, name)


# ---- flags per step ----


def fold_group_flags(config: Mapping[str, Any]) -> str:
    """`--group-column X` for group fold schemes; nothing otherwise."""
    folds = config["folds"]
    if folds["scheme"] not in ("group", "stratified_group"):
        return ""
    return cli_flags({"group_column": folds.get("group_column") or config["task"].get("group_column")})


def extra_data_flags(extra_files: Mapping[str, str]) -> str:
    """`--extra name=file` once per extra (soft-labelled) data set a model trains on."""
    return cli_flags([("extra", f"{name}={path}") for name, path in extra_files.items()])


def ensemble_flags(settings: Mapping[str, Any]) -> str:
    """`--member-top-k K` when the ensemble keeps only each member's top K classes."""
    return cli_flags({"member_top_k": int(settings["member_top_k"]) if settings.get("member_top_k") else None})


def threshold_flags(settings: Mapping[str, Any]) -> str:
    return cli_flags({
        "method": settings.get("method", "hybrid"),
        "weight": float(settings.get("weight", 0.5)),
        "target_rates": settings.get("target_rates") or None,
        "probe_f1": settings.get("probe_f1") or None,
    })


def threshold_refit_flags(ensembles: Mapping[str, Any], source: str, member_oof: Iterable[str]) -> str:
    """For thresholds on a `search` or `stack` ensemble: what rebuilds it without each outer fold (its members'
    OOF and settings), so the nested threshold score never sees a fold's labels; nothing for other sources."""
    entry = ensembles.get(source)
    if not isinstance(entry, Mapping) or entry.get("method") not in ("search", "stack"):
        return ""
    refit = {"names": ensemble_members(ensembles, source), "weights": ensemble_weights(ensembles, source),
             "method": entry["method"], "blend": entry.get("blend", "mean"), "member_top_k": entry.get("member_top_k"),
             "C": float(entry.get("C", 1.0))}
    return cli_flags({"refit": refit, "member_oof": list(member_oof)})


def submission_settings(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    """How submission `name` writes its CSV, defaults filled: the submission step's flags and a Kaggle package's
    notebook take them from here."""
    settings = config["submissions"][name]
    return {
        "format": settings.get("format", "argmax"),
        "id_column": settings.get("id_column", config["task"].get("id_column", "id")),
        "top_k": int(settings.get("top_k", 3)),
        "prediction_columns": settings.get("prediction_columns") or None,
        "separator": settings.get("separator") or " ",
    }


def submission_flags(config: Mapping[str, Any], name: str, thresholds_file: str | None) -> str:
    settings = config["submissions"][name]
    models, _ = source_dependencies(settings["source"], config.get("ensembles") or {})
    resolved = submission_settings(config, name)
    return cli_flags({
        **resolved,
        "separator": settings.get("separator") or None,
        "thresholds": thresholds_file if settings.get("thresholds") else None,
        "sample_submission": config["data"].get("sample_submission") or None,
        # a model without a source (tfidf_linear) is named by its kind
        "base_models": [f"{m}={config['models'][m].get('source', config['models'][m]['kind'])}" for m in models],
        "container": (config.get("container") or {}).get("train") or None,
        "config_slice": submission_config_slice(config, name),
    })


def generator_flags(settings: Mapping[str, Any], text_template: str | None) -> str:
    return " ".join(filter(None, [
        cli_flags({
            "fields": settings["fields"],
            "label_fields": settings.get("label_fields") or None,
            "template": settings["template"],
            "system": settings.get("system") or None,
            "text_template": text_template or None,
        }),
        cli_flags({key: settings[key] for key in GENERATOR_KEYS if key in settings}),
    ]))


def answer_flags(answers: Mapping[str, Any], prompt_name: str, split: str = "dev") -> str:
    """Flags of the answers step on the labelled dev problems (`dev`) or the unlabelled test problems (`test`)."""
    prompt = (answers.get("prompts") or {}).get(prompt_name)
    if isinstance(prompt, Mapping):  # a template per problem category; `default` serves the others
        templates = dict(prompt["templates"])
        # keywords keep their config order (the first matching category wins): a JSON list, not a sorted mapping
        keywords = json.dumps(list(prompt["keywords"].items())) if prompt.get("keywords") else None
        prompt_flags = cli_flags({"template": templates.pop("default", None), "category_column": prompt.get("by"),
                                  "category_templates": templates, "category_keywords": keywords})
    else:
        prompt_flags = cli_flags({"template": prompt or None})
    # `limit` trims the labelled dev set on a CPU; a test submission needs every problem answered
    keys = [key for key in ANSWER_KEYS if split == "dev" or key != "limit"]
    return " ".join(filter(None, [prompt_flags, cli_flags({key: answers[key] for key in keys if key in answers})]))


def vote_submission_flags(settings: Mapping[str, Any], config_slice: Mapping[str, Any]) -> str:
    return cli_flags({"strategy": settings.get("submit_strategy", "best"), "fallback": settings.get("fallback", "majority"),
                      "default_answer": settings.get("default_answer"), "id_column": settings.get("id_column"),
                      "answer_column": settings.get("answer_column"), "config_slice": dict(config_slice)})


def language_model_finetune_flags(name: str, finetune: Mapping[str, Any], answers: Mapping[str, Any],
                                  builtin_prompts: Mapping[str, str]) -> str:
    """Flags of a language model's fine-tune: the answers prompt it will answer with, and its settings."""
    prompt = finetune.get("prompt", "cot_boxed")
    template = (answers.get("prompts") or {}).get(prompt) or builtin_prompts.get(prompt)
    if isinstance(template, Mapping):
        raise OoflineError(f"config: language_models.{name}.finetune.prompt: {prompt!r} picks templates by category; "
                           "a fine-tune needs one template (name another prompt)")
    if template is None:
        raise OoflineError(f"config: language_models.{name}.finetune.prompt: {prompt!r} is neither built in "
                           f"({', '.join(builtin_prompts)}) nor in answers.prompts")
    return cli_flags({"template": template,
                      "settings": {key: finetune[key] for key in SFT_SETTING_KEYS if key in finetune},
                      "problem_column": finetune.get("problem_column"),
                      "solution_column": finetune.get("solution_column"), "system": answers.get("system")})


LANGUAGE_MODEL_KEYS = ("precision", "quantization", "temperature", "top_p", "max_new_tokens")


def language_model_flags(settings: Mapping[str, Any]) -> str:
    """A language model's own precision, quantization and sampling settings; placed after the step's
    flags, they win over the generator's or answers' values for that model."""
    return cli_flags({key: settings[key] for key in LANGUAGE_MODEL_KEYS if key in settings})


def vote_flags(settings: Mapping[str, Any]) -> str:
    return cli_flags({"strategies": settings.get("strategies") or None})


def optional_input_flag(flag: str, path: str | None) -> str:
    """`--flag path` when an optional input is there; nothing otherwise."""
    return cli_flags({flag: path or None})


# ---- retrieval ----

FINETUNE_ROLES = ("embedder", "reranker")


def resolved_pipeline(pipeline: Mapping[str, Any]) -> dict[str, Any]:
    """The pipeline with each iteration's embedder and reranker laid over `embedder_defaults` /
    `reranker_defaults` (an iteration's own keys win), so every step reads one complete fine-tune entry."""
    iterations = []
    for step in pipeline.get("iterations") or []:
        step = dict(step)
        for role in FINETUNE_ROLES:
            step[role] = {**(pipeline.get(f"{role}_defaults") or {}), **(step.get(role) or {})}
        iterations.append(step)
    return {**pipeline, "iterations": iterations}


def retrieval_uses_demo(pipeline: Mapping[str, Any]) -> bool:
    """A `demo` section wins over `files`, so a demo overlay can swap in the demo task."""
    return bool(pipeline.get("demo")) or not pipeline.get("files")


def retrieval_data_flags(pipeline: Mapping[str, Any], input_files: Mapping[str, str]) -> str:
    # a prepare function's rows (from the configured raw files or the demo's) are read as files, in oofline's columns
    if pipeline.get("prepare"):
        return cli_flags([("source", "files")] + [(key, input_files[key]) for key in RETRIEVAL_FILE_KEYS])
    if not retrieval_uses_demo(pipeline):
        return cli_flags([("source", "files")] + [(key, input_files[key]) for key in pipeline["files"]]
                         + [("columns", pipeline.get("columns") or None)])
    return retrieval_demo_flags(pipeline)


RETRIEVAL_FILE_KEYS = ("queries", "corpus", "test_queries")


def retrieval_demo_flags(pipeline: Mapping[str, Any]) -> str:
    return cli_flags([("source", "demo")] + [(key, value) for key, value in (pipeline.get("demo") or {}).items()
                                             if key in RETRIEVAL_DEMO_KEYS])


def retrieval_base_models(pipeline: Mapping[str, Any]) -> str:
    """`--base-models name=source ...`: the base models a retrieval pipeline's fine-tunes start from (a manifest
    records their ids, not their weights)."""
    return cli_flags({"base_models": [f"{name}={source}" for name, source in sorted((pipeline.get("models") or {}).items())]
                      or None})


def prepare_code(reference: str | None, where: str) -> str | None:
    """The digest of a prepare function's file (workflow_scripts.prepare): a rule param and a manifest entry."""
    from workflow_scripts.prepare import reference_digest

    return reference_digest(reference, Path.cwd(), where)


def model_reference(out_dir: str, pipeline: str, reference: str) -> tuple[str, str]:
    """(folder, suffix): a base model name -> its materialised folder; `iterJ` -> iteration J's fine-tuned
    embedder folder, whose model the steps read from `merged/`."""
    match = re.fullmatch(r"iter(\d+)", str(reference))
    if match:
        return f"{out_dir}/retrieval/{pipeline}/iter{match.group(1)}/embedder", "/merged"
    return f"{out_dir}/retrieval/{pipeline}/base/{reference}", ""


def mining_flags(pipeline: Mapping[str, Any], mining_settings: Mapping[str, Any], embedder: str, suffix: str) -> str:
    valid_fold = pipeline.get("valid_fold", 0)  # None: a final fit, every query is mined
    return " ".join(filter(None, [
        cli_flags(pipeline.get("embedder_inference", {})),
        cli_flags(mining_settings, MINING_KEYS),
        cli_flags({"valid_fold": int(valid_fold) if valid_fold is not None else None}),
        # a fine-tuned embedder's model is in its merged/ folder
        cli_flags({"embedder": embedder + suffix if suffix else None}),
    ]))


# A fine-tune trains on the instructions its model is scored with: the pipeline's inference settings
# fill the fine-tune's instruction keys it leaves unset (role -> {fine-tune key: inference key}).
INHERITED_INSTRUCTIONS = {
    "embedder": ("embedder_inference", {"query_instruction": "query_instruction",
                                        "query_instruction_format": "query_instruction_format"}),
    "reranker": ("reranker_inference", {"query_instruction": "rerank_query_instruction",
                                        "query_instruction_format": "rerank_query_instruction_format",
                                        "passage_instruction": "rerank_passage_instruction",
                                        "passage_instruction_format": "rerank_passage_instruction_format",
                                        "prompt": "rerank_prompt"}),
}


def finetune_flags(role_settings: Mapping[str, Any], pipeline: Mapping[str, Any] | None = None,
                   role: str | None = None) -> str:
    """A fine-tune's settings as flags (`base` and `mine` name its inputs instead), with the instructions and
    prompt of the pipeline's inference settings for `role` wherever the fine-tune sets none."""
    settings = {key: value for key, value in role_settings.items() if key not in ("base", "mine", "resources")}
    if pipeline is not None and role in INHERITED_INSTRUCTIONS:
        section, keys = INHERITED_INSTRUCTIONS[role]
        inference = pipeline.get(section) or {}
        inherited = {key: inference[source] for key, source in keys.items()
                     if key not in settings and inference.get(source) not in (None, "")}
        settings = {**inherited, **settings}
    return cli_flags(settings)


def evaluation_flags(pipeline: Mapping[str, Any], checkpoint_records: Mapping[str, str] | None = None) -> str:
    """`checkpoint_records`: {role: its fine-tune's checkpoints.json} for roles with select_checkpoint best."""
    valid_fold = pipeline.get("valid_fold", 0)  # None: a final fit, no held-out queries to score
    return " ".join(filter(None, [
        "--final-fit" if valid_fold is None else "",
        cli_flags({"valid_folds": int(valid_fold) if valid_fold is not None else None, "k": int(pipeline.get("k", 25)),
                   "top_n": int(pipeline.get("top_n", 50))}),
        cli_flags(pipeline.get("embedder_inference", {})),
        cli_flags(pipeline.get("reranker_inference", {})),
        cli_flags({f"{role}_checkpoints": path for role, path in (checkpoint_records or {}).items()}),
    ]))


def zero_shot_flags(pipeline: Mapping[str, Any]) -> str:
    """The zero-shot stage's evaluation: the embedder's inference settings and k (no reranker, so neither
    reranker_inference nor top_n reruns it)."""
    valid_fold = pipeline.get("valid_fold", 0)
    return " ".join(filter(None, [
        "--final-fit" if valid_fold is None else "",
        cli_flags({"valid_folds": int(valid_fold) if valid_fold is not None else None, "k": int(pipeline.get("k", 25))}),
        cli_flags(pipeline.get("embedder_inference", {})),
    ]))


def zero_shot_model(pipeline: Mapping[str, Any]) -> str:
    """The zero-shot stage's embedder: the base model iteration 0 mines with (already trusted to rank the corpus;
    in the Eedi recipe bge-en-icl, not the LLM that is fine-tuned)."""
    return pipeline["iterations"][0]["mine"]["embedder"]


def retrieval_submit(pipeline: Mapping[str, Any]) -> str:
    """The pipeline's `submit`: its own, else best (last on a final fit, where nothing is scored)."""
    from workflow_scripts.retrieval.stages import default_submit

    return pipeline.get("submit") or default_submit(pipeline.get("valid_fold", 0))


def builds_zero_shot(pipeline: Mapping[str, Any]) -> bool:
    """The zero-shot stage is scored wherever there is a valid fold, and ranked on a final fit that submits it."""
    return pipeline.get("valid_fold", 0) is not None or retrieval_submit(pipeline) == "zero_shot"


def retrieval_stage_plan(out_dir: str, name: str, pipeline: Mapping[str, Any]) -> list[dict]:
    """Every stage of pipeline `name` with its score.json, test rankings and model folders (stages.stage_plan)."""
    from workflow_scripts.retrieval.stages import stage_plan

    zero_shot = zero_shot_model(pipeline) if builds_zero_shot(pipeline) else None
    return stage_plan(out_dir, name, zero_shot, len(pipeline["iterations"]))


def selects_best_checkpoint(role_settings: Mapping[str, Any]) -> bool:
    """best scores epochs on the valid fold; last and a fixed epoch K score nothing."""
    return role_settings.get("select_checkpoint", "last") == "best"


def checkpoint_validation_flags(pipeline: Mapping[str, Any], role: str, inputs: Mapping[str, str]) -> str:
    """` --validation ...` (leading space; it ends the fine-tune's command line): the valid fold a
    `select_checkpoint: best` fine-tune scores its epochs on, with evaluate_retrieval's k, top_n and inference
    settings; a reranker reranks the candidates of `inputs["candidate_embedder"]` (this iteration's embedder)."""
    flags = [
        "--validation",
        cli_flags({"queries": inputs["queries"], "corpus": inputs["corpus"], "folds": inputs["folds"],
                   "valid_fold": int(pipeline.get("valid_fold", 0)), "k": int(pipeline.get("k", 25)),
                   "top_n": int(pipeline.get("top_n", 50))}),
        cli_flags(pipeline.get("embedder_inference", {})),
    ]
    if role == "reranker":
        flags += [cli_flags(pipeline.get("reranker_inference", {})),
                  cli_flags({"candidate_embedder": inputs["candidate_embedder"] + "/merged"})]
    return " " + " ".join(filter(None, flags))


# ---- Kaggle code-competition packages ----

LORA_KINDS = ("decoder_lora", "encoder_lora")
# the folder a model kind's fold step writes (models/{model}/{split}/...)
MODEL_FOLDERS = {"tfidf_linear": "linear", "embedding_head": "head", "encoder_full": "model"}


KAGGLE_DEFAULTS = {"title": None, "test": "test.csv", "sample_submission": "sample_submission.csv",
                   "accelerator": "t4x2", "time_limit_hours": 9, "hidden_test_rows": None, "members": "adapter",
                   "wheels": [], "python_version": "3.11", "platform": None, "glibc": "2.31", "cpu_threads": 4,
                   "speed_factor": None, "read_mb_per_second": None, "license": None}


def kaggle_settings(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    """A package's `kaggle:` entry with its defaults filled."""
    return {**KAGGLE_DEFAULTS, **config["kaggle"][name]}


def kaggle_package_spec(config: Mapping[str, Any], out_dir: str, name: str, local_sources: Iterable[str]
                        ) -> dict[str, Any]:
    """What a Kaggle package of submission `name` copies and how it runs: every member's fold (or full-data)
    model folders, the bases adapters and embedding heads load, the ensembles' weights, the thresholds, the
    submission's settings and the kaggle block. Paths under `out_dir`; the rule's inputs are its paths."""
    settings = config["submissions"][name]
    kaggle = kaggle_settings(config, name)
    source = settings["source"]
    models, ensembles = source_dependencies(source, config.get("ensembles") or {})
    local_sources = tuple(local_sources)
    members = {}
    for model in models:
        entry = config["models"][model]
        kind = entry["kind"]
        test_source = entry.get("test_predictions", "folds")
        folds = entry.get("folds") or list(range(config["folds"]["n_folds"]))
        splits = ["full"] if test_source == "full" else [f"fold{k}" for k in folds]
        lora = kind in LORA_KINDS
        folder = ("merged" if kaggle["members"] == "merged" else "adapter") if lora else MODEL_FOLDERS.get(kind, "model")
        needs_base = (lora and kaggle["members"] != "merged") or kind == "embedding_head"
        # what predictions depend on; no run settings (resources, logging, inference batch sizes), so those rebuild no
        # package: the package takes the batch sizes the shipped predictions were made with from their speed records
        member_config = ModelSpec.from_config(entry).prediction_config()
        members[model] = {
            "kind": kind, "config": member_config, "test_source": test_source,
            "splits": {split: f"{out_dir}/models/{model}/{split}/{folder}" for split in splits},
            "base": ((f"{out_dir}/models/{model}/base" if entry.get("source") in local_sources else entry["source"])
                     if needs_base else None),
            "test_predictions": {split: f"{out_dir}/predictions/{model}/{split}/test.parquet" for split in splits},
            "embeddings": f"{out_dir}/embeddings/{model}.safetensors" if kind == "embedding_head" else None,
            # the model whose card states the license of the weights shipped for this member (read, not an input: a
            # merged or fully fine-tuned member ships no base, and its base changes only with its source)
            "license_from": ((f"{out_dir}/models/{model}/base" if entry.get("source") in local_sources
                              else entry["source"]) if entry.get("source") else None),
        }
    return {
        "name": name, "submission": name, "source": source, "task": config["task"], "kaggle": kaggle,
        "submission_settings": submission_settings(config, name),
        "config_slice": submission_config_slice(config, name),
        "models": members,
        "ensembles": {ensemble: f"{out_dir}/ensembles/{ensemble}/weights.json" for ensemble in ensembles},
        "thresholds": f"{out_dir}/thresholds/{source}.json" if settings.get("thresholds") else None,
        "labels": f"{out_dir}/labels.json",
        "manifest": f"{out_dir}/submissions/{name}/manifest.json",
        "submission_csv": f"{out_dir}/submissions/{name}/submission.csv",
        "public_test": f"{out_dir}/data/test.parquet",
        "train_data": f"{out_dir}/data/train.parquet",  # its schema: how training read the template's columns
        # data.prepare: shipped, and run by the notebook on the raw hidden test
        "prepare": ({"reference": config["data"]["prepare"], "code": prepare_code(config["data"]["prepare"], "data.prepare")}
                    if (config.get("data") or {}).get("prepare") else None),
    }


def kaggle_package_inputs(spec: Mapping[str, Any], local_sources: Iterable[str]) -> list[str]:
    """The files and folders a package copies (its rule's inputs): it is stale exactly when they are."""
    paths = [spec["labels"], spec["manifest"], spec["submission_csv"], spec["public_test"], spec["train_data"],
             *spec["ensembles"].values()]
    paths += [spec["thresholds"]] if spec["thresholds"] else []
    from workflow_scripts.io import inference_speed_path

    for member in spec["models"].values():
        paths += list(member["splits"].values()) + list(member["test_predictions"].values())
        paths += [member["embeddings"]] if member["embeddings"] else []
        # the speed records the runtime plan reads: declared outputs of the steps that predict the test rows
        predicted = list(member["test_predictions"].values()) + ([member["embeddings"]] if member["embeddings"] else [])
        paths += [str(inference_speed_path(path)) for path in predicted]
        if member["base"] and member["config"].get("source") in tuple(local_sources):
            paths.append(member["base"])  # a materialised base; hub ids and local folders are no rule's output
    return paths
