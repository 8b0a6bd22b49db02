"""Config validation: one line per problem, naming the key; config strings never reach a shell bare."""
from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from workflow_scripts.config_check import check_config
from workflow_scripts.errors import OoflineError

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture()
def demo_config():
    return yaml.safe_load((REPO / "config.yaml").read_text())


def test_demo_config_is_valid_and_gets_defaults(demo_config):
    config = check_config(demo_config, REPO)
    assert config["output_dir"] == "results"
    assert config["models"]["minilm"]["grad_accum"] == 1  # from the built-in defaults
    assert config["models"]["minilm"]["max_length"] == 64  # from model_defaults
    assert config["models"]["tiny_llama_qlora"]["quantization"] == "4bit"


def test_model_defaults_reach_only_the_kinds_that_have_the_key(demo_config):
    """model_defaults.r is LoRA's: the TF-IDF, embedding-head and full fine-tune entries stay without it,
    while the same key set on the TF-IDF model itself is one line naming the model and the key."""
    demo_config["model_defaults"].update(r=4, target_modules=["q_proj"], C=2.0, quantization="8bit")
    models = check_config(demo_config, REPO)["models"]
    assert models["tiny_llama_qlora"]["target_modules"] == ["q_proj"]
    assert (models["tiny_llama_qlora"]["r"], models["tiny_llama_qlora"]["quantization"]) == (8, "4bit")  # its own win
    assert {"r", "target_modules", "quantization"} & (
        set(models["tfidf"]) | set(models["minilm_embed"]) | set(models["minilm"])) == set()
    assert models["tfidf"]["C"] == models["minilm_embed"]["C"] == 2.0 and "C" not in models["minilm"]
    assert "max_length" not in models["tfidf"]  # model_defaults.max_length: the models that tokenize
    demo_config["models"]["tfidf"]["r"] = 4
    with pytest.raises(OoflineError) as error:
        check_config(demo_config, REPO)
    assert str(error.value) == ("config: models.tfidf.r: tfidf_linear models have no r "
                                "(a key of encoder_lora, decoder_lora)")


@pytest.mark.parametrize("edit, expected", [
    (lambda c: c["models"]["minilm"].update(lr="fast"), "config: models.minilm.lr: 'fast' is not of type 'number'"),
    (lambda c: c["retrieval"]["movie_plots"]["embedder_inference"].update(precision="half"),
     "config: retrieval.movie_plots.embedder_inference.precision: 'half' is not one of"),
    (lambda c: c["retrieval"]["movie_plots"]["reranker_inference"].update(rerank_precision="bf32"),
     "config: retrieval.movie_plots.reranker_inference.rerank_precision: 'bf32' is not one of"),
    (lambda c: c["retrieval"]["movie_plots"]["iterations"][1]["reranker"].update(precision="fp8"),
     "config: retrieval.movie_plots.iterations[1].reranker.precision: 'fp8' is not one of"),
    (lambda c: c["models"]["minilm"].update(learning_rate=1e-4), "config: models.minilm: unknown key 'learning_rate' (allowed: "),
    (lambda c: c["models"]["minilm"].update(kind="gpt"), "config: models.minilm.kind: 'gpt' is not one of"),
    (lambda c: c["folds"].update(n_folds=1), "config: folds.n_folds: 1 is less than the minimum of 2"),
    (lambda c: c["task"].update(metric="f2"), "config: task.metric: 'f2' has characters"),
    (lambda c: c["task"].pop("label_column"), "config: task.label_column: required for task.type multiclass"),
    (lambda c: c["models"]["minilm"].update(source="/no/such/model"), "models.minilm.source: '/no/such/model' is not a model folder"),
    (lambda c: c["models"]["minilm"].update(quantization="4bit"),
     "config: models.minilm.quantization: encoder_full models have no quantization (a key of encoder_lora, decoder_lora)"),
    (lambda c: c["models"].update({"bad; rm -rf ~": c["models"]["minilm"]}), "config: models: 'bad; rm -rf ~'"),
    (lambda c: c["models"]["minilm"].update(resources={"gpu": 1, "gres": "gpu:h100:1"}),
     "config: models.minilm.resources.gres: set either gres or gpu/gpu_model, not both"),
    (lambda c: c["models"]["minilm"].update(resources={"gres": "'gpu:1'"}), "config: models.minilm.resources.gres:"),
    (lambda c: c["models"]["minilm"].update(select_epoch="first"),
     "config: models.minilm.select_epoch: 'first' is not one of ['last', 'best']"),
    (lambda c: c["models"]["tfidf"].update(select_epoch="best"),
     "config: models.tfidf.select_epoch: tfidf_linear models have no select_epoch (a key of encoder_full, encoder_lora, "
     "decoder_lora)"),
    (lambda c: c["models"]["tfidf"].update(source="packaged:minilm"),
     "config: models.tfidf.source: tfidf_linear models have no source (a key of embedding_head, encoder_full, "),
    (lambda c: c["models"]["minilm_embed"].update(lr=1e-3), "config: models.minilm_embed.lr: embedding_head models have no lr"),
    (lambda c: c["models"]["minilm"].update(select_epoch="best", train_full=True),
     "config: models.minilm.select_epoch: best cannot pick an epoch for the full-data model"),
    (lambda c: c["submissions"].update(movie_plots=c["submissions"]["blend_top3"]),
     "config: submissions.movie_plots: retrieval.movie_plots also writes submissions/movie_plots/"),
])
def test_bad_config_names_the_key(demo_config, edit, expected):
    config = copy.deepcopy(demo_config)
    edit(config)
    with pytest.raises(OoflineError) as error:
        check_config(config, REPO)
    assert expected in str(error.value)


