"""Every write-up recipe runs end to end on the demo data with its demo-models overlay (the recipe's whole
structure, tiny models), and its outputs are checked: OOF rows cover every training row once and sum or scale
as the task requires, recorded scores equal a recomputation, submissions answer exactly the test ids with
what the applied predictions say. Each run prints its wall and CPU seconds (README: "Recipes in CI")."""
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


@pytest.mark.slow
def test_map_recipe_runs_end_to_end(tmp_path):
    check_map(*run_recipe("map", tmp_path))


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


@pytest.mark.slow
def test_eedi_recipe_runs_end_to_end(tmp_path):
    check_eedi(*run_recipe("eedi", tmp_path))


def check_eedi(config: dict, results: Path) -> None:
    k = config["retrieval"]["misconceptions"]["k"]
    for pipeline in ("misconceptions", "misconceptions_cv"):
        root = results / "retrieval" / pipeline
        queries = pl.read_parquet(root / "data" / "queries.parquet")
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
        test = pl.read_parquet(root / "data" / "test_queries.parquet")
        submission = pl.read_csv(results / "submissions" / pipeline / "submission.csv")
        assert submission.columns == ["QuestionId_Answer", "MisconceptionId"]
        assert submission["QuestionId_Answer"].to_list() == test["id"].to_list()
        for ranked in submission["MisconceptionId"]:
            ids = ranked.split()
            assert len(ids) == min(k, len(corpus_ids)) and len(set(ids)) == len(ids) and set(ids) <= corpus_ids


# ---- AIMO: answers and votes ----


@pytest.mark.slow
def test_aimo_recipe_runs_end_to_end(tmp_path):
    check_aimo(*run_recipe("aimo", tmp_path))


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
