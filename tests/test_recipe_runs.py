"""Every write-up recipe runs end to end on the demo data with its demo-models overlay (the recipe's whole
structure, tiny models), and its outputs are checked: OOF rows cover every training row once and sum or scale
as the task requires, recorded scores equal a recomputation, submissions answer exactly the test ids with
what the applied predictions say. Each run prints its wall and CPU seconds (README: "Recipes in CI").

The three code-competition recipes (MAP, Eedi, AIMO) carry a `kaggle:` block, so the same run builds their
packages; each package's notebook then runs offline, as Kaggle runs it (tests/kaggle_tree.py: only dataset/ and
notebook/ in a fresh tree, no project checkout on the path), on a shuffled subset of the test: MAP's and Eedi's
rows are the workflow's, AIMO's answers are the workflow's vote. Each match is also shown failing when a
shipped file is removed or altered."""
from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_metrics import apk  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def run_recipe(name: str, workdir: Path) -> tuple[dict, Path]:
    """Run recipes/NAME.yaml + its overlay with 2 cores in workdir; (merged config, its output_dir)."""
    configs = [REPO / "recipes" / f"{name}.yaml", REPO / "recipes" / f"demo-models-{name}.yaml"]
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
               "--cores", "2", "--configfile", *map(str, configs)]
    if (REPO / "recipes" / "lb").is_dir():  # a recipe's lb_scores file (the write-up's LB), at the path it names
        shutil.copytree(REPO / "recipes" / "lb", workdir / "recipes" / "lb", dirs_exist_ok=True)
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, cwd=workdir, timeout=1500)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(f"recipe {name}: {time.monotonic() - start:.0f} s wall, {cpu:.0f} s CPU")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    config = recipe_config(name)
    return config, workdir / config["output_dir"]


def recipe_config(name: str) -> dict:
    """The recipe with its overlay laid over it, as Snakemake merges config files (mappings key by key)."""
    config = {}
    for path in (REPO / "recipes" / f"{name}.yaml", REPO / "recipes" / f"demo-models-{name}.yaml"):
        merge(config, yaml.safe_load(path.read_text()))
    return config


def merge(base: dict, overlay: dict) -> None:
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value


# ---- classification recipes (MAP, UNLP, CDC) ----


def label_spec(results: Path):
    from workflow_scripts.labels import LabelSpec

    return LabelSpec.from_dict(json.loads((results / "labels.json").read_text()))


def check_probabilities(frame: pl.DataFrame, spec, where: str) -> None:
    """Every head's columns: a multiclass head's rows sum to 1, a binary head's values lie in [0, 1]."""
    for head, columns in spec.head_slices():
        values = frame.select(spec.probability_columns[columns]).to_numpy()
        assert np.isfinite(values).all() and (values >= 0).all() and (values <= 1).all(), (where, head.name)
        if head.type == "multiclass":
            np.testing.assert_allclose(values.sum(axis=1), 1.0, atol=1e-4, err_msg=f"{where}: {head.name}")


def check_oof(results: Path, source: str, spec, train_ids: list[str], n_folds: int) -> pl.DataFrame:
    """OOF predictions of a model or ensemble: every training row exactly once, a fold each, in range."""
    oof = pl.read_parquet(results / ("ensembles" if (results / "ensembles" / source).is_dir() else "oof")
                          / (f"{source}/oof.parquet" if (results / "ensembles" / source).is_dir() else f"{source}.parquet"))
    assert sorted(oof["id"].to_list()) == sorted(train_ids), source
    assert set(oof["fold"].unique().to_list()) == set(range(n_folds)), source
    check_probabilities(oof, spec, source)
    return oof


def hand_map_at_3(probabilities: np.ndarray, classes: list[str], labels: list[str]) -> float:
    """Kaggle's MAP@3 written out: 1, 1/2 or 1/3 when the true class is ranked 1st, 2nd or 3rd."""
    total = 0.0
    for row, label in zip(probabilities, labels):
        ranked = [classes[i] for i in np.argsort(-row, kind="stable")][:3]
        total += 1 / (ranked.index(label) + 1) if label in ranked else 0.0
    return total / len(labels)


@pytest.fixture(scope="module")
def map_run(tmp_path_factory) -> tuple[dict, Path]:
    return run_recipe("map", tmp_path_factory.mktemp("map"))


@pytest.mark.slow
def test_map_recipe_runs_end_to_end(map_run):
    check_map(*map_run)


