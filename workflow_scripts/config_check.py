"""Validate the workflow config before any job runs: one line per problem, naming the key.

Snakemake's own `validate` dumps the whole schema on failure; users need the key and what was
expected, so we run jsonschema ourselves and phrase each error as `config: <key path>: <problem>`.
"""
from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator

from workflow_scripts.errors import OoflineError
from workflow_scripts.model_spec import SPEC_BY_KIND, config_defaults, kind_keys, unknown_key_problem
from workflow_scripts.prepare_model import LOCAL_SOURCES
from workflow_scripts.sweeps import ENSEMBLE_SWEEP_KEYS, MODEL_SWEEP_KEYS, expand_sweeps

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "config.schema.yaml"
PACKAGED_SOURCES = LOCAL_SOURCES
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


def load_schema() -> dict[str, Any]:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def key_path(parts) -> str:
    """`retrieval.eedi.iterations[0].mine` from the parts of a path into the config."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _key_path(error) -> str:
    return key_path(error.absolute_path)


def _problem_lines(error) -> list[str]:
    """One line per problem; an object with several unknown keys gives one line per key."""
    if error.validator == "additionalProperties" and error.validator_value is False:
        allowed = ", ".join(sorted(error.schema.get("properties", {})))
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        return [f"config: {_key_path(error)}: unknown key {key!r} (allowed: {allowed})" for key in extra]
    return [f"config: {_key_path(error)}: {_describe(error)}"]


def _describe(error) -> str:
    if error.validator == "enum":
        return f"{error.instance!r} is not one of {error.validator_value}"
    if error.validator == "pattern":
        return f"{error.instance!r} has characters that are not allowed (expected pattern {error.validator_value})"
    return error.message


def _fill_defaults(schema: dict[str, Any], instance: dict[str, Any]) -> None:
    for key, sub in schema.get("properties", {}).items():
        if "default" in sub and key not in instance:
            instance[key] = copy.deepcopy(sub["default"])
        if isinstance(instance.get(key), dict) and sub.get("type") == "object":
            _fill_defaults(sub, instance[key])


def _problems_message(problems: list[str]) -> str:
    """One problem: its line alone; several: a header and one line each."""
    return problems[0] if len(problems) == 1 else f"invalid config: {len(problems)} problems\n" + "\n".join(problems)


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        merged[key] = deep_merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else copy.deepcopy(value)
    return merged


def with_model_defaults(entry: Any, model_defaults: dict[str, Any]) -> Any:
    """A model entry over its kind's defaults and the `model_defaults` keys that its kind has (one place
    for defaults: the kind's spec); an entry without a known kind is left for the schema to report."""
    kind = entry.get("kind", model_defaults.get("kind")) if isinstance(entry, dict) else None
    if kind not in SPEC_BY_KIND:
        return entry
    keys = kind_keys(kind)  # `kind` itself among them: model_defaults may give every model its kind
    shared = {key: value for key, value in model_defaults.items() if key in keys}
    return deep_merge(deep_merge(config_defaults(kind), shared), entry)


def check_config(config: dict[str, Any], base_dir: str | Path = ".") -> dict[str, Any]:
    """Return the normalised config (sweeps expanded, defaults filled, model defaults merged) or raise one
    OoflineError listing every problem, one per line."""
    return checked_config_and_sweeps(config, base_dir)[0]


