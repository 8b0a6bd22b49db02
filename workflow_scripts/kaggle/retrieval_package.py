"""A retrieval submission (a `retrieval:` pipeline) as a Kaggle code-competition package, and what its notebook runs.

The dataset holds the submission's embedder and reranker as the evaluation step loaded them (their merged
fine-tunes), the corpus, the corpus embeddings computed at build time (workflow_scripts.kaggle.corpus_embeddings:
the notebook embeds only the queries), the inference settings as the evaluation step's own arguments, the
in-context examples it used, and the pipeline's `prepare` function when it has one. The notebook prepares the
queries from the raw hidden test with that function, embeds them, ranks the corpus and reranks each query's
top_n through the workflow's own functions (`retrieval.eval.evaluate_fold`, `retrieval.models`,
`retrieval.submission.submission_frame`), and writes the competition's CSV: on the public test, byte-identical to
results/submissions/{pipeline}/submission.csv.

`submission_models` is the one place that says which models (and which stage) a pipeline's submission ranks with.

    python -m workflow_scripts.kaggle.retrieval_package --package DATASET_DIR --test TEST.csv --out-dir DIR
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from workflow_scripts.errors import OoflineError, run_cli

PACKAGE_FILE = "oofline_package.json"
FORMAT_VERSION = 1
SHAPE = "retrieval"


# ---- which models the submission ranks with ----

def submission_models(pipeline: Mapping[str, Any], out_dir: str, name: str) -> dict[str, Any]:
    """The models pipeline `name`'s submission may rank with: the stage is chosen on scores after the graph is built
    (`submit:`, retrieval.stages), so the package step reads it from `stage_file` (submission_stage.json: its
    `embedder` and `reranker` model folders) and depends on every stage's model folder (`folders`: the rule outputs
    that hold them)."""
    from workflow_scripts.rule_params import retrieval_stage_plan

    folders = []
    for stage in retrieval_stage_plan(out_dir, name, pipeline):
        for model in (stage["embedder"], stage["reranker"]):
            if model:  # a fine-tune's model is its folder's merged/, a rule output's child
                folders.append(model.removesuffix("/merged"))
    return {"stage_file": f"{out_dir}/retrieval/{name}/submission_stage.json", "folders": list(dict.fromkeys(folders))}


def chosen_models(models: Mapping[str, Any]) -> dict[str, Any]:
    """{"stage", "embedder": model folder, "reranker": model folder | None} of the submitted stage."""
    from workflow_scripts.retrieval.stages import submission_stage

    chosen = submission_stage(models["stage_file"])
    return {"stage": chosen["stage"], "embedder": chosen["embedder"], "reranker": chosen["reranker"]}


# ---- config -> spec (called by the rules through workflow_scripts.kaggle.shapes) ----

def package_settings(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    from workflow_scripts.kaggle.shapes import SHAPES
    from workflow_scripts.rule_params import kaggle_settings

    entry = config["kaggle"][name]
    return {**kaggle_settings(config, name), "members": entry.get("members", SHAPES[SHAPE].default_members),
            "sample_submission": entry.get("sample_submission")}


def config_problems(config: Mapping[str, Any], name: str) -> list[str]:
    """What a retrieval package cannot do, as config lines."""
    entry, problems = config["kaggle"][name], []
    if entry.get("members", "merged") != "merged":
        problems.append(f"config: kaggle.{name}.members: a retrieval package ships the merged fine-tunes the "
                        "evaluation step ranked with (members: merged)")
    if entry.get("quantization", "none") != "none":
        problems.append(f"config: kaggle.{name}.quantization: retrieval.{name}'s embedder and reranker ranked "
                        f"unquantized, so the package must too (the notebook would rank differently from the CV); "
                        "quantization: none")
    for key in ("interface", "server", "seconds_per_problem"):
        if key in entry:
            problems.append(f"config: kaggle.{name}.{key}: a key of answer (vote) packages, not retrieval ones")
    if entry.get("sample_submission"):
        problems.append(f"config: kaggle.{name}.sample_submission: a retrieval package writes one row per prepared "
                        "test query, in the test file's order (set it to null)")
    return problems


def package_spec(config: Mapping[str, Any], out_dir: str, name: str, local_sources: Sequence[str] = ()
                 ) -> dict[str, Any]:
    """What the package copies and how it runs: the models, the corpus, the build-time pass's outputs, the
    inference settings as the evaluation step's arguments and the prepare function. Paths under `out_dir`."""
    from workflow_scripts.rule_params import cli_flags, prepare_code, resolved_pipeline, retrieval_config_slice

    pipeline = resolved_pipeline(config["retrieval"][name])
    models = submission_models(pipeline, out_dir, name)
    data = f"{out_dir}/retrieval/{name}/data"
    build = f"{out_dir}/kaggle/{name}/corpus"
    prepare = pipeline.get("prepare")
    return {
        "shape": SHAPE, "name": name, "submission": name, "kaggle": package_settings(config, name),
        "models": models,
        "embedder_argv": shlex.split(cli_flags(pipeline.get("embedder_inference", {}))),
        "reranker_argv": shlex.split(cli_flags(pipeline.get("reranker_inference", {}))),
        "k": int(pipeline.get("k", 25)), "top_n": int(pipeline.get("top_n", 50)),
        "valid_fold": pipeline.get("valid_fold", 0),
        "id_column": pipeline.get("id_column", "id"), "prediction_column": pipeline.get("prediction_column", "ranked_ids"),
        "prepare": ({"reference": prepare, "code": prepare_code(prepare, f"retrieval.{name}.prepare")}
                    if prepare else None),
        "queries": f"{data}/queries.parquet", "corpus": f"{data}/corpus.parquet", "folds":
            f"{out_dir}/retrieval/{name}/folds.parquet", "public_test": f"{data}/test_queries.parquet",
        "build": {"embeddings": f"{build}/embeddings.safetensors", "icl_examples": f"{build}/icl_examples.json",
                  "speeds": f"{build}/speeds.json"},
        "config_slice": retrieval_config_slice(config, name),
        "manifest": f"{out_dir}/submissions/{name}/manifest.json",
        "submission_csv": f"{out_dir}/submissions/{name}/submission.csv",
    }