def check_map(config: dict, results: Path) -> None:
    from workflow_scripts.sweeps import expand_sweeps

    expansion = expand_sweeps(config)  # the sweeps' variants are the models and ensembles the run built
    config = expansion.config
    spec = label_spec(results)
    train = pl.read_parquet(results / "data" / "train.parquet")
    labels = dict(zip(train["id"].to_list(), train["target"].to_list()))
    classes = spec.probability_columns
    for model in config["models"]:
        oof = check_oof(results, model, spec, list(labels), 2)
        score = json.loads((results / "scores" / f"{model}.json").read_text())
        for fold, recorded in score["folds"].items():
            rows = oof.filter(pl.col("fold") == int(fold))
            recomputed = hand_map_at_3(rows.select(classes).to_numpy(), classes, [labels[i] for i in rows["id"]])
            assert recorded["map@3"] == pytest.approx(recomputed, abs=1e-9), (model, fold)
    for ensemble in config["ensembles"]:
        check_oof(results, ensemble, spec, list(labels), 2)
    test_ids = pl.read_parquet(results / "data" / "test.parquet")["id"].to_list()
    for name, submission_config in config["submissions"].items():
        submission = pl.read_csv(results / "submissions" / name / "submission.csv")
        assert submission["id"].to_list() == test_ids, name
        applied = pl.read_parquet(results / "ensembles" / submission_config["source"] / "test.parquet")
        applied = dict(zip(applied["id"].to_list(), applied.select(classes).to_numpy()))
        for row_id, predicted in submission.iter_rows():
            top3 = [classes[i] for i in np.argsort(-applied[row_id], kind="stable")][:3]
            assert predicted.split() == top3, (name, row_id)
    check_map_sweeps(expansion, results, labels, classes)


def check_map_sweeps(expansion, results: Path, labels: dict, classes: list[str]) -> None:
    """Each sweep's table equals its variants' own score files, LB column and seed spread; its best row is the
    highest CV, marked selected of N; each nested pick is the variant best on the other folds (MAP@3 by hand)."""
    lb = yaml.safe_load((REPO / "recipes" / "lb" / "map.yaml").read_text())
    assert set(expansion.sweeps) == {"submission_table", "ratio_table", "oof_table", "qwen3_14b", "tfidf_grid"}
    for name, sweep in expansion.sweeps.items():
        table = json.loads((results / "sweeps" / f"{name}.json").read_text())
        csv = pl.read_csv(results / "sweeps" / f"{name}.csv")
        assert csv["variant"].to_list() == [v.name for v in sweep.variants] == [r["variant"] for r in table["rows"]]
        oof = {}
        for variant, row in zip(sweep.variants, table["rows"]):
            folder = results / ("scores" if variant.source == "model" else f"ensembles/{variant.name}")
            score = json.loads((folder / (f"{variant.name}.json" if variant.source == "model" else "score.json")).read_text())
            assert row["cv"] == score["score"] and row["cv_fold_std"] == score["fold_std"], variant.name
            assert row["lb_public"] == lb.get(variant.name), variant.name
            oof[variant.name] = check_oof(results, variant.name, label_spec(results), list(labels), 2).sort("id")
            if variant.seeds:  # the seeds' mean: its OOF is theirs averaged, its spread theirs
                seeds = [check_oof(results, model, label_spec(results), list(labels), 2).sort("id")
                         for model in variant.seeds.values()]
                np.testing.assert_allclose(oof[variant.name].select(classes).to_numpy(),
                                           np.mean([s.select(classes).to_numpy() for s in seeds], axis=0), atol=1e-6)
                seed_cvs = [json.loads((results / "scores" / f"{m}.json").read_text())["score"]
                            for m in variant.seeds.values()]
                assert row["cv_seed_std"] == pytest.approx(float(np.std(seed_cvs)), abs=1e-12)
        cvs = [row["cv"] for row in table["rows"]]
        if len(cvs) > 1:
            best = table["rows"][int(np.argmax(cvs))]
            assert (best["selected"], best["selected_of"], best["cv_optimistic"]) == (True, len(cvs), True), name
        if sweep.select != "nested":
            continue
        for fold, picked in table["nested"]["picks"].items():
            def other_folds(frame: pl.DataFrame) -> float:
                rows = frame.filter(pl.col("fold") != int(fold))
                return hand_map_at_3(rows.select(classes).to_numpy(), classes, [labels[i] for i in rows["id"]])
            scores = {variant: other_folds(frame) for variant, frame in oof.items()}
            assert scores[picked] == pytest.approx(max(scores.values()), abs=1e-12), (name, fold)


@pytest.mark.slow
def test_unlp_recipe_runs_end_to_end(tmp_path):
    check_unlp(*run_recipe("unlp", tmp_path))