def checked_config_and_sweeps(config: dict[str, Any], base_dir: str | Path = ".") -> tuple[dict[str, Any], dict]:
    """check_config's config and the sweeps it expanded ({name: workflow_scripts.sweeps.Sweep})."""
    config = copy.deepcopy(config)
    schema = load_schema()
    # sweeps (grids, variants, seeds) expand into ordinary models and ensembles first; every check below sees
    # those, and a problem of an expanded entry is phrased on the key the user wrote
    problems = sweep_key_problems(config, schema)
    if problems:
        raise OoflineError(_problems_message(problems))
    expansion = expand_sweeps(config)
    config = expansion.config
    validator = Draft202012Validator(schema)
    models = config.get("models") or {}
    model_defaults = config.get("model_defaults") or {}
    # a bad model_defaults is reported once, there, not again in every model that would inherit it
    defaults_valid = validator.is_valid({"model_defaults": model_defaults})
    shared = model_defaults if defaults_valid and isinstance(model_defaults, dict) else {}
    if isinstance(models, dict):
        config["models"] = {name: with_model_defaults(entry, shared) for name, entry in models.items()}
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    unknown_at = {tuple(e.absolute_path) for e in errors if e.validator == "additionalProperties"}
    # a misspelt required key is one problem: the unknown-key line already lists the allowed keys
    errors = [e for e in errors if not (e.validator == "required" and tuple(e.absolute_path) in unknown_at)]
    problems = [line for error in errors for line in _problem_lines(error)]
    if problems:
        raise OoflineError(_problems_message(_user_problems(problems, expansion)))
    _fill_defaults(schema, config)
    problems = semantic_problems(config, Path(base_dir))
    if problems:
        raise OoflineError(_problems_message(_user_problems(problems, expansion)))
    return config, expansion.sweeps


def _user_problems(problems: list[str], expansion) -> list[str]:
    """Problems of expanded sweep entries on the keys the user wrote, each once (a grid's variants share them)."""
    return list(dict.fromkeys(expansion.user_problem(line) for line in problems))