def test_a_models_slurm_resources_reach_its_train_merge_and_predict_jobs(demo_config, tmp_path):
    demo_config["models"] = {"qlora": {**demo_config["models"]["tiny_llama_qlora"],
                                       "resources": {"gres": "gpu:h100:2", "slurm_partition": "gpu", "cpus_per_gpu": 4}}}
    for section in ("ensembles", "submissions", "register", "retrieval", "thresholds", "kaggle"):
        demo_config.pop(section, None)
    assert check_config(demo_config, REPO)["models"]["qlora"]["resources"]["gres"] == "gpu:h100:2"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(demo_config))
    dry_run = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-n", "--cores", "1",
                              "--printshellcmds", "--configfile", "config.yaml"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert dry_run.returncode == 0, dry_run.stderr[-2000:]
    # two GPUs a job: training runs one DDP process per GPU under torchrun; inference and merging run one
    train_commands = [line for line in dry_run.stdout.splitlines() if "-m workflow_scripts.train " in line]
    assert train_commands and all("gpu_devices --gpus 0 --torchrun -- " in line for line in train_commands)
    assert "--torchrun" not in "".join(line for line in dry_run.stdout.splitlines() if ".predict " in line)
    resources_by_rule: dict[str, set[str]] = {}
    rule = None
    for line in dry_run.stdout.splitlines():
        if line.startswith(("rule ", "localrule ")):
            rule = line.split()[1].rstrip(":")
        elif line.strip().startswith("resources:") and rule:
            resources_by_rule.setdefault(rule, set()).add(line.strip())
    for gpu_rule in ("train_adapter", "merge_adapter", "predict_fold"):
        for resources in resources_by_rule[gpu_rule]:
            assert "gres=gpu:h100:2" in resources and "slurm_partition=gpu" in resources and "cpus_per_gpu=4" in resources
    for cpu_rule in ("folds", "oof"):
        assert all("gres" not in r and "slurm_partition" not in r for r in resources_by_rule[cpu_rule])


def test_every_problem_is_reported_at_once(demo_config):
    demo_config["models"]["minilm"]["lr"] = "fast"
    demo_config["folds"]["n_folds"] = 1
    with pytest.raises(OoflineError) as error:
        check_config(demo_config, REPO)
    assert len(str(error.value).splitlines()) == 3  # header + one line each


def test_shell_metacharacters_in_a_source_stay_literal(tmp_path, demo_config):
    """A source like `x; touch PWNED` is an error naming the key, and nothing runs."""
    marker = tmp_path / "PWNED"
    demo_config["models"]["minilm"]["source"] = f"x; touch {marker}"
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(demo_config))
    result = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile", str(config_path), "--directory", str(tmp_path),
                             "-s", str(REPO / "Snakefile")], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode != 0
    assert "models.minilm.source" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert not marker.exists()


@pytest.mark.parametrize("method", ["exact", "grid", "class_balance", "hybrid"])
def test_threshold_methods_include_grid_the_former_name_of_exact(method):
    config = yaml.safe_load((REPO / "demo" / "debates.yaml").read_text())
    source = next(iter(config["thresholds"]))
    config["thresholds"][source]["method"] = method
    assert check_config(config, REPO)["thresholds"][source]["method"] == method


def test_an_unknown_threshold_method_names_the_key():
    config = yaml.safe_load((REPO / "demo" / "debates.yaml").read_text())
    source = next(iter(config["thresholds"]))
    config["thresholds"][source]["method"] = "grid_search"
    with pytest.raises(OoflineError, match=rf"config: thresholds.{source}.method: 'grid_search' is not one of \['exact', 'grid', "):
        check_config(config, REPO)