def check_unlp(config: dict, results: Path) -> None:
    spec = label_spec(results)
    train_ids = pl.read_parquet(results / "data" / "train.parquet")["id"].to_list()
    check_oof(results, "gemma2_27b", spec, train_ids, 2)
    score = json.loads((results / "scores" / "gemma2_27b.json").read_text())
    assert score["selection"] == "best_epoch_on_valid_fold" and score["cv_optimistic"] is True
    check_oof(results, "folds_mean", spec, train_ids, 2)
    thresholds = json.loads((results / "thresholds" / "folds_mean.json").read_text())["thresholds"]
    assert set(thresholds) == set(spec.probability_columns) and all(0 < t < 1 for t in thresholds.values())
    test = pl.read_parquet(results / "ensembles" / "folds_mean" / "test.parquet")
    submission = pl.read_csv(results / "submissions" / "hybrid" / "submission.csv")
    assert submission["id"].to_list() == pl.read_parquet(results / "data" / "test.parquet")["id"].to_list()
    applied = test.join(submission, on="id", suffix="_label")
    for column, threshold in thresholds.items():  # the submitted labels are the thresholds applied
        assert applied[f"{column}_label"].to_list() == (applied[column] >= threshold).cast(pl.Int64).to_list(), column


@pytest.mark.slow
def test_cdc_recipe_runs_end_to_end(tmp_path):
    check_cdc(*run_recipe("cdc", tmp_path))


def check_cdc(config: dict, results: Path) -> None:
    spec = label_spec(results)
    train_ids = pl.read_parquet(results / "data" / "train.parquet")["id"].to_list()
    datasets = {f"{g}-seed{s}" for g, settings in config["generators"].items() for s in settings.get("seeds", [0])}
    assert len(datasets) == 4  # gemma x 2 seeds, qwen, mistral
    for dataset in datasets:
        generator, seed = dataset.split("-seed")
        assert pl.read_parquet(results / "generated" / generator / f"seed{seed}.parquet").height > 0, dataset
        for teacher in ("deberta", "gemma_r1"):
            check_probabilities(pl.read_parquet(results / "soft_labels" / teacher / f"{dataset}.parquet"), spec, dataset)
    for model in config["models"]:
        check_oof(results, model, spec, train_ids, 2)
    final = check_oof(results, "final", spec, train_ids, 2).sort("id")
    configured = config["ensembles"]["final"]["members"]
    weights = json.loads((results / "ensembles" / "final" / "weights.json").read_text())
    assert weights["blend"] == "mean" and set(weights["members"]) == set(configured)
    total = sum(configured.values())
    assert weights["given_weights"] == pytest.approx({name: w / total for name, w in configured.items()})
    # the ensemble's OOF is the weighted mean of its members' OOF (computed == applied)
    blended = sum(weight * pl.read_parquet(results / "oof" / f"{name}.parquet").sort("id")
                  .select(spec.probability_columns).to_numpy() for name, weight in weights["given_weights"].items())
    np.testing.assert_allclose(final.select(spec.probability_columns).to_numpy(), blended, atol=1e-5)
    submission = pl.read_csv(results / "submissions" / "final" / "submission.csv", infer_schema=False)
    assert submission["id"].to_list() == pl.read_parquet(results / "data" / "test.parquet")["id"].to_list()
    for head in spec.heads:
        values = set(submission[head.name].to_list())
        assert values <= ({"0", "1"} if head.type == "binary" else set(head.classes)), (head.name, values)


# ---- Eedi: retrieval ----


@pytest.fixture(scope="module")
def eedi_run(tmp_path_factory) -> tuple[dict, Path]:
    return run_recipe("eedi", tmp_path_factory.mktemp("eedi"))


@pytest.mark.slow
def test_eedi_recipe_runs_end_to_end(eedi_run):
    check_eedi(*eedi_run)


def check_record(results: Path, record_name: str, submission: str, shape: str) -> dict:
    """The overlay's `register:` froze `submission` as a record (registry_dir's default, submissions/, beside the
    results) and `all` rebuilt everything it hashes in scratch from the record alone: every file byte-identical.
    The record's manifest `hashed` part, for the caller's checks."""
    record = yaml.safe_load((results.parents[1] / "submissions" / f"{record_name}.yaml").read_text())
    assert (record["submission"], record["shape"]) == (submission, shape)
    hashed = record["manifest"]["hashed"]
    manifest = json.loads((results / "submissions" / submission / "manifest.json").read_text())
    assert hashed == manifest["hashed"]
    files = len(hashed["inputs"]) + len(hashed["artifacts"]) + len(hashed["outputs"])
    assert (results / "verify" / f"{record_name}.ok").read_text() == (
        f"{record_name}: {files} files byte-identical after a rebuild from the frozen config\n")
    assert not (results / "verify" / f"{record_name}.scratch").exists()
    return hashed


