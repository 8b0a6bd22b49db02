"""Sweeps as config: a grid, named variants or seeds of a model and subsets, weight grids or top-k values of an
ensemble expand into ordinary models and ensembles with stable, readable names; every expanded entry is
validated and its problems name the key the user wrote; the sweep table marks its best row as picked on the
OOF it is scored on, and nested selection scores that pick honestly."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from workflow_scripts import leaderboard as lb
from workflow_scripts import metrics
from workflow_scripts.config_check import check_config
from workflow_scripts.errors import OoflineError
from workflow_scripts.io import write_json
from workflow_scripts.labels import Head, LabelSpec
from workflow_scripts.sweep_table import build_table, main as table_main, nested_selection, to_markdown
from workflow_scripts.sweeps import expand_sweeps, plan_lines, value_part

REPO = Path(__file__).resolve().parent.parent
DEMO = yaml.safe_load((REPO / "config.yaml").read_text())


def demo_with(models: dict | None = None, ensembles: dict | None = None, **sections) -> dict:
    config = copy.deepcopy(DEMO)
    config["models"].update(models or {})
    config["ensembles"] = {**config.get("ensembles", {}), **(ensembles or {})}
    config.update(sections)
    return config


QWEN = {"source": "tiny:qwen3", "kind": "decoder_lora", "lr": 2e-4, "r": 8, "alpha": 16}


# ---- names ----

@pytest.mark.parametrize("value, part", [(1e-4, "1e-4"), (2.0e-4, "2e-4"), (2.5e-5, "2.5e-5"), (0.05, "0.05"),
                                         (4.0, "4"), (16, "16"), (True, "true"), ("4bit", "4bit"),
                                         ("Qwen/Qwen3-8B", "Qwen_Qwen3-8B"), (None, "none")])
def test_a_value_is_a_short_path_safe_name_part(value, part):
    assert value_part(value) == part


def test_a_grid_expands_into_one_model_per_combination_named_by_its_values():
    config = expand_sweeps({"models": {"qwen": {**QWEN, "grid": {"r": [8, 16], "lr": [1.0e-4, 2.0e-4]}}}}).config
    assert list(config["models"]) == ["qwen.lr1e-4.r8", "qwen.lr1e-4.r16", "qwen.lr2e-4.r8", "qwen.lr2e-4.r16"]
    assert config["models"]["qwen.lr2e-4.r16"] == {**QWEN, "lr": 2.0e-4, "r": 16}
    assert "ensembles" not in config  # no seeds, no ensembles made


def test_names_are_stable_adding_a_value_adds_names_and_reordering_keys_changes_none():
    def names(grid):
        return list(expand_sweeps({"models": {"qwen": {**QWEN, "grid": grid}}}).config["models"])

    before = names({"lr": [1.0e-4, 2.0e-4], "r": [8, 16]})
    after = names({"r": [8, 16, 32], "lr": [1.0e-4, 2.0e-4]})  # keys reordered, one value added
    assert set(before) < set(after) and set(after) - set(before) == {"qwen.lr1e-4.r32", "qwen.lr2e-4.r32"}


def test_seeds_train_each_variant_per_seed_and_their_mean_is_an_ensemble_named_as_the_model():
    expansion = expand_sweeps({"models": {"qwen": {**QWEN, "seeds": [42, 43]}},
                               "ensembles": {"blend": {"members": ["qwen", "other"]}}})
    config = expansion.config
    assert config["models"] == {"qwen.seed42": {**QWEN, "seed": 42}, "qwen.seed43": {**QWEN, "seed": 43}}
    assert config["ensembles"]["qwen"] == {"members": ["qwen.seed42", "qwen.seed43"], "method": "mean"}
    assert config["ensembles"]["blend"] == {"members": ["qwen", "other"]}  # the mean is used like a model
    [variant] = expansion.sweeps["qwen"].variants
    assert (variant.name, variant.source, variant.seeds) == ("qwen", "ensemble", {42: "qwen.seed42", 43: "qwen.seed43"})


def test_named_variants_set_keys_together_times_the_grid():
    entry = {**QWEN, "variants": {"qlora": {"quantization": "4bit", "batch_size": 16},
                                  "lora": {"quantization": "none", "batch_size": 8}}, "grid": {"lr": [1.0e-4]}}
    models = expand_sweeps({"models": {"emb": entry}}).config["models"]
    assert models == {"emb.qlora.lr1e-4": {**QWEN, "quantization": "4bit", "batch_size": 16, "lr": 1e-4},
                      "emb.lora.lr1e-4": {**QWEN, "quantization": "none", "batch_size": 8, "lr": 1e-4}}


def test_an_ensemble_sweeps_subsets_of_a_pool_times_top_k():
    expansion = expand_sweeps({"ensembles": {"sub": {
        "grid": {"members": {"pool": ["a", "b", "c", "d"], "size": 3}, "member_top_k": [3, 10]}}}})
    ensembles = expansion.config["ensembles"]
    assert len(ensembles) == 8  # C(4, 3) subsets x 2 top-k values
    assert ensembles["sub.a-b-d.top10"] == {"members": ["a", "b", "d"], "member_top_k": 10}
    table = expansion.sweeps["sub"]
    assert table.columns == ["member_top_k"] and table.member_columns == ["a", "b", "c", "d"]
    row = next(v for v in table.variants if v.name == "sub.a-b-d.top10")
    assert row.values == {"member_top_k": 10, "member:a": 1.0, "member:b": 1.0, "member:c": None, "member:d": 1.0}


def test_a_weight_grid_lays_weights_over_the_members_and_zero_leaves_a_member_out():
    ensembles = expand_sweeps({"ensembles": {"ratio": {"members": {"a": 1.0, "b": 1.0, "c": 0.8},
                                                       "grid": {"weights": {"a": [0, 1.2], "b": [1.0]}}}}}).config["ensembles"]
    assert ensembles == {"ratio.a_w0-b_w1": {"members": {"b": 1.0, "c": 0.8}},
                         "ratio.a_w1.2-b_w1": {"members": {"a": 1.2, "b": 1.0, "c": 0.8}}}


def test_labelled_rows_of_a_hand_kept_table_keep_their_labels():
    expansion = expand_sweeps({"ensembles": {"table": {"variants": {
        "row01": {"members": ["a", "b"], "member_top_k": 3},
        "row02": {"members": {"a": 1.0, "b": 0, "c": 1.2}}}}}})
    assert expansion.config["ensembles"] == {"table.row01": {"members": ["a", "b"], "member_top_k": 3},
                                             "table.row02": {"members": {"a": 1.0, "c": 1.2}}}
    assert [v.values for v in expansion.sweeps["table"].variants] == [
        {"label": "row01", "member_top_k": 3, "member:a": 1.0, "member:b": 1.0, "member:c": None},
        {"label": "row02", "member_top_k": None, "member:a": 1.0, "member:b": None, "member:c": 1.2}]


def test_a_config_without_sweeps_comes_back_equal():
    assert expand_sweeps(DEMO).config == DEMO and check_config(DEMO) == check_config(check_config(DEMO))


# ---- validation of every expanded entry, on the key the user wrote ----

@pytest.mark.parametrize("models, ensembles, expected", [
    # the kind check of every variant: one line, on the grid key
    ({"m": {"kind": "encoder_full", "source": "tiny:llama", "lr": 1e-3, "grid": {"r": [8, 16]}}}, {},
     "config: models.m.grid.r: encoder_full models have no r (a key of encoder_lora, decoder_lora)"),
    ({"m": {"kind": "tfidf_linear", "grid": {"C": [0.5, "x"]}}}, {},
     "config: models.m.grid.C: 'x' is not of type 'number'"),
    # a key outside the grid: on the model's own key
    ({"m": {"kind": "tfidf_linear", "r": 4, "grid": {"C": [0.5, 4.0]}}}, {},
     "config: models.m.r: tfidf_linear models have no r (a key of encoder_lora, decoder_lora)"),
    ({"m": {"kind": "tfidf_linear", "grid": {"Cee": [0.5]}}}, {}, "config: models.m.grid.Cee: not a model key"),
    ({"m": {"kind": "tfidf_linear", "seeds": [1, 1]}}, {}, "config: models.m.seeds: [1, 1] has non-unique elements"),
    ({"m": {"kind": "tfidf_linear", "seed": 3, "seeds": [1, 2]}}, {},
     "config: models.m.seed: the model has seeds ([1, 2]); leave seed out"),
    ({"m": {"kind": "tfidf_linear", "grid": {"word_ngrams": [[1, 2], [1, 3]]}}}, {},
     "invalid config: 2 problems\nconfig: models.m.grid.word_ngrams: [1, 2] cannot be part of a name; give the "
     "values labels (a mapping label -> value)\nconfig: models.m.grid.word_ngrams: [1, 3] cannot be part of a name; "
     "give the values labels (a mapping label -> value)"),
    ({"m": {"kind": "tfidf_linear", "variants": {"a": {"C": 1.0}}, "grid": {"C": [2.0]}}}, {},
     "config: models.m.grid.C: also set by variants; sweep a key in one of the two"),
    ({"m": {**QWEN, "variants": {"q": {"quantization": "4bit"}, "l": {"quantization": "nope"}}}}, {},
     "config: models.m.variants.l.quantization: 'nope' is not one of ['none', '4bit', '8bit']"),
    ({}, {"e": {"grid": {"members": {"pool": ["tfidf", "minilm"], "size": 3}}}},
     "config: ensembles.e.grid.members.size: 3 is larger than the pool (2 members)"),
    ({}, {"e": {"variants": {"r1": {"members": ["tfidf", "nope"]}}}},
     "config: ensembles.e.variants.r1.members: unknown model(s) ['nope'] (known: "),
    ({}, {"e": {"members": ["tfidf"], "grid": {"member_top_k": [0]}}},
     "config: ensembles.e.grid.member_top_k[0]: 0 is less than the minimum of 1"),
    # the sweep's own name is no model once it has a grid: a place that names it lists the variants
    ({"m": {"kind": "tfidf_linear", "grid": {"C": [0.5, 4.0]}}}, {"e": {"members": ["m", "tfidf"]}},
     "config: ensembles.e.members: 'm' is a sweep (models.m expands into m.C0.5, m.C4); name one of its variants"),
])
def test_a_problem_of_an_expanded_entry_is_one_line_on_the_key_the_user_wrote(models, ensembles, expected):
    with pytest.raises(OoflineError) as error:
        check_config(demo_with(models, ensembles))
    assert str(error.value).startswith(expected), str(error.value)


def test_a_seeded_model_s_name_stays_usable_as_a_member_and_a_submission_source():
    submissions = {**DEMO["submissions"], "seeded": {"source": "tfidf", "format": "top_k", "top_k": 3}}
    config = check_config(demo_with({"tfidf": {**DEMO["models"]["tfidf"], "seeds": [1, 2]}}, submissions=submissions))
    assert config["ensembles"]["tfidf"]["members"] == ["tfidf.seed1", "tfidf.seed2"]
    assert "tfidf" in config["ensembles"]["stacked"]["members"] and config["submissions"]["seeded"]["source"] == "tfidf"


# ---- honest selection ----

SPEC = LabelSpec("multiclass", (Head("label", "multiclass", "label", ("a", "b", "c", "d")),))


def noise_sweep(seed: int, n_variants: int = 20, n_rows: int = 300, n_folds: int = 5):
    rng = np.random.default_rng(seed)
    targets = np.eye(4)[rng.integers(0, 4, n_rows)].astype(np.float32)
    folds = np.arange(n_rows) % n_folds
    variants = [rng.dirichlet(np.ones(4), n_rows).astype(np.float32) for _ in range(n_variants)]
    return variants, targets, folds


def test_on_noise_only_variants_the_in_sample_best_of_n_beats_the_nested_pick():
    """Members that know nothing: every variant's true MAP@3 is chance (0.5 + 0.25/3 with 4 classes). The best of
    20 on the OOF that scores it looks better than chance; picking per fold on the other folds does not."""
    chance = 0.25 + 0.25 / 2 + 0.25 / 3
    in_sample_scores, nested_scores = [], []
    for seed in range(8):
        variants, targets, folds = noise_sweep(seed)
        in_sample_scores.append(max(metrics.task_scores(SPEC, v, targets, "map@3")["score"] for v in variants))
        nested_scores.append(nested_selection(SPEC, variants, targets, folds, "map@3")["score"])
    assert all(best >= nested for best, nested in zip(in_sample_scores, nested_scores))
    assert np.mean(in_sample_scores) - np.mean(nested_scores) > 0.03  # the optimism of the best of 20 on 300 rows
    assert np.mean(in_sample_scores) > chance + 0.03  # the in-sample pick looks like it learned something
    assert abs(np.mean(nested_scores) - chance) < 0.01  # the nested pick scores what noise scores


def test_each_fold_s_pick_is_the_best_variant_on_the_other_folds_and_is_scored_on_that_fold():
    variants, targets, folds = noise_sweep(12, n_variants=4, n_rows=120, n_folds=3)
    nested = nested_selection(SPEC, variants, targets, folds, "map@3")
    assert len(set(nested["picks"].values())) == 3  # this sample picks a different variant in each fold
    picked = np.zeros_like(variants[0])
    for fold in range(3):
        held = folds == fold
        others = [metrics.task_scores(SPEC, v[~held], targets[~held], "map@3")["score"] for v in variants]
        assert nested["picks"][str(fold)] == int(np.argmax(others)) and nested["other_fold_scores"][str(fold)] == others
        picked[held] = variants[nested["picks"][str(fold)]][held]
    assert nested["score"] == metrics.task_scores(SPEC, picked, targets, "map@3")["score"]


def table_spec(select: str = "nested") -> dict:
    return {"name": "qwen", "section": "models", "select": select, "columns": ["lr"], "member_columns": [],
            "variants": [{"name": f"qwen.lr{lr}", "source": "ensemble", "values": {"lr": lr},
                          "seeds": {"1": f"qwen.lr{lr}.seed1", "2": f"qwen.lr{lr}.seed2"}} for lr in ("1e-4", "2e-4")]}


def test_the_table_marks_its_best_row_selected_of_n_and_optimistic_with_seed_spread_and_lb():
    scores = [{"metric": "map@3", "score": 0.70, "fold_mean": 0.7, "fold_std": 0.01},
              {"metric": "map@3", "score": 0.75, "fold_mean": 0.75, "fold_std": 0.02}]
    seeds = {"qwen.lr1e-4.seed1": {"score": 0.68}, "qwen.lr1e-4.seed2": {"score": 0.69},
             "qwen.lr2e-4.seed1": {"score": 0.71}, "qwen.lr2e-4.seed2": {"score": 0.74}}
    nested = {"score": 0.72, "folds": {"0": 0.7, "1": 0.74}, "fold_mean": 0.72, "fold_std": 0.02,
              "picks": {"0": 1, "1": 0}, "other_fold_scores": {"0": [0.1, 0.2], "1": [0.2, 0.1]}}
    frame, summary = build_table(table_spec(), scores, seeds, {"qwen.lr2e-4": {"public": 0.76, "private": None}},
                                 "map@3", nested)
    best = frame.row(1, named=True)
    assert (best["selected"], best["selected_of"], best["cv_optimistic"], best["cv_nested"], best["rank"]) == (
        True, 2, True, 0.72, 1)
    assert best["lb_public"] == 0.76 and best["cv_seed_std"] == pytest.approx(np.std([0.71, 0.74]))
    assert best["cv_seeds"] == "0.71000 0.74000" and frame.row(0, named=True)["selected_of"] is None
    assert summary["nested"]["picks"] == {"0": "qwen.lr2e-4", "1": "qwen.lr1e-4"} and summary["best"] == "qwen.lr2e-4"
    text = to_markdown(frame, summary)
    assert "Best of 2: `qwen.lr2e-4`, CV 0.75000. **Optimistic**" in text and "**0.72000** out of fold" in text


def test_the_table_step_reads_the_variants_files_and_scores_the_nested_pick(tmp_path):
    variants, targets, folds = noise_sweep(3, n_variants=2, n_rows=60, n_folds=3)
    labels = tmp_path / "labels.json"
    SPEC.save(labels)
    ids = [f"r{i}" for i in range(60)]
    pl.DataFrame({"id": ids, **{c: targets[:, j] for j, c in enumerate(SPEC.probability_columns)}}).write_parquet(
        tmp_path / "targets.parquet")
    spec = table_spec()
    paths = []
    for index, (variant, probs) in enumerate(zip(spec["variants"], variants)):
        # written in another row order than the first variant's: the step aligns on id
        frame = pl.DataFrame({"id": ids, "fold": folds, **{c: probs[:, j] for j, c in enumerate(SPEC.probability_columns)}})
        path = tmp_path / f"{variant['name']}.parquet"
        (frame.reverse() if index else frame).write_parquet(path)
        write_json(metrics.fold_scores(SPEC, probs, targets, folds, "map@3"), tmp_path / f"{variant['name']}.json")
        paths.append(path)
    seed_files = []
    for model in (m for v in spec["variants"] for m in v["seeds"].values()):
        write_json({"score": 0.5}, tmp_path / f"{model}.json")
        seed_files.append(str(tmp_path / f"{model}.json"))
    table_main(["--spec", json.dumps(spec), "--scores", *[str(p.with_suffix(".json")) for p in paths],
                "--seed-scores", *seed_files, "--oof", *map(str, paths), "--targets", str(tmp_path / "targets.parquet"),
                "--labels", str(labels), "--metric", "map@3", "--out-csv", str(tmp_path / "t.csv"),
                "--out-md", str(tmp_path / "t.md"), "--out-json", str(tmp_path / "t.json")])
    summary = json.loads((tmp_path / "t.json").read_text())
    assert summary["nested"]["score"] == nested_selection(SPEC, variants, targets, folds, "map@3")["score"]
    assert pl.read_csv(tmp_path / "t.csv")["cv"].to_list() == pytest.approx(
        [metrics.task_scores(SPEC, v, targets, "map@3")["score"] for v in variants], abs=1e-6)


# ---- the leaderboard: a row per variant with its swept keys; LB on models and ensembles ----

def test_the_leaderboard_carries_swept_keys_seed_spread_lb_and_flags_the_pick(tmp_path):
    rng = np.random.default_rng(0)
    targets, folds = np.eye(4)[rng.integers(0, 4, 60)], np.arange(60) % 3
    model_files, ensemble_files = [], []
    for name in ("qwen.lr1e-4.seed1", "qwen.lr1e-4.seed2", "qwen.lr2e-4.seed1", "qwen.lr2e-4.seed2"):
        write_json({**metrics.fold_scores(SPEC, rng.random((60, 4)), targets, folds, "map@3"), "model": name},
                   tmp_path / f"{name}.json")
        model_files.append(tmp_path / f"{name}.json")
    for name, score in (("qwen.lr1e-4", 0.70), ("qwen.lr2e-4", 0.75)):
        write_json({"ensemble": name, "metric": "map@3", "score": score, "members": []},
                   tmp_path / name / "score.json")
        ensemble_files.append(tmp_path / name / "score.json")
    seeds = {f"{v['name']}.seed{s}": {"score": 0.7} for v in table_spec()["variants"] for s in (1, 2)}
    _, summary = build_table(table_spec("in_sample"), [{"score": 0.70}, {"score": 0.75}], seeds, {}, "map@3")
    manifest = {"hashed": {"submission": "sub", "config": {"submission": {"source": "qwen.lr2e-4"}},
                           "oof_scores": {"x": {"metric": "map@3", "score": 0.75}}}}
    write_json(manifest, tmp_path / "sub" / "manifest.json")
    board = lb.build_leaderboard(model_files, ensemble_files, [tmp_path / "sub" / "manifest.json"],
                                 {"qwen.lr2e-4": {"public": 0.74, "private": None}}, sweeps=[summary])
    pick = board.filter(pl.col("name") == "qwen.lr2e-4").row(0, named=True)
    assert (pick["kind"], pick["sweep"], pick["lr"], pick["seeds"], pick["selected_of"], pick["cv_optimistic"]) == (
        "ensemble", "qwen", "2e-4", "1 2", 2, True)
    assert pick["lb_public"] == 0.74 and "best of 2 variants of sweep qwen" in pick["cv_optimistic_reason"]
    seed_row = board.filter((pl.col("kind") == "model") & (pl.col("name") == "qwen.lr1e-4.seed2")).row(0, named=True)
    assert (seed_row["sweep"], seed_row["lr"], seed_row["seeds"], seed_row["cv_optimistic"]) == ("qwen", "1e-4", "2", None)
    other = board.filter(pl.col("name") == "qwen.lr1e-4").row(0, named=True)
    assert other["cv_optimistic"] is None and other["selected_of"] is None
    submission = board.filter(pl.col("kind") == "submission").row(0, named=True)
    assert submission["cv_optimistic"] is True and "qwen.lr2e-4" in submission["cv_optimistic_reason"]
    assert "submission" not in set(board.filter(pl.col("name") == "qwen.lr2e-4")["kind"])  # its LB is on its row


# ---- cost before launch ----

def test_the_plan_lists_each_sweep_s_variants_new_jobs_and_gpu_jobs_per_resource_class():
    expansion = expand_sweeps({"models": {"qwen": {**QWEN, "grid": {"lr": [1.0e-4, 2.0e-4]}, "seeds": [1, 2]}},
                               "ensembles": {"sub": {"grid": {"members": [["qwen.lr1e-4", "x"], ["x", "y"]]}}}})
    gpu = {"gpu": 1, "gpu_model": "h100", "mem_mb": 64000, "runtime": 720}
    jobs = [("train_adapter", {"model": "qwen.lr1e-4.seed1", "split": f"fold{k}"}, gpu) for k in range(5)]
    jobs += [("predict_fold", {"model": "qwen.lr1e-4.seed1", "split": f"fold{k}"}, {**gpu, "mem_mb": 32000})
             for k in range(5)]
    jobs += [("oof", {"model": "qwen.lr1e-4.seed1"}, {}), ("ensemble", {"ensemble": "qwen.lr1e-4"}, {}),
             ("ensemble", {"ensemble": "sub.qwen.lr1e-4-x"}, {}), ("sweep_table", {"sweep": "sub"}, {}),
             ("train_adapter", {"model": "unrelated", "split": "fold0"}, gpu)]
    assert plan_lines(expansion.sweeps, jobs) == [
        "sweep models.qwen: 2 variant(s) x 2 seeds (select: in_sample): qwen.lr1e-4, qwen.lr2e-4",
        "  new jobs: 12 (ensemble 1, oof 1, predict_fold 5, train_adapter 5)",
        "  GPU jobs: 5 x gpu=1 gpu_model=h100 mem_mb=32000 runtime=720",
        "  GPU jobs: 5 x gpu=1 gpu_model=h100 mem_mb=64000 runtime=720",
        "sweep ensembles.sub: 2 variant(s) (select: in_sample): sub.qwen.lr1e-4-x, sub.x-y",
        "  new jobs: 2 (ensemble 1, sweep_table 1)"]


def test_the_sweep_figure_plots_each_variant_s_cv_against_each_swept_key_and_rings_the_best():
    from workflow_scripts import plots

    expansion = expand_sweeps({"ensembles": {"sub": {"grid": {"members": {"pool": ["a", "b", "c"], "size": 2},
                                                             "member_top_k": [1, 3]}}}})
    spec = expansion.sweeps["sub"].to_json()
    cvs = [0.61, 0.64, 0.60, 0.66, 0.62, 0.63]
    _, summary = build_table(spec, [{"score": cv} for cv in cvs], {}, {}, "map@3")
    fig = plots.sweep_figure(summary)
    assert [ax.get_title() for ax in fig.axes] == ["member_top_k", "member a", "member b", "member c"]
    for ax in fig.axes:
        points = next(c for c in ax.get_children() if (c.get_gid() or "").startswith("cv:"))
        labels = [tick.get_text() for tick in ax.get_xticklabels()]
        assert points.get_offsets()[:, 1].tolist() == cvs
        column = ax.get_title().removeprefix("member ")
        # each dot sits over its variant's value: in/out for a member, the k for member_top_k
        expected = [("in" if row[column] else "out") if column in "abc" else str(row[column]) for row in summary["rows"]]
        assert [labels[int(round(x))] for x in points.get_offsets()[:, 0]] == expected
        ring = next(c for c in ax.get_children() if (c.get_gid() or "").startswith("best:"))
        assert ring.get_offsets()[0, 1] == max(cvs)


def test_a_seeds_only_sweep_plots_each_seed_s_cv_and_their_mean():
    from workflow_scripts import plots

    spec = expand_sweeps({"models": {"m": {**QWEN, "seeds": [0, 1]}}}).sweeps["m"].to_json()
    _, summary = build_table(spec, [{"score": 0.70}], {"m.seed0": {"score": 0.68}, "m.seed1": {"score": 0.69}}, {},
                             "map@3")
    fig = plots.sweep_figure(summary)
    [ax] = fig.axes
    points = next(c for c in ax.get_children() if c.get_gid() == "seeds:m")
    assert ax.get_title() == "seed" and [t.get_text() for t in ax.get_xticklabels()] == ["0", "1", "mean"]
    assert points.get_offsets().tolist() == [[0, 0.68], [1, 0.69], [2, 0.70]]


def test_the_cv_lb_figure_shows_ensembles_that_lb_scores_yaml_scores():
    """A write-up's table rows are ensembles with LB scores: the CV-vs-LB figure plots them, not 'no LB yet'."""
    from workflow_scripts import plots

    board = pl.DataFrame({"kind": ["ensemble", "ensemble", "submission"], "name": ["t.row01", "t.row02", "sub"],
                          "metric": ["map@3"] * 3, "cv": [0.70, 0.72, 0.71], "lb_public": [0.946, 0.947, None],
                          "lb_private": [None, None, None]})
    fig = plots.cv_lb_figure(board)
    public = next(c for c in fig.axes[0].get_children() if c.get_gid() == "lb_public").get_offsets()
    assert public.tolist() == [[0.70, 0.946], [0.72, 0.947]]