def test_one_default_metric_reaches_every_scoring_rule(tmp_path):
    """Without task.metric, OOF scores, ensembles and thresholds all use the schema's one default."""
    import re

    debates = yaml.safe_load((REPO / "demo" / "debates.yaml").read_text())
    del debates["task"]["metric"]
    assert check_config(debates, REPO)["task"]["metric"] == "accuracy"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(debates))
    dry_run = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-n", "-p", "--cores", "1",
                              "--configfile", "config.yaml"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert dry_run.returncode == 0, dry_run.stderr[-2000:]
    commands = [line for line in dry_run.stdout.splitlines() if "--metric" in line]
    steps = {step for line in commands for step in re.findall(r"workflow_scripts\.(oof|ensemble|thresholds) ", line)}
    assert steps == {"oof", "ensemble", "thresholds"}
    assert {re.search(r"--metric '?([\w@]+)", line).group(1) for line in commands} == {"accuracy"}


# Objects whose keys the user names (models, data sets, columns): every value is a closed schema, but the keys
# themselves cannot be listed. Any other object in the schema must be closed (additionalProperties: false).
USER_NAMED_MAPS = {
    "definitions/model/properties/extra_data", "properties/models", "properties/ensembles",
    "properties/ensembles/additionalProperties/properties/members/oneOf/1", "properties/thresholds",
    "properties/thresholds/additionalProperties/properties/target_rates",
    "properties/thresholds/additionalProperties/properties/probe_f1", "properties/submissions", "properties/register",
    "properties/kaggle",
    "properties/retrieval", "properties/retrieval/additionalProperties/properties/models", "properties/language_models",
    "properties/generators", "properties/soft_labels", "properties/label_correction", "properties/answers/properties/prompts",
    "properties/answers/properties/prompts/additionalProperties/oneOf/2/properties/templates",
    "properties/answers/properties/prompts/additionalProperties/oneOf/2/properties/keywords",
    "properties/votes",
    # sweeps: a grid maps keys to values (or labels to values), variants map labels to entry keys, which are
    # checked on each expanded model or ensemble
    "definitions/model_sweep/properties/grid", "definitions/model_sweep/properties/grid/additionalProperties/oneOf/1",
    "definitions/model_sweep/properties/variants", "definitions/model_sweep/properties/variants/additionalProperties",
    "definitions/ensemble_sweep/properties/grid/properties/members/oneOf/0/items/oneOf/1",
    "definitions/ensemble_sweep/properties/grid/properties/members/oneOf/2",
    "definitions/ensemble_sweep/properties/grid/properties/weights", "definitions/ensemble_sweep/properties/variants",
    "definitions/ensemble_sweep/properties/variants/additionalProperties",
}


def object_schemas(node, path=""):
    """(path, subschema) for every subschema that describes an object."""
    if isinstance(node, dict):
        types = node.get("type")
        if types == "object" or (isinstance(types, list) and "object" in types) or "properties" in node:
            yield path, node
        for key, child in node.items():
            # `if` holds a condition on an object, not an object of its own
            if key not in ("default", "enum", "required", "description", "if"):
                yield from object_schemas(child, f"{path}/{key}".lstrip("/"))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            yield from object_schemas(child, f"{path}/{index}")


def test_no_object_in_the_schema_is_open_by_accident():
    from workflow_scripts.config_check import load_schema

    found = dict(object_schemas(load_schema()))
    assert len(found) > 30  # the walk reaches nested blocks (retrieval iterations, their mine: blocks, ...)
    for path, schema in found.items():
        if path in USER_NAMED_MAPS:
            assert isinstance(schema.get("additionalProperties"), dict), f"{path}: a named map needs a value schema"
        else:
            assert schema.get("additionalProperties") is False, f"{path} is open: unknown keys would pass silently"
    assert USER_NAMED_MAPS <= set(found), sorted(USER_NAMED_MAPS - set(found))


def retrieval_config():
    sys.path.insert(0, str(REPO / "tests"))
    from test_retrieval_workflow import CONFIG

    return copy.deepcopy(CONFIG)