@pytest.mark.slow
def test_the_submitted_pipeline_freezes_and_rebuilds_from_its_record(eedi_run):
    """`register:` names a retrieval pipeline like any submission: its record's manifest hashes everything upstream
    (the mined negatives and teacher scores each fine-tune trained on, every fine-tune's merged model, settings and
    kept checkpoint, the prepare function's rows), and verify rebuilt all of it in scratch from the record alone."""
    config, results = eedi_run
    hashed = check_record(results, "eedi-demo-lb", "misconceptions", "retrieval")
    root = f"{config['output_dir']}/retrieval/misconceptions"
    assert {f"{root}/iter0/mined.jsonl", f"{root}/iter0/reranker_mined.jsonl", f"{root}/iter1/mined.jsonl",
            f"{root}/iter1/scored.jsonl"} <= set(hashed["artifacts"])
    for iteration in (0, 1):
        for role in ("embedder", "reranker"):
            assert {f"{root}/iter{iteration}/{role}/settings.json",
                    f"{root}/iter{iteration}/{role}/merged/model.safetensors"} <= set(hashed["artifacts"])
    # the checkpoints kept (epoch 3 of 4, chosen beforehand in the final fit) are part of what it hashes
    assert {f"{root}/iter0/reranker/checkpoints.json", f"{root}/iter1/embedder/checkpoints.json",
            f"{root}/iter1/reranker/checkpoints.json"} <= set(hashed["artifacts"])
    assert set(hashed["inputs"]) >= {f"{root}/data/{name}.parquet" for name in ("queries", "corpus", "test_queries")}
    assert sorted(hashed["base_models"]) == ["bge_icl=tiny:mistral", "qwen14b=tiny:qwen2"]


def check_eedi(config: dict, results: Path) -> None:
    k = config["retrieval"]["misconceptions"]["k"]
    for pipeline in ("misconceptions", "misconceptions_cv"):
        root = results / "retrieval" / pipeline
        queries = pl.read_parquet(root / "data" / "queries.parquet")
        # the recipe's prepare function made them from the demo's Eedi-shaped wide file: one per wrong answer
        raw = pl.read_csv(root / "raw" / "train.csv", infer_schema=False)
        assert queries["id"].to_list() == [f"{question}_{letter}" for question, correct in
                                           zip(raw["QuestionId"], raw["CorrectAnswer"]) for letter in "ABCD"
                                           if letter != correct]
        corpus_ids = set(pl.read_parquet(root / "data" / "corpus.parquet")["id"].to_list())
        assert len(corpus_ids) == 200
        positives = dict(zip(queries["id"].to_list(), queries["positive_ids"].to_list()))
        final_fit = pipeline == "misconceptions"
        for iteration in (0, 1):
            step = root / f"iter{iteration}"
            # the ICL embedder and the reranker are LoRA fine-tunes of the decoders
            for role in ("embedder", "reranker"):
                settings = json.loads((step / role / "settings.json").read_text())["settings"]
                assert settings["lora"] is True and settings["model_class"] == (
                    "decoder-only-icl" if role == "embedder" else "decoder-only-base")
                assert list((step / role / "adapter").glob("adapter_model.safetensors")), (pipeline, iteration, role)
            kept = [] if iteration == 0 else ["embedder"]
            for role in kept + ["reranker"]:
                record = json.loads((step / role / "checkpoints.json").read_text())
                if final_fit:  # epoch 3 of a 4-epoch schedule, chosen beforehand; training stopped after it
                    assert (record["chosen_epoch"], record["planned_epochs"]) == (3, 4), (iteration, role)
                    assert [entry["epoch"] for entry in record["epochs"]] == [1, 2, 3]
                    assert record["selected_on_valid_fold"] is False
                else:  # the best of 4 on the valid fold
                    scores = [entry[f"map@{k}"] for entry in record["epochs"]]
                    assert record["chosen_epoch"] == 1 + int(np.argmax(scores)) and len(scores) == 4
            score = json.loads((step / "score.json").read_text())
            oof = pl.read_parquet(step / "oof.parquet")
            if final_fit:
                assert score["final_fit"] is True and oof.height == 0
                continue
            held_out = pl.read_parquet(root / "folds.parquet").filter(pl.col("fold") == 0)["id"].to_list()
            assert sorted(oof["id"].to_list()) == sorted(held_out) and score["selected_on_valid_fold"] is True
            for ranking, name in (("embedder_ids", "embedder"), ("reranked_ids", "reranked")):
                pairs = [(positives[row_id], ranked) for row_id, ranked in zip(oof["id"], oof[ranking])]
                assert all(set(ranked) <= corpus_ids for _, ranked in pairs)
                assert score["overall"][name][f"map@{k}"] == pytest.approx(
                    sum(apk(actual, ranked, k) for actual, ranked in pairs) / len(pairs), abs=1e-12)
        if not final_fit:  # the fold 0 score of the chosen checkpoint is what the choice was made on
            record = json.loads((root / "iter1" / "reranker" / "checkpoints.json").read_text())
            score = json.loads((root / "iter1" / "score.json").read_text())
            assert score["overall"]["reranked"][f"map@{k}"] == pytest.approx(record["chosen_score"], abs=1e-12)
        # the stage submitted: the final fit the write-up's (iteration 1 reranked, submit: last by default, nothing
        # scored), the validation run the best valid-fold MAP@25 among zero-shot bge-en-icl's family and the iterations
        stage = json.loads((root / "submission_stage.json").read_text())
        if final_fit:
            assert (stage["stage"], stage["submit"], stage["score"]) == ("iter1/reranked", "last", None)
        else:
            rows = json.loads((root / "stages.json").read_text())["stages"]
            assert [row["stage"] for row in rows][0] == "zero_shot" and len(rows) == 5
            best = max(rows, key=lambda row: (row["map"], -rows.index(row)))
            assert (stage["stage"], stage["submit"], stage["score"]) == (best["stage"], "best", best["map"])
        test = pl.read_parquet(root / "data" / "test_queries.parquet")
        submission = pl.read_csv(results / "submissions" / pipeline / "submission.csv")
        ranked = pl.read_parquet(results / Path(stage["test_rankings"]).relative_to(config["output_dir"]))
        ranked = ranked[stage["ranking_column"]]
        assert submission["MisconceptionId"].to_list() == [" ".join(ids) for ids in ranked]
        assert submission.columns == ["QuestionId_Answer", "MisconceptionId"]
        assert submission["QuestionId_Answer"].to_list() == test["id"].to_list()
        for ranked in submission["MisconceptionId"]:
            ids = ranked.split()
            assert len(ids) == min(k, len(corpus_ids)) and len(set(ids)) == len(ids) and set(ids) <= corpus_ids