def package_inputs(spec: Mapping[str, Any], local_sources: Sequence[str] = ()) -> list[str]:
    """The files and folders the package copies (its rule's inputs)."""
    models = spec["models"]
    return [spec["corpus"], spec["manifest"], spec["submission_csv"], spec["public_test"], models["stage_file"],
            *models["folders"], *spec["build"].values()]


def corpus_pass_flags(spec: Mapping[str, Any]) -> str:
    """The build-time pass's flags (rules/kaggle.smk, kaggle_corpus_embeddings): the evaluation step's settings."""
    from workflow_scripts.rule_params import cli_flags

    return " ".join(filter(None, [
        cli_flags({"queries": spec["queries"], "corpus": spec["corpus"], "folds": spec["folds"],
                   "test_queries": spec["public_test"], "valid_fold": spec["valid_fold"],
                   "stage": spec["models"]["stage_file"], "top_n": spec["top_n"], "k": spec["k"]}),
        " ".join(shlex.quote(arg) for arg in spec["embedder_argv"] + spec["reranker_argv"])]))


# ---- the package step ----

def build_package(spec: dict[str, Any], dataset_out: str | Path, notebook_out: str | Path, plan_out: str | Path,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Write dataset/, notebook/ and plan.json for a retrieval submission; returns the plan."""
    from workflow_scripts.io import read_json, read_table, write_json
    from workflow_scripts.kaggle import plan as runtime_plan
    from workflow_scripts.kaggle.environment import SHAPE_LIBRARIES, built_with_libraries
    from workflow_scripts.kaggle.package import copy_tree, folder_size
    from workflow_scripts.kaggle.shared import ship_prepare, write_common_files

    name, kaggle = spec["name"], spec["kaggle"]
    runtime_plan.check_accelerator(kaggle["accelerator"])
    for key in ("corpus", "manifest", "submission_csv", "public_test", *spec["build"]):
        path = spec["build"].get(key) or spec.get(key)
        if not Path(path).exists():
            raise OoflineError(f"retrieval {name}: {key} not found at {path} (build the submission first)")
    dataset, notebook = Path(dataset_out), Path(notebook_out)
    chosen = chosen_models(spec["models"])
    roles = {"embedder": chosen["embedder"], "reranker": chosen["reranker"]}
    for role, folder in roles.items():
        if folder and not Path(folder).is_dir():
            raise OoflineError(f"retrieval {name}: the {role} of stage {chosen['stage']} has no model at {folder}")
    for folder in (dataset, notebook):
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
    shipped_models = {}
    for role, folder in roles.items():
        if folder:
            copy_tree(Path(folder), dataset / "models" / role)
            shipped_models[role] = f"models/{role}"
    read_table(spec["corpus"]).write_parquet(dataset / "corpus.parquet")
    shutil.copy2(spec["build"]["embeddings"], dataset / "corpus_embeddings.safetensors")
    shutil.copy2(spec["build"]["icl_examples"], dataset / "icl_examples.json")
    prepare = ship_prepare(spec["prepare"], dataset)
    package = {"format_version": FORMAT_VERSION, "shape": SHAPE, "package": name, "submission_name": spec["submission"],
               "stage": chosen["stage"], "k": spec["k"], "top_n": spec["top_n"],
               "id_column": spec["id_column"], "prediction_column": spec["prediction_column"], "prepare": prepare,
               "embedder": {"model": shipped_models["embedder"], "argv": spec["embedder_argv"],
                            "icl_examples": "icl_examples.json"},
               "reranker": ({"model": shipped_models["reranker"], "argv": spec["reranker_argv"]}
                            if "reranker" in shipped_models else None),
               "corpus": "corpus.parquet", "corpus_embeddings": "corpus_embeddings.safetensors",
               "built_with": built_with_libraries(SHAPE_LIBRARIES[SHAPE])}
    # FlagEmbedding is on no Kaggle image: its installed version ships as a wheel (its own dependencies are there)
    requirements = write_common_files(spec, package, dataset, notebook, runner="workflow_scripts.kaggle.retrieval_package",
                                      installed=("FlagEmbedding",))
    speeds = read_json(spec["build"]["speeds"])
    public_rows = speeds["queries"]["rows"]
    rows = kaggle.get("hidden_test_rows") or public_rows
    settings = _settings_args(spec["embedder_argv"] + spec["reranker_argv"])
    precision = {"embedder": settings.precision, "reranker": settings.rerank_precision}
    members = {role: {**runtime_plan.model_shape(dataset / folder), "quantization": "none",
                      "precision": runtime_plan.target_precision(precision[role], kaggle["accelerator"])}
               for role, folder in shipped_models.items()}
    estimate = runtime_plan.retrieval_estimate(speeds, rows, kaggle, members, runtime_plan.measure_startup(["encoder_full"]))
    size = folder_size(dataset)
    plan = {"package": name, "submission": spec["submission"], "shape": SHAPE, "stage": chosen["stage"],
            "dataset_bytes": size, "wheels": requirements, "public_test_rows": public_rows, "measured": speeds,
            "estimate": estimate, **runtime_plan.upload_commands(name, dataset, notebook)}
    write_json(plan, plan_out)
    log(f"kaggle {name}: retrieval package, dataset {size / 1e6:.1f} MB ({', '.join(shipped_models)} merged, "
        f"{speeds['corpus']['rows']} passages embedded at build time) -> {dataset}")
    for line in runtime_plan.shape_summary_lines(name, estimate):
        log(line)
    log("upload (nothing is pushed by the workflow):\n  " + "\n  ".join(plan["commands"]))
    return plan


# ---- what the notebook runs ----

def load_package(dataset_dir: str | Path) -> dict[str, Any]:
    """oofline_package.json of a retrieval package, with every file it names checked to exist."""
    dataset_dir = Path(dataset_dir)
    path = dataset_dir / PACKAGE_FILE
    if not path.exists():
        raise OoflineError(f"{dataset_dir}: {PACKAGE_FILE} is missing (not an oofline Kaggle package dataset)")
    package = json.loads(path.read_text())
    if package.get("format_version") != FORMAT_VERSION or package.get("shape") != SHAPE:
        raise OoflineError(f"{path}: not a format {FORMAT_VERSION} retrieval package")
    needed = [package["corpus"], package["corpus_embeddings"], package["embedder"]["model"],
              package["embedder"]["icl_examples"]]
    needed += [package["reranker"]["model"]] if package["reranker"] else []
    needed += [package["prepare"]["file"]] if package["prepare"] else []
    missing = [relative for relative in needed if not (dataset_dir / relative).exists()]
    if missing:
        raise OoflineError(f"{dataset_dir}: the package lacks {missing[:3]} (rebuild the package)")
    return package


def _settings_args(argv: Sequence[str]) -> argparse.Namespace:
    """The evaluation step's embedder and reranker arguments, parsed by its own parser functions."""
    from workflow_scripts.retrieval.mining import add_embedder_arguments
    from workflow_scripts.retrieval.models import add_reranker_arguments

    parser = argparse.ArgumentParser(prog="retrieval settings")
    add_embedder_arguments(parser, with_model=False)
    add_reranker_arguments(parser, with_model=False)
    return parser.parse_args(list(argv))


def run_package(dataset_dir: str | Path, test_path: str | Path, out_dir: str | Path,
                log: Callable[[str], None] = print) -> dict[str, Any]:
    """Write out_dir/submission.csv for the raw test file; returns timings."""
    import dataclasses

    import numpy as np
    import polars as pl
    from safetensors.numpy import load_file

    from workflow_scripts.kaggle.environment import check_image
    from workflow_scripts.kaggle.inference import _free_memory
    from workflow_scripts.kaggle.shared import prepared_rows
    from workflow_scripts.prepare import RETRIEVAL_REQUIRED
    from workflow_scripts.retrieval.data import validate_corpus, validate_queries
    from workflow_scripts.retrieval.eval import evaluate_fold
    from workflow_scripts.retrieval.mining import embedder_settings
    from workflow_scripts.retrieval.models import _dense, load_embedder, load_reranker, rerank_scores, reranker_settings
    from workflow_scripts.retrieval.submission import submission_frame
    from workflow_scripts.submission import write_csv

    started = time.time()
    dataset_dir = Path(dataset_dir)
    package = load_package(dataset_dir)
    # before any model loads: a known-incompatible image is one line
    check_image(dataset_dir, package, log,
                {library: ["the embedder and reranker"] for library in package.get("built_with", {})})
    corpus = validate_corpus(pl.read_parquet(dataset_dir / package["corpus"]), package["corpus"])
    test = validate_queries(prepared_rows(dataset_dir, package["prepare"], test_path, "test", RETRIEVAL_REQUIRED["test"]),
                            corpus["id"].to_list(), str(test_path), need_positives=False)
    log(f"oofline package {package['package']}: {test.height} test queries from {test_path} "
        f"({'prepared by ' + package['prepare']['reference'] if package['prepare'] else 'as given'})")
    passage_vectors = load_file(str(dataset_dir / package["corpus_embeddings"]))["embeddings"]
    if passage_vectors.shape[0] != corpus.height:
        raise OoflineError(f"{dataset_dir}: {passage_vectors.shape[0]} corpus embeddings for {corpus.height} passages "
                           "(rebuild the package)")
    embedder = package["embedder"]
    args = _settings_args(embedder["argv"])
    args.icl_examples = 0  # the examples the evaluation step drew, shipped: no training queries here
    examples = tuple(json.loads((dataset_dir / embedder["icl_examples"]).read_text()))
    settings = dataclasses.replace(embedder_settings(args, str(dataset_dir / embedder["model"])), icl_examples=examples)
    timing: dict[str, Any] = {}
    clock = time.time()
    model = load_embedder(settings)
    query_vectors = _dense(model.encode_queries(test["query"].to_list())).reshape(test.height, -1)
    timing["embed_seconds"] = time.time() - clock
    del model
    _free_memory()
    score_pairs = None
    if package["reranker"]:
        reranker_args = _settings_args(package["reranker"]["argv"])
        rerank_settings = reranker_settings(reranker_args, str(dataset_dir / package["reranker"]["model"]))
        reranker = load_reranker(rerank_settings)
        score_pairs = lambda pairs: rerank_scores(reranker, rerank_settings, pairs)  # noqa: E731
    clock = time.time()
    depth = max(package["k"], package["top_n"])
    ranked = evaluate_fold(test, corpus, np.asarray(query_vectors), passage_vectors, score_pairs, -1, depth,
                           package["top_n"])
    timing["rank_seconds"] = time.time() - clock
    column = "reranked_ids" if score_pairs is not None else "embedder_ids"
    rankings = ranked.select("id", pl.col(column).list.head(package["k"]).alias("ranked_ids"))
    frame = submission_frame(rankings, package["id_column"], package["prediction_column"])
    out = Path(out_dir) / "submission.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_csv(frame, out)
    timing.update(total_seconds=time.time() - started, rows=test.height)
    log(f"oofline package {package['package']}: {frame.height} rows -> {out} ({timing['total_seconds']:.1f}s)")
    return timing


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", required=True, help="the package's dataset folder (holds oofline_package.json)")
    parser.add_argument("--test", required=True, help="the raw test file (the prepare function's input)")
    parser.add_argument("--out-dir", required=True, help="submission.csv is written here")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    parser.add_argument("--timing-out", default=None)
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    timing = run_package(args.package, args.test, args.out_dir, log=lambda line: print(line, flush=True))
    if args.timing_out:
        Path(args.timing_out).write_text(json.dumps(timing, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