def sweep_key_problems(config: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    """The sweep keys of models and ensembles (grid, variants, seeds, select) against the schema's
    model_sweep / ensemble_sweep definitions, before they expand."""
    problems = []
    for section, definition, keys in (("models", "model_sweep", MODEL_SWEEP_KEYS),
                                      ("ensembles", "ensemble_sweep", ENSEMBLE_SWEEP_KEYS)):
        entries = config.get(section)
        if not isinstance(entries, dict):
            continue
        instance = {name: {key: entry[key] for key in keys if key in entry}
                    for name, entry in entries.items() if isinstance(entry, dict) and any(key in entry for key in keys)}
        if not instance:
            continue
        validator = Draft202012Validator({"definitions": schema["definitions"], "type": "object",
                                          "additionalProperties": {"$ref": f"#/definitions/{definition}"}})
        for error in sorted(validator.iter_errors(instance), key=lambda e: list(map(str, e.absolute_path))):
            problems.append(f"config: {key_path([section, *error.absolute_path])}: {_describe(error)}")
    return problems


def semantic_problems(config: dict[str, Any], base_dir: Path) -> list[str]:
    """Cross-key checks the schema cannot express."""
    problems = []
    task = config.get("task")
    if task:
        needed = {"multiclass": "label_column", "multilabel": "label_columns", "multihead": "heads"}[task["type"]]
        if needed not in task:
            problems.append(f"config: task.{needed}: required for task.type {task['type']}")
        if config.get("folds", {}).get("scheme") in ("group", "stratified_group") and not (
                config["folds"].get("group_column") or task.get("group_column")):
            problems.append("config: folds.group_column: required for a group fold scheme")
    if config.get("models") and not task:
        problems.append("config: task: required when models are configured")
    if task and not config.get("data"):
        problems.append("config: data.train: required (the competition's training file)")
    for name, model in (config.get("models") or {}).items():
        if name == "prior":  # results/scores/prior.json is the prior baseline every run scores
            problems.append("config: models.prior: the name 'prior' is reserved for the prior baseline; rename the model")
        source = model.get("source")
        if source is None or "source" not in kind_keys(model["kind"]):  # tfidf_linear reads no model
            pass
        elif source in PACKAGED_SOURCES or HUB_ID.match(source):
            pass
        elif source.startswith(("packaged:", "tiny:")):
            problems.append(f"config: models.{name}.source: unknown {source!r} (expected one of {', '.join(PACKAGED_SOURCES)}, a folder or org/name)")
        else:
            path = (base_dir / source) if not Path(source).is_absolute() else Path(source)
            if not (path / "config.json").exists():
                problems.append(f"config: models.{name}.source: {source!r} is not a model folder (no config.json there) "
                                "nor a hub id like org/name")
        # a key its kind does not use would be a silent no-op (model_defaults apply only the kind's own keys)
        problems += [f"config: models.{name}.{key}: {unknown_key_problem(model['kind'], key)}"
                     for key in model if key not in kind_keys(model["kind"])]
        if model.get("select_epoch") == "best":
            if model.get("train_full"):
                # a fallback to the last epoch would give the full-data model a schedule no CV measured
                problems.append(f"config: models.{name}.select_epoch: best cannot pick an epoch for the full-data "
                                f"model (train_full: it has no held-out fold); drop train_full, or use "
                                f"select_epoch: last with the epochs the fold models chose")
        if "test_predictions" in kind_keys(model["kind"]) and model.get("test_predictions") == "full" and not model.get("train_full"):
            problems.append(f"config: models.{name}.test_predictions: 'full' needs models.{name}.train_full: true")
        n_folds = config.get("folds", {}).get("n_folds", 5)
        bad_folds = [f for f in model.get("folds", []) if f >= n_folds]
        if bad_folds:
            problems.append(f"config: models.{name}.folds: {bad_folds} not below folds.n_folds={n_folds}")
    from workflow_scripts.retrieval.checkpoints import fixed_epoch
    from workflow_scripts.rule_params import FINETUNE_ROLES, resolved_pipeline

    for name, pipeline in (config.get("retrieval") or {}).items():
        valid_fold, n_folds = pipeline.get("valid_fold", 0), pipeline.get("n_folds", 5)
        if valid_fold is not None and valid_fold >= n_folds:
            problems.append(f"config: retrieval.{name}.valid_fold: {valid_fold} is not below n_folds={n_folds} "
                            "(null trains on every query)")
        problems += retrieval_reference_problems(name, pipeline)
        if "submit" in pipeline:
            from workflow_scripts.retrieval.stages import submit_problem

            problem = submit_problem(pipeline["submit"], len(pipeline["iterations"]), valid_fold)
            if problem:
                problems.append(f"config: retrieval.{name}.submit: {problem}")
        if pipeline.get("columns") and not pipeline.get("files"):  # a demo overlay over files leaves them unread
            problems.append(f"config: retrieval.{name}.columns: renames the columns of retrieval.{name}.files, "
                            "which are not given")
        for index, step in enumerate(resolved_pipeline(pipeline)["iterations"]):
            for role in FINETUNE_ROLES:
                settings = step[role]
                key = f"config: retrieval.{name}.iterations[{index}].{role}"
                for required in ("base", "model_class"):
                    if required not in settings:
                        problems.append(f"{key}.{required}: missing (set it there or in "
                                        f"retrieval.{name}.{role}_defaults)")
                choice, epochs = settings.get("select_checkpoint", "last"), settings.get("epochs", 1)
                if choice == "last":
                    continue
                if fixed_epoch(choice) is None and choice != "best":
                    problems.append(f"{key}.select_checkpoint: {choice!r} is not last, best or a whole epoch "
                                    "number K (keep epoch K, 1 to epochs)")
                    continue
                if choice == "best" and valid_fold is None:
                    problems.append(f"{key}.select_checkpoint: best chooses an epoch on the valid fold, but "
                                    f"retrieval.{name}.valid_fold is null (a final fit has none; use last, or "
                                    "the epoch K chosen beforehand)")
                if not float(epochs).is_integer():
                    problems.append(f"{key}.epochs: {epochs} is not a whole number "
                                    f"(select_checkpoint: {choice} keeps one checkpoint per epoch)")
                elif fixed_epoch(choice) is not None and fixed_epoch(choice) > epochs:
                    problems.append(f"{key}.select_checkpoint: {choice} is past the last epoch "
                                    f"(epochs: {epochs:g}; it keeps epoch K of 1 to epochs)")
    if config.get("models") and not problems:  # a chain is read from model keys that passed their own checks
        from workflow_scripts.generated.teacher_labels import chain_problems

        problems += chain_problems(config)
    problems += prepare_problems(config, base_dir)
    problems += resource_problems(config)
    problems += attention_problems(config, base_dir)
    problems += offline_hub_problems(config, base_dir)
    problems += output_problems(config, base_dir)
    return problems


def retrieval_reference_problems(name: str, pipeline: dict[str, Any]) -> list[str]:
    """Every model a retrieval iteration names is a base under `models` or an iteration's embedder built before
    it is needed: a mining embedder, an embedder base and a teacher from an earlier iteration; a reranker may
    also start from this iteration's embedder (`base: iterJ`, J up to its own)."""
    import re

    from workflow_scripts.rule_params import resolved_pipeline

    models = set(pipeline.get("models") or {})
    problems = []
    for index, step in enumerate(resolved_pipeline(pipeline)["iterations"]):
        references = [("mine.embedder", (step.get("mine") or {}).get("embedder"), index - 1),
                      ("embedder.base", step["embedder"].get("base"), index - 1),
                      ("reranker.base", step["reranker"].get("base"), index),
                      ("teacher", step.get("teacher"), index - 1)]
        for key, reference, latest in references:
            if reference is None:
                continue
            match = re.fullmatch(r"iter(\d+)", str(reference))
            where = f"config: retrieval.{name}.iterations[{index}].{key}"
            if match is None and key != "teacher":
                if reference not in models:
                    known = ", ".join(sorted(models)) or "none"
                    problems.append(f"{where}: {reference!r} is neither a name under retrieval.{name}.models "
                                    f"({known}) nor iterJ")
            elif match is not None and int(match.group(1)) > latest:
                allowed = "this or an earlier iteration" if key == "reranker.base" else "an earlier iteration"
                problems.append(f"{where}: {reference} is not built yet ({key} may name {allowed})")
    return problems


def prepare_problems(config: dict[str, Any], base_dir: Path) -> list[str]:
    """A prepare function's file exists (its function is checked when the step imports it, before any model runs);
    a retrieval demo writes raw files for a prepare function exactly when the pipeline has one."""
    from workflow_scripts.prepare import parse_reference, resolve_file
    from workflow_scripts.rule_params import retrieval_uses_demo

    references = [("data.prepare", (config.get("data") or {}).get("prepare"))]
    problems = []
    for name, pipeline in (config.get("retrieval") or {}).items():
        references.append((f"retrieval.{name}.prepare", pipeline.get("prepare")))
        wide = (pipeline.get("demo") or {}).get("format", "rows") == "eedi_wide"
        if retrieval_uses_demo(pipeline) and wide != bool(pipeline.get("prepare")):
            problems.append(f"config: retrieval.{name}.demo.format: " + (
                "eedi_wide writes raw files for a prepare function, but the pipeline has no `prepare`" if wide else
                f"the demo writes task rows, but retrieval.{name}.prepare expects raw files: set demo.format: "
                "eedi_wide (the demo's raw files in Eedi's wide layout) or prepare: null"))
    for where, reference in references:
        if reference:
            try:
                resolve_file(parse_reference(reference, where)[0], base_dir, where)
            except OoflineError as error:
                problems.append(str(error))
    return problems


PACKAGED_MODEL_TYPES = {"packaged:minilm": "bert", "packaged:smollm2": "llama"}


def source_model_type(source: str, base_dir: Path) -> str | None:
    """config.json's model_type of a model source, where it is known without loading anything: a packaged or
    tiny source, a local folder, or a hub id already in the local cache; else None."""
    import json

    from workflow_scripts.tiny_models import MODEL_TYPES

    if source in PACKAGED_MODEL_TYPES:
        return PACKAGED_MODEL_TYPES[source]
    if source.startswith("tiny:"):
        return MODEL_TYPES.get(source[len("tiny:"):])
    path = Path(source).expanduser()
    path = path if path.is_absolute() else base_dir / path
    config_file = path / "config.json"
    if not config_file.exists() and HUB_ID.match(source):
        from huggingface_hub import try_to_load_from_cache

        name, _, revision = source.partition("@")
        cached = try_to_load_from_cache(name, "config.json", cache_dir=hub_cache_dir(dict(os.environ)),
                                        revision=revision or None)
        config_file = Path(cached) if isinstance(cached, str) else config_file
    try:
        return json.loads(config_file.read_text()).get("model_type")
    except (OSError, ValueError):
        return None


def attention_problems(config: dict[str, Any], base_dir: Path) -> list[str]:
    """An `attn_implementation` the model's family cannot run (sdpa on DeBERTa-v2/v3 or Gemma-2) is one line
    here, not a ValueError from transformers in every training job."""
    from workflow_scripts.modeling import supported_attn_implementations

    problems = []
    for name, model in (config.get("models") or {}).items():
        kernel, source = model.get("attn_implementation"), model.get("source")
        if kernel is None or not isinstance(source, str):
            continue
        model_type = source_model_type(source, base_dir)
        supported = supported_attn_implementations(model_type) if model_type else None
        if supported is not None and kernel not in supported:
            problems.append(f"config: models.{name}.attn_implementation: {kernel} is not available for {source} "
                            f"(model_type {model_type}; it runs {' or '.join(supported)}); leave the key out to let "
                            "transformers choose")
    return problems


def resource_problems(config: dict[str, Any]) -> list[str]:
    """`gres` and `gpu`/`gpu_model` both set would make the Slurm plugin request GPUs twice."""
    blocks = [(f"{section}.{name}", entry.get("resources") or {})
              for section in ("models", "generators", "retrieval")
              for name, entry in (config.get(section) or {}).items() if isinstance(entry, dict)]
    blocks.append(("answers", (config.get("answers") or {}).get("resources") or {}))
    return [f"config: {where}.resources.gres: set either gres or gpu/gpu_model, not both "
            "(Slurm would get --gres and --gpus)"
            for where, resources in blocks if resources.get("gres") and (resources.get("gpu") or resources.get("gpu_model"))]


def output_problems(config: dict[str, Any], base_dir: Path = Path(".")) -> list[str]:
    """Ensembles, thresholds, submissions and records must name things that exist."""
    from workflow_scripts.ensemble import check_ensemble_config
    from workflow_scripts.rule_params import ensemble_cycle_problems
    from workflow_scripts.submission import FORMATS

    problems = []
    models = list(config.get("models") or {})
    ensembles = config.get("ensembles") or {}
    sources = models + list(ensembles)
    well_formed = {}
    for name, entry in ensembles.items():
        try:
            # members may be models or other ensembles
            check_ensemble_config(name, entry, sources)
            well_formed[name] = entry
        except OoflineError as error:
            problems.append(f"config: {error}")
    problems += ensemble_cycle_problems(well_formed)
    for name, entry in ensembles.items():
        if isinstance(entry, dict) and entry.get("method") in FITTED_METHODS:
            for member in _member_names(entry):
                below = searched_ensembles(member, ensembles)
                if below:
                    problems.append(
                        f"config: ensembles.{name}.members: {member!r} holds the {ensembles[below[0]]['method']} "
                        f"ensemble {below[0]!r}: a {entry['method']} over it fits each fold on values that saw that "
                        f"fold's labels (use method mean or rank in ensembles.{name} or in ensembles.{below[0]})")
    task_type = (config.get("task") or {}).get("type")
    for name, entry in (config.get("thresholds") or {}).items():
        # a search or stack itself is refitted without each outer fold for the nested threshold score; one held
        # inside a mean or rank ensemble is not
        below = [e for e in searched_ensembles(name, ensembles) if e != name]
        if below:
            problems.append(f"config: thresholds.{name}: {name!r} holds the {ensembles[below[0]]['method']} ensemble "
                            f"{below[0]!r}: thresholds tuned "
                            "on it would score each fold with weights that saw that fold's labels (threshold "
                            f"{below[0]!r} itself: it is refitted without each fold for the nested score)")
        if name not in sources:
            problems.append(f"config: thresholds.{name}: no model or ensemble is called {name!r} (have {sources})")
        if task_type == "multiclass":
            problems.append(f"config: thresholds.{name}: a multiclass task has no binary columns to threshold (argmax is used)")
    for name, entry in (config.get("submissions") or {}).items():
        entry = entry or {}
        if entry.get("source") not in sources:
            problems.append(f"config: submissions.{name}.source: {entry.get('source')!r} is not a model or ensemble (have {sources})")
        if entry.get("format", "argmax") not in FORMATS:
            problems.append(f"config: submissions.{name}.format: {entry.get('format')!r} is not one of {list(FORMATS)}")
        if entry.get("thresholds") and entry.get("source") not in (config.get("thresholds") or {}):
            problems.append(f"config: submissions.{name}.thresholds: add thresholds.{entry.get('source')} to tune them")
        for key, formats in SUBMISSION_FORMAT_KEYS.items():  # a key its format does not read is no silent no-op
            if key in entry and entry.get("format", "argmax") in FORMATS and entry.get("format", "argmax") not in formats:
                problems.append(f"config: submissions.{name}.{key}: a key of {' and '.join(formats)} submissions "
                                f"(this one's format is {entry.get('format', 'argmax')})")
    for name in sorted(set(config.get("submissions") or {}) & set(config.get("retrieval") or {})):
        problems.append(f"config: submissions.{name}: retrieval.{name} also writes submissions/{name}/ (rename one)")
    problems += vote_problems(config)
    problems += answer_prompt_problems(config, base_dir)
    problems += language_model_problems(config)
    problems += register_problems(config, base_dir)
    problems += kaggle_problems(config)
    return problems


def register_problems(config: dict[str, Any], base_dir: Path = Path(".")) -> list[str]:
    """A record names a submission of any shape (a classification submission, a retrieval pipeline, a vote that
    submits) and is not the name of another competition's record in the registry folder."""
    from workflow_scripts.registry import competition_of, record_competition
    from workflow_scripts.rule_params import SUBMISSION_SHAPES, submission_shapes

    shapes = submission_shapes(config)
    folder = base_dir / config.get("registry_dir", "submissions")
    problems = []
    for record, submission in (config.get("register") or {}).items():
        if submission not in shapes:
            have = "; ".join(f"{shape.describe}s: {sorted(shape.names(config))}" for shape in SUBMISSION_SHAPES.values())
            unsubmitted = (f" (votes.{submission} writes no submission: it needs answers.test_problems or "
                           "answers.n_test_problems, and submit: true)" if submission in (config.get("votes") or {}) else "")
            problems.append(f"config: register.{record}: no submission is called {submission!r}{unsubmitted} ({have})")
            continue
        existing = folder / f"{record}.yaml"
        if existing.is_file() and record_competition(existing) != competition_of(config):
            problems.append(f"config: register.{record}: {Path(config.get('registry_dir', 'submissions'), record + '.yaml')} is a record of competition "
                            f"{record_competition(existing)!r}, not this config's {competition_of(config)!r} "
                            "(records are written once: name this one differently)")
    return problems


def kaggle_problems(config: dict[str, Any]) -> list[str]:
    """A package names one submission (classification, retrieval or a vote's answers) or one frozen record."""
    from workflow_scripts.kaggle import shapes

    submissions = shapes.submission_names(config)
    folder = Path(config.get("registry_dir", "submissions"))
    records = set(config.get("register") or {}) | ({p.stem for p in folder.glob("*.yaml")} if folder.is_dir() else set())
    problems = []
    for name in config.get("kaggle") or {}:
        if name in submissions and name in records:
            problems.append(f"config: kaggle.{name}: both a submission and a record are called {name!r} (rename one)")
        elif name not in submissions and name not in records:
            problems.append(f"config: kaggle.{name}: no submission or register: record is called {name!r} "
                            f"(submissions: {sorted(submissions)}, records: {sorted(records)})")
        elif name in submissions:
            problems += shapes.function(submissions[name], "problems")(config, name)
    return problems


def vote_problems(config: dict[str, Any]) -> list[str]:
    """Votes name answer sets of configured language models, and a vote's submission has its own folder."""
    problems = []
    language_models = config.get("language_models") or {}
    prompts = set((config.get("answers") or {}).get("prompts") or {}) | {"cot_boxed", "cot_final", "direct"}
    others = set(config.get("submissions") or {}) | set(config.get("retrieval") or {})
    for name, entry in (config.get("votes") or {}).items():
        for answer_set in entry.get("answers", []):
            model, _, prompt = answer_set.partition("/")
            if model not in language_models:
                problems.append(f"config: votes.{name}.answers: {answer_set!r} names no language model {model!r} "
                                f"(have {sorted(language_models)})")
            if prompt not in prompts:
                problems.append(f"config: votes.{name}.answers: {answer_set!r} names no prompt {prompt!r} "
                                f"(have {sorted(prompts)})")
        if name in others:
            problems.append(f"config: votes.{name}: a submission or retrieval pipeline has the same name; "
                            f"both would write submissions/{name}/")
    return problems


# the columns of the built-in problem sets (generated.math_demo), which exist only once their rule ran
BUILT_IN_PROBLEM_COLUMNS = {"dev": ("id", "problem", "answer", "kind"), "test": ("id", "problem", "kind")}
BUILT_IN_FILES = {"dev": "math_problems.parquet", "test": "math_test_problems.parquet"}


def table_columns(path: Path) -> list[str] | None:
    """A csv's or parquet's column names, read without its rows; None when it is not there (yet) or unreadable."""
    import polars as pl

    try:
        if path.suffix == ".parquet":
            return list(pl.read_parquet_schema(path))
        if path.suffix == ".csv":
            return pl.read_csv(path, n_rows=0).columns
    except (OSError, pl.exceptions.PolarsError):
        return None
    return None


def answer_prompt_problems(config: dict[str, Any], base_dir: Path) -> list[str]:
    """A prompt that picks templates by category names its category one way (`by` a column, or `keywords`), and the
    problems files it answers have that column and the problem column: said here, before any job, not by every
    answers job at run time (AIMO's test has only id and problem)."""
    answers = config.get("answers") or {}
    prompts = answers.get("prompts") or {}
    problems = []
    for name, prompt in prompts.items():
        if isinstance(prompt, dict) and bool(prompt.get("by")) == bool(prompt.get("keywords")):
            problems.append(f"config: answers.prompts.{name}: set `by` (a problems column holding each problem's "
                            "category) or `keywords` (category -> words found in the problem text), not "
                            + ("both" if prompt.get("by") else "neither"))
    if problems or not answers:
        return problems
    from workflow_scripts.rule_params import vote_submission_names

    votes = config.get("votes") or {}
    used = {"dev": {a.partition("/")[2] for entry in votes.values() for a in entry.get("answers", [])},
            "test": {a.partition("/")[2] for v in vote_submission_names(config) for a in votes[v].get("answers", [])}}
    out_dir = config.get("output_dir", "results")
    files = {"dev": ("answers.problems", answers.get("problems") or f"{out_dir}/data/math_problems.parquet"),
             "test": ("answers.test_problems", answers.get("test_problems") or f"{out_dir}/data/math_test_problems.parquet")}
    problem_column = answers.get("problem_column", "problem")
    for split, (key, file) in files.items():
        if not used[split]:
            continue
        path = Path(file) if Path(file).is_absolute() else base_dir / file
        columns = table_columns(path)
        if columns is None and Path(file).name == BUILT_IN_FILES[split]:
            columns = list(BUILT_IN_PROBLEM_COLUMNS[split])  # the built-in set, made by its rule
        if columns is None:
            continue  # not there yet: the first job that reads it says so
        if problem_column not in columns:
            problems.append(f"config: answers.problem_column: {problem_column!r} is not a column of {key} {file} "
                            f"(it has {', '.join(columns)})")
        for prompt_name in sorted(used[split]):
            prompt = prompts.get(prompt_name)
            if isinstance(prompt, dict) and prompt.get("by") and prompt["by"] not in columns:
                problems.append(f"config: answers.prompts.{prompt_name}.by: column {prompt['by']!r} is not in {key} "
                                f"{file} (it has {', '.join(columns)}); name a column it has, or find the category "
                                "from the problem text with `keywords: {category: [words]}`")
    return problems


def language_model_problems(config: dict[str, Any]) -> list[str]:
    """A fine-tuned language model starts from another configured one, with no cycle of fine-tunes."""
    language_models = config.get("language_models") or {}
    problems = []
    for name, entry in language_models.items():
        seen, current = [name], entry
        while "finetune" in current:
            base = current["finetune"]["base"]
            if base not in language_models:
                problems.append(f"config: language_models.{seen[-1]}.finetune.base: no language model is called {base!r} "
                                f"(have {sorted(language_models)})")
                break
            if base in seen:
                problems.append(f"config: language_models.{name}.finetune.base: fine-tunes form a cycle "
                                f"({' -> '.join(seen + [base])})")
                break
            seen.append(base)
            current = language_models[base]
    return sorted(set(problems))


def _member_names(entry: Any) -> list[str]:
    members = entry.get("members") if isinstance(entry, dict) else None
    return list(members) if isinstance(members, (list, dict)) else []


# submission keys that only some formats read
SUBMISSION_FORMAT_KEYS = {"top_k": ("top_k",), "separator": ("top_k", "joined")}
# ensembles fitted on OOF labels: their other folds' rows carry values fitted with fold f's labels
FITTED_METHODS = ("search", "stack")


def searched_ensembles(source: str, ensembles: dict[str, Any], seen: frozenset = frozenset()) -> list[str]:
    """The fitted (`search` or `stack`) ensembles in `source` (itself first, then its members' recursively);
    [] for a model."""
    entry = ensembles.get(source)
    if not isinstance(entry, dict) or source in seen:  # a model, or a cycle (reported elsewhere)
        return []
    found = [source] if entry.get("method") in FITTED_METHODS else []
    for member in _member_names(entry):
        found += [e for e in searched_ensembles(member, ensembles, seen | {source}) if e not in found]
    return found


def hub_cache_dir(env: dict[str, str]) -> Path:
    """The Hugging Face hub cache the steps will read (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache)."""
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"]).expanduser()
    home = Path(env["HF_HOME"]).expanduser() if env.get("HF_HOME") else Path.home() / ".cache" / "huggingface"
    return home / "hub"


def offline_hub_problems(config: dict[str, Any], base_dir: Path, env: dict[str, str] | None = None) -> list[str]:
    """With HF_HUB_OFFLINE set (Kaggle inference), a hub source must already be in the local cache: said once
    here, naming the key, instead of every training job retrying HTTP and being resubmitted."""
    env = dict(os.environ) if env is None else env
    if env.get("HF_HUB_OFFLINE", "").strip().lower() not in ("1", "true", "yes", "on"):
        return []
    from huggingface_hub import try_to_load_from_cache

    sources = [(f"models.{name}.source", entry.get("source")) for name, entry in (config.get("models") or {}).items()]
    sources += [(f"language_models.{name}.source", entry.get("source"))
                for name, entry in (config.get("language_models") or {}).items()]
    sources += [(f"retrieval.{name}.models.{base}", source) for name, pipeline in (config.get("retrieval") or {}).items()
                for base, source in (pipeline.get("models") or {}).items()]
    cache, problems = hub_cache_dir(env), []
    for key, source in sources:
        if not isinstance(source, str) or not HUB_ID.match(source) or (base_dir / source).is_dir():
            continue
        name, _, revision = source.partition("@")
        if not isinstance(try_to_load_from_cache(name, "config.json", cache_dir=cache, revision=revision or None), str):
            problems.append(f"config: {key}: {source!r} is not in the local hub cache {cache} and HF_HUB_OFFLINE is set, "
                            "so it cannot be downloaded (cache it first, or give a local folder)")
    return problems