# ---- AIMO: answers and votes ----


@pytest.fixture(scope="module")
def aimo_run(tmp_path_factory) -> tuple[dict, Path]:
    return run_recipe("aimo", tmp_path_factory.mktemp("aimo"))


@pytest.mark.slow
def test_aimo_recipe_runs_end_to_end(aimo_run):
    check_aimo(*aimo_run)


@pytest.mark.slow
def test_the_submitted_vote_freezes_and_rebuilds_from_its_record(aimo_run):
    """`register:` names a vote's submission like any other: the record holds the answers shape and a manifest of
    everything upstream (the dev answers that chose the strategy, the test answers, the problems, the prompts and
    sampling settings, the language models' ids), and verify rebuilt it in scratch byte for byte."""
    config, results = aimo_run
    hashed = check_record(results, "aimo-demo-lb", "all_models", "answers")
    out = config["output_dir"]
    answer_sets = config["votes"]["all_models"]["answers"]
    assert {f"{out}/{folder}/{answers}.parquet" for folder in ("answers", "test_answers") for answers in answer_sets} | {
        f"{out}/votes/all_models/votes.parquet", f"{out}/votes/all_models/score.json"} <= set(hashed["artifacts"])
    assert {f"{out}/data/math_problems.parquet", f"{out}/data/math_test_problems.parquet"} <= set(hashed["inputs"])
    assert sorted(hashed["base_models"]) == ["gemma3_12b=tiny:gemma3", "qwen3_32b=tiny:qwen3"]
    assert hashed["config"]["answers"]["samples"] == config["answers"]["samples"]
    assert "resources" not in json.dumps(hashed["config"])  # where jobs ran is not what they made


def check_aimo(config: dict, results: Path) -> None:
    """Each vote's recorded dev accuracy per strategy equals a recount from the sampled answers, and each
    submission answers exactly the test problems with the dev-chosen strategy's vote of the test answers."""
    from workflow_scripts.generated.voting import canonical_answer, vote

    problems = pl.read_parquet(results / "data" / "math_problems.parquet")
    truth = {row_id: canonical_answer(a) for row_id, a in problems.select("id", "answer").iter_rows()}
    test_ids = pl.read_parquet(results / "data" / "math_test_problems.parquet")["id"].to_list()

    def samples_of(folder: str, names: list[str]) -> dict:
        answers = pl.concat([pl.read_parquet(results / folder / f"{a}.parquet")
                             .select("id", pl.col("answer").cast(pl.String), "confidence") for a in names])
        grouped = {}
        for row_id, answer, confidence in answers.iter_rows():
            if answer is not None:
                grouped.setdefault(row_id, []).append((answer, confidence))
        return grouped

    for name, settings in config["votes"].items():
        score = json.loads((results / "votes" / name / "score.json").read_text())
        fallback = settings.get("fallback", "majority")
        dev = samples_of("answers", settings["answers"])
        assert set(score["strategies"]) == set(settings.get("strategies") or score["strategies"])
        for strategy, recorded in score["strategies"].items():
            correct = sum(vote(dev.get(row_id, []), strategy, fallback)[0] == expected
                          for row_id, expected in truth.items() if expected is not None)
            assert (recorded["correct"], recorded["n"]) == (correct, len(truth)), (name, strategy)
        submission = pl.read_csv(results / "submissions" / name / "submission.csv", infer_schema=False)
        assert submission.columns == ["id", "answer"] and submission["id"].to_list() == test_ids, name
        test = samples_of("test_answers", settings["answers"])
        for row_id, submitted in submission.iter_rows():
            voted, _ = vote(test.get(row_id, []), score["best"], fallback)
            assert submitted == (voted if voted is not None else "0"), (name, row_id)


