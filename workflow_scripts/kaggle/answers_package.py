"""An answers submission (a `votes:` entry that submits) as a Kaggle code-competition package, and its notebook's run.

The dataset holds each language model the vote pools as the answers step loaded it (lms/{lm}/base: a fine-tuned
model is written merged), every answer set's settings as the answers step's own arguments (prompt templates,
samples, seed, sampling and extraction settings, precision and quantization), and the vote: the strategy the dev
split chose, its fallback and the default answer. For each problem the notebook samples every answer set
through the workflow's own functions (`generated.answers.sample_problem`, its extraction and confidence;
vLLM where it imports and the weights allow, transformers otherwise, logged), votes with `generated.voting.vote_all`
and answers. Sampling is seeded per problem (`generated.answers.problem_seed`): a problem's samples are the ones
the workflow drew for it, whichever problems come with it and in whatever order, so on the same device the
notebook's answers are the workflow's vote.

Two interfaces: `csv` reads the test file and writes submission.csv (`id,answer`); `inference_server` hands a
`predict(id_, problem)` to the competition's evaluation API (`kaggle.server`, e.g. AIMO 3's
kaggle_evaluation.aimo_3_inference_server.AIMO3InferenceServer): `serve()` when KAGGLE_IS_COMPETITION_RERUN is
set, else its local gateway over the test file (then submission.csv is written from the answers given).
`seconds_per_problem` caps a problem's sampling: a batch after each answer set's first starts only inside it.

    python -m workflow_scripts.kaggle.answers_package --package DATASET_DIR --test TEST.csv --out-dir DIR
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from workflow_scripts.errors import OoflineError, run_cli

PACKAGE_FILE = "oofline_package.json"
FORMAT_VERSION = 1
SHAPE = "answers"


# ---- config -> spec (called by the rules through workflow_scripts.kaggle.shapes) ----

def package_settings(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    from workflow_scripts.rule_params import kaggle_settings

    entry = config["kaggle"][name]
    return {**kaggle_settings(config, name), "members": "merged", "sample_submission": entry.get("sample_submission"),
            "interface": entry.get("interface", "csv"), "server": entry.get("server"),
            "seconds_per_problem": entry.get("seconds_per_problem")}


def answer_sets_of(config: Mapping[str, Any], name: str) -> list[tuple[str, str, str]]:
    """(answer set, language model, prompt) of every answer set the vote pools, in its order."""
    return [(answer_set, *answer_set.split("/", 1)) for answer_set in config["votes"][name]["answers"]]


def config_problems(config: Mapping[str, Any], name: str) -> list[str]:
    """What an answers package cannot do, as config lines (before any job runs)."""
    entry, problems = config["kaggle"][name], []
    where = f"config: kaggle.{name}"
    if entry.get("members", "merged") != "merged":
        problems.append(f"{where}.members: an answers package ships each language model as the answers step loaded "
                        "it (a fine-tune is merged): members: merged")
    if entry.get("sample_submission"):
        problems.append(f"{where}.sample_submission: an answers package answers the test file's problems in its "
                        "order (set it to null)")
    interface = entry.get("interface", "csv")
    if (interface == "inference_server") != bool(entry.get("server")):
        problems.append(f"{where}.server: " + ("interface inference_server needs the competition's server class "
                                               "(module.Class)" if interface == "inference_server"
                                               else "a server class is read only with interface: inference_server"))
    prompts = (config.get("answers") or {}).get("prompts") or {}
    for answer_set, model, prompt in answer_sets_of(config, name):
        # a category found by keywords in the problem text is what a served problem has; a column is not
        if interface == "inference_server" and isinstance(prompts.get(prompt), Mapping) and prompts[prompt].get("by"):
            problems.append(f"{where}.interface: inference_server hands predict only a problem's id and text, but "
                            f"{answer_set} picks its template by column {prompts[prompt].get('by')!r}")
        used = ((config.get("language_models") or {}).get(model) or {}).get("quantization", "none")
        if "quantization" in entry and entry["quantization"] != used:
            problems.append(f"{where}.quantization: {entry['quantization']} but {model} answered with quantization "
                            f"{used} in the workflow; the package answers as the workflow did")
    return problems


def package_spec(config: Mapping[str, Any], out_dir: str, name: str, local_sources: Sequence[str] = ()
                 ) -> dict[str, Any]:
    """What the package copies and how it answers: each language model's folder, every answer set's arguments
    (the answers step's flags on the test problems), the vote's settings. Paths under `out_dir`."""
    import shlex

    from workflow_scripts.rule_params import answer_flags, language_model_flags, vote_config_slice

    answers, vote = config.get("answers") or {}, config["votes"][name]
    language_models = config.get("language_models") or {}
    sets = [{"name": answer_set, "model": model, "prompt": prompt,
             "argv": shlex.split(" ".join(filter(None, [answer_flags(answers, prompt, "test"),
                                                        language_model_flags(language_models.get(model) or {})])))}
            for answer_set, model, prompt in answer_sets_of(config, name)]
    test_problems = answers.get("test_problems") or f"{out_dir}/data/math_test_problems.parquet"
    return {
        "shape": SHAPE, "name": name, "submission": name, "kaggle": package_settings(config, name),
        "answer_sets": sets,
        "models": {entry["model"]: f"{out_dir}/lms/{entry['model']}/base" for entry in sets},
        "vote": {"strategy": vote.get("submit_strategy", "best"), "fallback": vote.get("fallback", "majority"),
                 "default_answer": vote.get("default_answer", "0"), "id_column": vote.get("id_column", "id"),
                 "answer_column": vote.get("answer_column", "answer")},
        "problem_column": answers.get("problem_column", "problem"),
        "dev_score": f"{out_dir}/votes/{name}/score.json",
        "test_answers": {entry["name"]: f"{out_dir}/test_answers/{entry['name']}.parquet" for entry in sets},
        "public_test": test_problems,
        "config_slice": vote_config_slice(config, name),
        "manifest": f"{out_dir}/submissions/{name}/manifest.json",
        "submission_csv": f"{out_dir}/submissions/{name}/submission.csv",
    }


def package_inputs(spec: Mapping[str, Any], local_sources: Sequence[str] = ()) -> list[str]:
    return ([spec["dev_score"], spec["public_test"], spec["manifest"], spec["submission_csv"], *spec["models"].values(),
             *spec["test_answers"].values()])


# ---- the package step ----

def build_package(spec: dict[str, Any], dataset_out: str | Path, notebook_out: str | Path, plan_out: str | Path,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Write dataset/, notebook/ and plan.json for a vote's submission; returns the plan."""
    import polars as pl

    from workflow_scripts.generated.vote_submission import chosen_strategy
    from workflow_scripts.io import read_json, read_table, write_json
    from workflow_scripts.kaggle import plan as runtime_plan
    from workflow_scripts.kaggle.package import copy_tree, folder_size, resolve_base
    from workflow_scripts.kaggle.environment import QUANTIZED_LIBRARIES, SHAPE_LIBRARIES, built_with_libraries
    from workflow_scripts.kaggle.shared import write_common_files

    name, kaggle = spec["name"], spec["kaggle"]
    runtime_plan.check_accelerator(kaggle["accelerator"])
    for path in package_inputs(spec):
        if not Path(path).exists():
            raise OoflineError(f"vote {name}: {path} not found (build the submission first)")
    dataset, notebook = Path(dataset_out), Path(notebook_out)
    for folder in (dataset, notebook):
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
    shipped = {}
    for model, folder in spec["models"].items():
        copy_tree(resolve_base(folder, model), dataset / "models" / model)
        shipped[model] = f"models/{model}"
    strategy = chosen_strategy(spec["vote"]["strategy"], read_json(spec["dev_score"]))
    sets = [dict(entry, model=shipped[entry["model"]], model_name=entry["model"]) for entry in spec["answer_sets"]]
    quantized = any(step_arguments(entry, dataset).quantization != "none" for entry in sets)
    package = {"format_version": FORMAT_VERSION, "shape": SHAPE, "package": name, "submission_name": spec["submission"],
               "answer_sets": sets, "vote": dict(spec["vote"], strategy=strategy),
               "problem_column": spec["problem_column"], "interface": kaggle["interface"], "server": kaggle["server"],
               "seconds_per_problem": kaggle["seconds_per_problem"],
               "built_with": built_with_libraries(SHAPE_LIBRARIES[SHAPE] + (QUANTIZED_LIBRARIES if quantized else ()))}
    requirements = write_common_files(spec, package, dataset, notebook, runner="workflow_scripts.kaggle.answers_package",
                                      interface=kaggle["interface"])
    public = read_table(spec["public_test"])
    rows = kaggle.get("hidden_test_rows") or public.height
    models, answer_sets = {}, {}
    for entry in sets:
        args = step_arguments(entry, dataset)
        shape = runtime_plan.model_shape(dataset / entry["model"])
        models[entry["model_name"]] = {**shape, "precision": runtime_plan.target_precision(args.precision,
                                                                                         kaggle["accelerator"]),
                                       "quantization": args.quantization}
        generated = pl.read_parquet(spec["test_answers"][entry["name"]])["n_tokens"]
        answer_sets[entry["name"]] = {"model": entry["model_name"], "samples": args.samples,
                                      "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
                                      "new_tokens": float(generated.mean() or args.max_new_tokens),
                                      "prompt_tokens": prompt_tokens(dataset / entry["model"], entry, args, public)}
    backend = "vllm" if any(line.lower().startswith("vllm") for line in requirements) else "transformers"
    estimate = runtime_plan.answers_estimate(answer_sets, models, rows, kaggle, backend,
                                             runtime_plan.measure_startup(["decoder_lora"]))
    size = folder_size(dataset)
    plan = {"package": name, "submission": spec["submission"], "shape": SHAPE, "strategy": strategy,
            "dataset_bytes": size, "wheels": requirements, "public_test_rows": public.height,
            "measured_new_tokens": {k: v["new_tokens"] for k, v in answer_sets.items()}, "estimate": estimate,
            **runtime_plan.upload_commands(name, dataset, notebook)}
    write_json(plan, plan_out)
    log(f"kaggle {name}: answers package, dataset {size / 1e6:.1f} MB ({len(shipped)} language model(s), "
        f"{len(sets)} answer sets, vote {strategy}, interface {kaggle['interface']}) -> {dataset}")
    for line in runtime_plan.shape_summary_lines(name, estimate):
        log(line)
    log("upload (nothing is pushed by the workflow):\n  " + "\n  ".join(plan["commands"]))
    return plan


def prompt_tokens(model_dir: Path, entry: Mapping[str, Any], args: argparse.Namespace, public) -> int:
    """The longest rendered prompt of the public test in tokens (for the KV cache in the memory plan)."""
    from transformers import AutoTokenizer

    from workflow_scripts.generated.answers import problem_prompts, prompt_settings
    from workflow_scripts.generated.generate import prompt_token_ids, render_prompt

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    template, categories = prompt_settings(args)
    keywords = category_keywords(args)
    if categories and not keywords and args.category_column not in public.columns:
        return 0
    prompts = problem_prompts(public, args.problem_column, template, args.category_column, categories, entry["prompt"],
                              keywords)
    return max((len(prompt_token_ids(tokenizer, render_prompt(tokenizer, p, args.system))) for p in prompts), default=0)


def category_keywords(args: argparse.Namespace) -> list | None:
    """The answers step's `--category-keywords` (a prompt that finds its category in the problem text), parsed."""
    raw = getattr(args, "category_keywords", None)
    return [(category, words) for category, words in json.loads(raw)] if raw else None


def step_arguments(entry: Mapping[str, Any], dataset_dir: Path) -> argparse.Namespace:
    """An answer set's settings, parsed by the answers step's own parser from the flags the step ran with."""
    from workflow_scripts.generated.answers import argument_parser

    return argument_parser().parse_args(["--model", str(dataset_dir / entry["model"]), "--problems", "-",
                                         "--prompt-name", entry["prompt"], "--output", "-", *entry["argv"]])


# ---- what the notebook runs ----

def load_package(dataset_dir: str | Path) -> dict[str, Any]:
    dataset_dir = Path(dataset_dir)
    path = dataset_dir / PACKAGE_FILE
    if not path.exists():
        raise OoflineError(f"{dataset_dir}: {PACKAGE_FILE} is missing (not an oofline Kaggle package dataset)")
    package = json.loads(path.read_text())
    if package.get("format_version") != FORMAT_VERSION or package.get("shape") != SHAPE:
        raise OoflineError(f"{path}: not a format {FORMAT_VERSION} answers package")
    missing = sorted({entry["model"] for entry in package["answer_sets"]
                      if not (dataset_dir / entry["model"] / "config.json").exists()})
    if missing:
        raise OoflineError(f"{dataset_dir}: the package lacks {missing[:3]} (rebuild the package)")
    return package


class Answerer:
    """Answers one problem at a time with every answer set, as the answers and vote_submission steps would."""

    def __init__(self, dataset_dir: Path, package: dict[str, Any], log: Callable[[str], None] = print):
        from workflow_scripts.generated.answers import prompt_settings

        self.dataset_dir, self.package, self.log = dataset_dir, package, log
        self.sets = []
        for entry in package["answer_sets"]:
            args = step_arguments(entry, dataset_dir)
            self.sets.append((entry, args, *prompt_settings(args)))
        self.engines: dict[tuple, tuple] = {}  # (model, precision, quantization) -> (backend, model, tokenizer)

    def engine(self, args: argparse.Namespace) -> tuple:
        """A loaded model (once per model, precision and quantization), with the backend the answers step picks."""
        key = (args.model, args.precision, args.quantization)
        if key not in self.engines:
            from workflow_scripts.generated.generate import generation_backend, load_causal_lm, load_vllm

            backend, why = generation_backend(args.quantization)
            self.log(f"{Path(args.model).name}: {backend} backend: {why}")
            if backend == "vllm":
                from transformers import AutoTokenizer

                self.engines[key] = (backend, load_vllm(args.model, args.precision, args.quantization),
                                     AutoTokenizer.from_pretrained(args.model))
            else:
                self.engines[key] = (backend, *load_causal_lm(args.model, args.precision, args.quantization))
        return self.engines[key]

    def load(self) -> None:
        """Load every model before the first problem: a model that cannot load stops the notebook here, loudly,
        instead of answering every problem with the default."""
        for _, args, *_ in self.sets:
            self.engine(args)

    def check_columns(self, columns: Sequence[str]) -> None:
        """Every column a prompt reads is in the test file: one line before any model loads."""
        for entry, args, template, categories in self.sets:
            needed = [args.problem_column] + ([args.category_column] if categories and not category_keywords(args) else [])
            missing = [column for column in needed if column not in columns]
            if missing:
                raise OoflineError(f"the test file lacks column {missing[0]!r}, which {entry['name']} reads "
                                   f"(has {list(columns)})")

    def answer(self, problem_id: object, row: Mapping[str, Any], until: float | None = None) -> tuple[str, dict]:
        """(the voted answer, {answer set: samples drawn}) of one problem; a failure answers the default."""
        import polars as pl

        from workflow_scripts.generated.answers import (answer_confidence, extract_answer, problem_prompts,
                                                        problem_seed, sample_batches)
        from workflow_scripts.generated.generate import render_prompt, sample_completions, sample_completions_vllm
        from workflow_scripts.generated.voting import vote_all

        vote = self.package["vote"]
        rows: dict[str, list] = {"id": [], "answer": [], "confidence": []}
        drawn = {entry["name"]: 0 for entry, *_ in self.sets}
        try:
            plans = []
            for entry, args, template, categories in self.sets:
                backend, model, tokenizer = self.engine(args)
                frame = pl.DataFrame({key: [value] for key, value in row.items()})
                prompt = render_prompt(tokenizer, problem_prompts(frame, args.problem_column, template,
                                                                  args.category_column, categories, entry["prompt"],
                                                                  category_keywords(args))[0],
                                       args.system)
                plans.append((entry, args, backend, model, tokenizer, prompt, sample_batches(args.samples, args.batch_size)))
            # round by round, every answer set's batch b: the first round always runs (an answer for every problem)
            for batch in range(max(len(sizes) for *_, sizes in plans)):
                if batch and until is not None and time.time() >= until:
                    break
                for entry, args, backend, model, tokenizer, prompt, sizes in plans:
                    if batch >= len(sizes):
                        continue
                    settings = dict(temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens,
                                    label=f"{entry['name']} {problem_id}")
                    if backend == "vllm":
                        first = batch * args.batch_size
                        seeds = [problem_seed(args.seed, problem_id, first + k) for k in range(sizes[batch])]
                        completions = sample_completions_vllm(model, tokenizer, [prompt] * sizes[batch],
                                                              seed=args.seed, seeds=seeds, **settings)
                    else:
                        completions = sample_completions(model, tokenizer, [prompt] * sizes[batch],
                                                         batch_size=sizes[batch],
                                                         seed=problem_seed(args.seed, problem_id, batch), **settings)
                    drawn[entry["name"]] += len(completions)
                    for completion in completions:
                        answer, span = extract_answer(completion.text, args.answer_regex)
                        rows["id"].append(problem_id)
                        rows["answer"].append(answer)
                        rows["confidence"].append(answer_confidence(tokenizer, completion, span)
                                                  if answer is not None else None)
        except OoflineError:
            raise
        except Exception as error:  # a hidden problem never stops the notebook: it gets the default answer
            self.log(f"problem {problem_id}: answering failed ({type(error).__name__}: "
                     f"{' '.join(str(error).split())[:200]}); answering {vote['default_answer']!r}")
            return vote["default_answer"], drawn
        answers = pl.DataFrame(rows, schema={"id": pl.String, "answer": pl.String, "confidence": pl.Float64})
        voted = vote_all(answers.with_columns(pl.col("id").cast(pl.String)), [str(problem_id)], [vote["strategy"]],
                         vote["fallback"])["answer"][0]
        return (voted if voted is not None else vote["default_answer"]), drawn


def read_problems(test_path: str | Path):
    """The test problems, every csv column as text (what the problems' ids and texts are written as)."""
    from workflow_scripts.prepare import read_raw

    problems = read_raw(test_path)
    if "id" not in problems.columns:
        raise OoflineError(f"{test_path}: column 'id' is missing (has {problems.columns})")
    return problems


def write_submission(answered: list[tuple[str, str]], vote: Mapping[str, Any], out_dir: str | Path) -> Path:
    import polars as pl

    from workflow_scripts.submission import write_csv

    frame = pl.DataFrame({vote["id_column"]: [str(i) for i, _ in answered], vote["answer_column"]: [a for _, a in answered]},
                         schema={vote["id_column"]: pl.String, vote["answer_column"]: pl.String})
    out = Path(out_dir) / "submission.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_csv(frame, out)
    return out


def _scalar(value: Any) -> Any:
    """A served value: the evaluation API hands one-row series (polars or pandas); plain values pass through."""
    if hasattr(value, "iloc"):
        return value.iloc[0]
    if hasattr(value, "item") and hasattr(value, "__len__"):
        return value.item(0) if len(value) else None
    return value


def served_answer(answer: str) -> int | str:
    """An integer answer as an int (AIMO's `answer` column is an integer), any other text as it is."""
    try:
        return int(answer)
    except (TypeError, ValueError):
        return answer


def run_package(dataset_dir: str | Path, test_path: str | Path, out_dir: str | Path, competition_dir: str | None = None,
                log: Callable[[str], None] = print) -> dict[str, Any]:
    """Answer the test problems (from the file, or served one at a time); returns timings and samples drawn."""
    import polars as pl

    from workflow_scripts.kaggle.environment import check_image

    started = time.time()
    dataset_dir = Path(dataset_dir)
    package = load_package(dataset_dir)
    models = sorted({entry["model_name"] for entry in package["answer_sets"]})
    # before any model loads: a known-incompatible image is one line
    check_image(dataset_dir, package, log, {library: models for library in package.get("built_with", {})})
    answerer = Answerer(dataset_dir, package, log)
    budget = package.get("seconds_per_problem")
    answered: list[tuple[str, str]] = []
    samples: dict[str, dict[str, int]] = {}

    def answer(problem_id: object, row: Mapping[str, Any]) -> str:
        clock = time.time()
        result, drawn = answerer.answer(str(problem_id), row, clock + budget if budget else None)
        answered.append((str(problem_id), result))
        samples[str(problem_id)] = drawn
        log(f"problem {problem_id}: {sum(drawn.values())} samples ({', '.join(f'{k} {v}' for k, v in drawn.items())}) "
            f"in {time.time() - clock:.1f}s -> {result}")
        return result

    column = package["problem_column"]
    if package["interface"] == "inference_server":
        if not competition_dir:
            raise OoflineError("interface inference_server: --competition-dir is needed (the competition's folder, "
                               "where its evaluation package is)")

        def predict(id_, problem, *_):
            problem_id = _scalar(id_)
            return pl.DataFrame({"id": [problem_id], "answer": [served_answer(answer(problem_id, {column: _scalar(problem)}))]})

        server_class = load_server(package["server"], competition_dir)
        answerer.load()
        server = server_class(predict)
        if os.environ.get("KAGGLE_IS_COMPETITION_RERUN"):
            log(f"oofline package {package['package']}: serving {package['server']} (competition rerun)")
            server.serve()
            return {"served": len(answered), "samples": samples}
        log(f"oofline package {package['package']}: {package['server']} local gateway over {test_path}")
        server.run_local_gateway((str(test_path),))
    else:
        problems = read_problems(test_path)
        answerer.check_columns(problems.columns)
        log(f"oofline package {package['package']}: {problems.height} problems from {test_path}")
        answerer.load()
        for row in problems.iter_rows(named=True):
            answer(row["id"], row)
    out = write_submission(answered, package["vote"], out_dir)
    timing = {"total_seconds": time.time() - started, "rows": len(answered), "samples": samples}
    log(f"oofline package {package['package']}: {len(answered)} answers -> {out} ({timing['total_seconds']:.1f}s)")
    return timing


def load_server(server: str, competition_dir: str | Path):
    """The competition's server class (`module.Class`), imported from its folder."""
    module_name, _, class_name = server.rpartition(".")
    sys.path.insert(0, str(competition_dir))
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise OoflineError(f"kaggle server {server}: cannot import {module_name} from {competition_dir} ({error})") from error
    if not hasattr(module, class_name):
        raise OoflineError(f"kaggle server {server}: {module_name} has no {class_name}")
    return getattr(module, class_name)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", required=True, help="the package's dataset folder (holds oofline_package.json)")
    parser.add_argument("--test", required=True, help="the test problems (id and the problem column)")
    parser.add_argument("--out-dir", required=True, help="submission.csv is written here")
    parser.add_argument("--competition-dir", default=None, help="interface inference_server: the competition's folder")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    parser.add_argument("--timing-out", default=None)
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    timing = run_package(args.package, args.test, args.out_dir, args.competition_dir,
                         log=lambda line: print(line, flush=True))
    if args.timing_out:
        Path(args.timing_out).write_text(json.dumps(timing, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