@pytest.mark.parametrize("edit, expected", [
    (lambda c: c["retrieval"]["plots"]["iterations"][0]["mine"].update(negative_numbr=15),
     "config: retrieval.plots.iterations[0].mine: unknown key 'negative_numbr'"),
    (lambda c: c["retrieval"]["plots"]["iterations"][0]["reranker"]["mine"].update(sed=1),
     "config: retrieval.plots.iterations[0].reranker.mine: unknown key 'sed'"),
    (lambda c: c["retrieval"]["plots"]["iterations"][1]["embedder"].update(learning_rat=1e-4),
     "config: retrieval.plots.iterations[1].embedder: unknown key 'learning_rat'"),
    (lambda c: c["retrieval"]["plots"]["embedder_inference"].update(pooling="mean"),
     "config: retrieval.plots.embedder_inference: unknown key 'pooling'"),
    (lambda c: c["retrieval"]["plots"].update(valid_folds=0), "config: retrieval.plots: unknown key 'valid_folds'"),
    (lambda c: c.update(label_correction={"m": {"top_percnt": 5}}), "config: label_correction.m: unknown key 'top_percnt'"),
    (lambda c: c.update(soft_labels={"m": {"dataset": ["a-seed0"]}}), "config: soft_labels.m: unknown key 'dataset'"),
    (lambda c: c.update(votes={"v": {"answers": ["lm/p"], "fallbak": "majority"}}), "config: votes.v: unknown key 'fallbak'"),
])
def test_a_typo_in_a_nested_block_is_one_line_naming_its_full_path(edit, expected):
    config = retrieval_config()
    edit(config)
    with pytest.raises(OoflineError) as error:
        check_config(config, REPO)
    assert len(str(error.value).splitlines()) == 1 and str(error.value).startswith(expected)


def test_a_retrieval_final_fit_mines_every_query_and_evaluates_none(tmp_path):
    """`valid_fold: null` resolves (it crashed the dry run with int(None)); mining keeps every query."""
    config = retrieval_config()
    config["retrieval"]["plots"]["valid_fold"] = None
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    dry_run = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-n", "-p", "--cores", "1",
                              "--configfile", "config.yaml"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert dry_run.returncode == 0, dry_run.stdout[-2000:] + dry_run.stderr[-2000:]
    commands = dry_run.stdout.splitlines()
    mining = [line for line in commands if "workflow_scripts.retrieval.mining" in line]
    evaluation = [line for line in commands if "workflow_scripts.retrieval.eval" in line]
    assert len(mining) == 3 and not any("--valid-fold" in line for line in mining)
    assert len(evaluation) == 2 and all("--final-fit" in line and "--valid-folds" not in line for line in evaluation)


@pytest.mark.parametrize("edit, expected", [
    (lambda c: c["ensembles"].update(outer={"members": ["searched", "minilm"], "method": "search"}),
     "config: ensembles.outer.members: 'searched' holds the search ensemble 'searched'"),
    (lambda c: c["ensembles"].update(mid={"members": ["searched", "minilm"]}, outer={"members": ["mid", "blend"], "method": "search"}),
     "config: ensembles.outer.members: 'mid' holds the search ensemble 'searched'"),
])
def test_a_search_over_a_searched_ensemble_is_refused(demo_config, edit, expected):
    edit(demo_config)
    with pytest.raises(OoflineError, match=re.escape(expected)):
        check_config(demo_config, REPO)


def test_thresholds_on_a_search_or_stack_are_nested_and_on_a_mean_over_one_refused():
    debates = yaml.safe_load((REPO / "demo" / "debates.yaml").read_text())
    debates["thresholds"].update(searched={"method": "exact"}, stacked={"method": "hybrid"})
    check_config(debates, REPO)  # refitted without each outer fold for the nested score
    debates["ensembles"]["outer"] = {"members": ["searched", "minilm"], "method": "mean"}
    check_config(debates, REPO)  # a mean over it fits nothing: the nested OOF it reads stays out of fold
    debates["thresholds"]["outer"] = {"method": "grid"}
    with pytest.raises(OoflineError, match=re.escape("config: thresholds.outer: 'outer' holds the search ensemble "
                                                     "'searched': thresholds tuned on it")):
        check_config(debates, REPO)


def test_offline_a_hub_model_outside_the_cache_is_one_line_at_validation(demo_config, tmp_path, monkeypatch):
    """Kaggle inference is offline: an uncached `org/name` is reported once, before any job, not as training jobs
    retrying HTTP and being resubmitted with more memory."""
    for section in ("ensembles", "submissions", "register", "retrieval", "kaggle"):
        demo_config.pop(section, None)
    demo_config["models"] = {"qwen": {"source": "Qwen/Qwen3-0.6B", "kind": "decoder_lora"}}
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    check_config(demo_config, REPO)  # online, the step downloads it
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OoflineError) as error:
        check_config(demo_config, REPO)
    assert str(error.value).startswith("config: models.qwen.source: 'Qwen/Qwen3-0.6B' is not in the local hub cache")
    assert len(str(error.value).splitlines()) == 1
    snapshot = tmp_path / "hub" / "models--Qwen--Qwen3-0.6B" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "hub" / "models--Qwen--Qwen3-0.6B" / "refs").mkdir()
    (tmp_path / "hub" / "models--Qwen--Qwen3-0.6B" / "refs" / "main").write_text("abc123")
    check_config(demo_config, REPO)  # cached: the offline run can use it