# ---- the code-competition packages, run offline as Kaggle runs them ----


def run_package_notebook(package: Path, root: Path, files: dict[str, Path], extra: dict[str, str] | None = None):
    """The package's notebook in a fresh /kaggle tree (dataset/ and notebook/ only, no project on the path);
    `extra`: more files of the competition's folder (relative path -> text)."""
    from kaggle_tree import kaggle_tree, run_notebook

    tree = kaggle_tree(package, root, files)
    for relative, text in (extra or {}).items():
        (tree["competition"] / relative).parent.mkdir(parents=True, exist_ok=True)
        (tree["competition"] / relative).write_text(text)
    result, wall, cpu = run_notebook(tree)
    print(f"notebook {package.name}: {wall:.0f} s wall, {cpu:.0f} s CPU")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    code_line = next(line for line in result.stdout.splitlines() if line.startswith("oofline code: "))
    # every shape's notebook first compares the image's libraries with those the package was built with
    assert any(line.startswith("oofline: built with ") for line in result.stdout.splitlines()), result.stdout[-2000:]
    assert Path(code_line.removeprefix("oofline code: ")).resolve() == (tree["site"] / "workflow_scripts").resolve()
    return tree, result


def rows_by_id(path: Path, id_column: str) -> dict[str, tuple]:
    frame = pl.read_csv(path, infer_schema=False)
    return {row[0]: row for row in frame.select(id_column, *[c for c in frame.columns if c != id_column]).rows()}


def copied_dataset(package: Path, target: Path) -> Path:
    import shutil

    shutil.copytree(package / "dataset", target)
    return target


def one_error_line(main, argv: list[str], capsys) -> str:
    from workflow_scripts.errors import run_cli

    capsys.readouterr()  # what earlier runs in this test printed
    code = run_cli(main, argv)
    error = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in error and error.startswith("oofline error: "), error
    return error


@pytest.mark.slow
def test_map_package_writes_the_workflow_rows_offline_on_a_shuffled_subset(map_run, tmp_path, capsys):
    from workflow_scripts.kaggle import inference

    config, results = map_run
    name = next(iter(config["kaggle"]))
    package = results / "kaggle" / name
    subset = pl.read_csv(results / "demo" / "test.csv", infer_schema=False).sample(n=25, seed=3, shuffle=True)
    subset.write_csv(tmp_path / "test.csv")
    tree, _ = run_package_notebook(package, tmp_path / "run", {"test.csv": tmp_path / "test.csv"})
    workflow = rows_by_id(results / "submissions" / name / "submission.csv", "id")
    written = pl.read_csv(tree["working"] / "submission.csv", infer_schema=False)
    assert written["id"].to_list() == subset["id"].to_list()  # no sample submission: the test file's order
    assert written.rows() == [workflow[i] for i in subset["id"]]
    # the plan's memory: each member as loaded (the QLoRA member in 4 bits), the tiny models fit a CPU notebook
    memory = json.loads((package / "plan.json").read_text())["memory"]
    assert memory["members"]["deepseek_math_7b"]["quantization"] == "4bit" and memory["fits"]
    # the match fails when a shipped file is removed or altered
    dataset = copied_dataset(package, tmp_path / "removed")
    member = sorted((dataset / "models").iterdir())[0]
    import shutil

    shutil.rmtree(member / "fold0")
    args = ["--test", str(tmp_path / "test.csv"), "--out-dir", str(tmp_path / "out")]
    assert "the package lacks" in one_error_line(inference.main, ["--package", str(dataset), *args], capsys)
    dataset = copied_dataset(package, tmp_path / "altered")
    weights = dataset / "ensembles" / f"{config['submissions'][name]['source']}.json"
    record = json.loads(weights.read_text())
    record["weights"] = {member: (1.0 if index == 0 else 0.0) for index, member in enumerate(record["members"])}
    weights.write_text(json.dumps(record))
    inference.main(["--package", str(dataset), *args])
    assert pl.read_csv(tmp_path / "out" / "submission.csv", infer_schema=False).rows() != written.rows()


@pytest.mark.slow
def test_eedi_package_ranks_as_the_workflow_on_the_public_test_and_a_shuffled_subset(eedi_run, tmp_path, capsys):
    import filecmp

    from workflow_scripts.kaggle import retrieval_package

    config, results = eedi_run
    name = next(iter(config["kaggle"]))
    package, raw_test = results / "kaggle" / name, results / "retrieval" / name / "raw" / "test.csv"
    shipped = json.loads((package / "dataset" / "oofline_package.json").read_text())
    # the final fit (valid_fold: null) submits the last iteration reranked (submit: last, its default)
    stage = json.loads((results / "retrieval" / name / "submission_stage.json").read_text())
    assert shipped["prepare"]["file"] == "prepare/eedi.py" and shipped["stage"] == stage["stage"] == "iter1/reranked"
    plan = json.loads((package / "plan.json").read_text())
    assert plan["estimate"]["corpus_passages"] == 200 and plan["estimate"]["corpus_embedding_seconds_saved"] > 0
    assert set(plan["estimate"]["memory"]["members"]) == {"embedder", "reranker"}
    # the public test, in this process: byte-identical to the workflow's submission
    retrieval_package.main(["--package", str(package / "dataset"), "--test", str(raw_test), "--out-dir", str(tmp_path)])
    workflow_csv = results / "submissions" / name / "submission.csv"
    assert filecmp.cmp(tmp_path / "submission.csv", workflow_csv, shallow=False)
    # three of the raw test's questions, shuffled: the notebook prepares their queries and ranks them as the workflow
    questions = pl.read_csv(raw_test, infer_schema=False)
    subset = questions.sample(n=questions.height - 1, seed=1, shuffle=True)
    subset.write_csv(tmp_path / "test.csv")
    tree, _ = run_package_notebook(package, tmp_path / "run", {"test.csv": tmp_path / "test.csv"})
    assert (tree["site"] / "FlagEmbedding" / "__init__.py").exists()  # on no Kaggle image: shipped as a wheel
    workflow = rows_by_id(workflow_csv, "QuestionId_Answer")
    written = pl.read_csv(tree["working"] / "submission.csv", infer_schema=False)
    expected = [f"{q}_{letter}" for q, correct in zip(subset["QuestionId"], subset["CorrectAnswer"]) for letter in "ABCD"
                if letter != correct]
    assert written["QuestionId_Answer"].to_list() == expected
    assert written.rows() == [workflow[i] for i in expected]
    assert all(len(ranked.split()) == 25 or len(ranked.split()) == 200 for _, ranked in written.rows())
    # the match fails when a shipped file is removed or altered
    args = ["--test", str(tmp_path / "test.csv"), "--out-dir", str(tmp_path / "out")]
    dataset = copied_dataset(package, tmp_path / "removed")
    (dataset / "corpus_embeddings.safetensors").unlink()
    assert "lacks ['corpus_embeddings.safetensors']" in one_error_line(
        retrieval_package.main, ["--package", str(dataset), *args], capsys)
    dataset = copied_dataset(package, tmp_path / "altered_prepare")
    (dataset / "prepare" / "eedi.py").write_text((dataset / "prepare" / "eedi.py").read_text().replace(
        "Student's answer: {wrong}", "{wrong}"))
    assert "the prepare function's code differs" in one_error_line(
        retrieval_package.main, ["--package", str(dataset), *args], capsys)
    dataset = copied_dataset(package, tmp_path / "altered")
    from safetensors.numpy import load_file, save_file

    vectors = load_file(str(dataset / "corpus_embeddings.safetensors"))["embeddings"]
    save_file({"embeddings": vectors[::-1].copy()}, str(dataset / "corpus_embeddings.safetensors"))
    retrieval_package.main(["--package", str(dataset), *args])
    assert pl.read_csv(tmp_path / "out" / "submission.csv", infer_schema=False).rows() != written.rows()


@pytest.mark.slow
def test_editing_the_prepare_function_reruns_what_reads_its_rows(eedi_run):
    """Its code's digest is a param: a copy in the working directory (found before the checkout's) with one more
    query line plans the prepare step and everything after it; a comment plans nothing."""
    config, results = eedi_run
    workdir = results.parent.parent
    source = (REPO / "prepare" / "eedi.py").read_text()
    (workdir / "prepare").mkdir()
    try:
        (workdir / "prepare" / "eedi.py").write_text(source + "\n# a comment\n")
        assert dry_run_rules(workdir) == set()
        (workdir / "prepare" / "eedi.py").write_text(source.replace("Subject: ", "Topic: "))
        planned = dry_run_rules(workdir)
        assert {"retrieval_prepare", "retrieval_data", "finetune_retriever", "evaluate_retrieval", "retrieval_submission",
                "kaggle_corpus_embeddings", "kaggle_package"} <= planned
        assert "retrieval_demo_raw" not in planned and "retrieval_base_model" not in planned
    finally:
        import shutil

        shutil.rmtree(workdir / "prepare")


def dry_run_rules(workdir: Path) -> set[str]:
    configs = [REPO / "recipes" / "eedi.yaml", REPO / "recipes" / "demo-models-eedi.yaml"]
    result = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-s", str(REPO / "Snakefile"), "--directory",
                             str(workdir), "--cores", "1", "--configfile", *map(str, configs)],
                            capture_output=True, text=True, cwd=workdir, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return {line.split()[-1].rstrip(":") for line in result.stdout.splitlines()
            if line.startswith(("rule ", "localrule "))} - {"all"}


# a local stand-in of the competition's evaluation API, with its call shape (not Kaggle's code): predict(id_, problem)
# is called once per problem with one-row series and returns a one-row frame with id and answer
STAND_IN_SERVER = '''
import os

import polars as pl


class AIMO3InferenceServer:
    def __init__(self, predict):
        self.predict = predict

    def _serve_file(self, path, out):
        served = []
        for row in pl.read_csv(path, infer_schema=False).iter_rows(named=True):
            answer = self.predict(pl.Series("id", [row["id"]]), pl.Series("problem", [row["problem"]]))
            assert isinstance(answer, pl.DataFrame) and answer.columns == ["id", "answer"] and answer.height == 1
            served.append((str(answer["id"][0]), str(answer["answer"][0])))
        pl.DataFrame(served, schema=["id", "answer"], orient="row").write_csv(out)

    def serve(self):  # the competition rerun: the stand-in serves the file named by OOFLINE_STAND_IN_PROBLEMS
        self._serve_file(os.environ["OOFLINE_STAND_IN_PROBLEMS"], "served_rerun.csv")

    def run_local_gateway(self, data_paths):
        self._serve_file(data_paths[0], "served.csv")
'''
STAND_IN = {"kaggle_evaluation/__init__.py": "", "kaggle_evaluation/aimo_3_inference_server.py": STAND_IN_SERVER}


@pytest.mark.slow
def test_aimo_package_serves_the_workflow_vote_offline_on_a_shuffled_subset(aimo_run, tmp_path, capsys, monkeypatch):
    """Through the evaluation API's local gateway (a stand-in), each problem answered alone: the answers the
    workflow's own vote gave, sampled with the same per-problem seeds."""
    from workflow_scripts.kaggle import answers_package

    config, results = aimo_run
    name = next(iter(config["kaggle"]))
    package = results / "kaggle" / name
    workflow = rows_by_id(results / "submissions" / name / "submission.csv", "id")
    problems = pl.read_parquet(results / "data" / "math_test_problems.parquet").select("id", "problem")
    subset = problems.sample(n=problems.height - 1, seed=2, shuffle=True)
    subset.write_csv(tmp_path / "test.csv")
    tree, result = run_package_notebook(package, tmp_path / "run", {"test.csv": tmp_path / "test.csv"}, STAND_IN)
    served = pl.read_csv(tree["working"] / "served.csv", infer_schema=False)
    assert served["id"].to_list() == subset["id"].to_list()
    assert served.rows() == [workflow[i] for i in subset["id"]]
    assert pl.read_csv(tree["working"] / "submission.csv", infer_schema=False).rows() == served.rows()
    assert "transformers backend" in result.stdout  # no vLLM here: logged
    # a competition rerun serves through serve(); a spent budget still answers every problem, with fewer samples
    dataset = copied_dataset(package, tmp_path / "budget")
    shipped = json.loads((dataset / "oofline_package.json").read_text())
    samples = int(config["answers"]["samples"])
    for entry in shipped["answer_sets"]:
        entry["argv"] += ["--batch-size", "1"]  # one sample per batch, so a budget can stop after the first
    shipped["seconds_per_problem"] = 1e-6
    (dataset / "oofline_package.json").write_text(json.dumps(shipped))
    monkeypatch.setenv("KAGGLE_IS_COMPETITION_RERUN", "1")
    monkeypatch.setenv("OOFLINE_STAND_IN_PROBLEMS", str(tmp_path / "test.csv"))
    monkeypatch.chdir(tmp_path)
    competition = tree["competition"]
    timing = answers_package.run_package(dataset, tmp_path / "test.csv", tmp_path / "out", str(competition))
    assert timing["served"] == subset.height and (tmp_path / "served_rerun.csv").exists()
    rerun = pl.read_csv(tmp_path / "served_rerun.csv", infer_schema=False)
    assert rerun["id"].to_list() == subset["id"].to_list() and rerun["answer"].null_count() == 0
    for drawn in timing["samples"].values():
        assert set(drawn.values()) == {1} and samples > 1  # the first batch of each answer set, no more
    # the match fails when a shipped file is removed or altered
    monkeypatch.delenv("KAGGLE_IS_COMPETITION_RERUN")
    args = ["--test", str(tmp_path / "test.csv"), "--out-dir", str(tmp_path / "altered_out"),
            "--competition-dir", str(competition)]
    dataset = copied_dataset(package, tmp_path / "removed")
    first_model = json.loads((dataset / "oofline_package.json").read_text())["answer_sets"][0]["model"]
    (dataset / first_model / "config.json").unlink()
    assert "the package lacks" in one_error_line(answers_package.main, ["--package", str(dataset), *args], capsys)
    dataset = copied_dataset(package, tmp_path / "altered")
    shipped = json.loads((dataset / "oofline_package.json").read_text())
    for entry in shipped["answer_sets"]:
        entry["argv"] += ["--seed", "12345"]
    (dataset / "oofline_package.json").write_text(json.dumps(shipped))
    answers_package.main(["--package", str(dataset), *args])
    assert pl.read_csv(tmp_path / "altered_out" / "submission.csv", infer_schema=False).rows() != served.rows()
