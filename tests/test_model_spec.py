"""The typed model spec: one field per schema key, the defaults applied once, bad entries named."""
import pytest

from workflow_scripts.config_check import load_schema
from workflow_scripts.errors import OoflineError
from workflow_scripts.model_spec import ModelSpec, StageSpec, config_defaults


def test_every_schema_model_key_is_a_field_of_some_kind_and_every_field_a_schema_key():
    import dataclasses

    from workflow_scripts.model_spec import SPEC_BY_KIND

    schema = load_schema()["definitions"]["model"]["properties"]
    field_names = {f.name for spec_class in SPEC_BY_KIND.values() for f in dataclasses.fields(spec_class)}
    assert set(schema) - field_names == set(), "schema keys no kind has"
    assert field_names - set(schema) == set(), "spec fields the schema does not allow"
    assert set(schema["kind"]["enum"]) == set(SPEC_BY_KIND)


def test_each_kind_has_its_keys_and_no_others():
    from workflow_scripts.model_spec import kind_keys

    assert {"r", "alpha", "attn_implementation", "gradient_checkpointing", "lr", "max_length"} & set(
        kind_keys("tfidf_linear")) == set()
    assert {"word_ngrams", "C", "seed", "folds", "resources"} <= set(kind_keys("tfidf_linear"))
    assert {"r", "quantization", "merge", "lr", "epochs"} & set(kind_keys("embedding_head")) == set()
    assert {"source", "pooling", "attn_implementation", "max_length", "C"} <= set(kind_keys("embedding_head"))
    assert {"r", "quantization", "merge", "C", "pooling"} & set(kind_keys("encoder_full")) == set()
    assert set(kind_keys("encoder_full")) < set(kind_keys("encoder_lora")) == set(kind_keys("decoder_lora"))
    assert set(kind_keys("encoder_lora")) - set(kind_keys("encoder_full")) == {
        "quantization", "r", "alpha", "dropout", "target_modules", "merge"}


def test_a_step_gets_the_keys_it_reads_and_run_settings_go_apart():
    from workflow_scripts.model_spec import EMBED, FIT, MERGE, PREDICT, TRAIN

    lora = ModelSpec.from_config({"source": "tiny:llama", "kind": "decoder_lora", "lr": 1e-3, "log_every": 5,
                                  "resources": {"gpu": 1}, "merge": True, "train_full": True, "folds": [0]})
    train = lora.step_config(TRAIN)
    assert {"lr", "r", "dropout", "quantization", "max_length", "seed", "kind"} <= set(train)
    # how the job runs, which jobs exist and where: none of it is what training computes
    assert {"log_every", "checkpoint_every", "predict_batch_size", "gradient_checkpointing", "resources", "merge",
            "train_full", "folds", "source", "test_predictions"} & set(train) == set()
    assert set(lora.step_config(PREDICT)) == {"kind", "trust_remote_code", "precision", "attn_implementation",
                                              "max_length", "quantization"}
    assert set(lora.step_config(MERGE)) == {"kind", "trust_remote_code", "precision", "quantization"}
    assert lora.run_settings() == {"log_every": 5, "checkpoint_every": 50, "gradient_checkpointing": True,
                                   "predict_batch_size": 32}
    embed = ModelSpec.from_config({"source": "x", "kind": "embedding_head", "C": 2.0, "embed_batch_size": 8})
    assert "C" not in embed.step_config(EMBED) and embed.step_config(FIT)["C"] == 2.0
    assert embed.run_settings() == {"embed_batch_size": 8}
    # a submission's manifest: what predictions depend on; not the export-only merge and train_full
    assert {"merge", "train_full", "resources", "log_every"} & set(lora.prediction_config()) == set()
    assert lora.prediction_config()["folds"] == [0]


def test_defaults_come_from_the_spec_and_round_trip_through_json():
    import json

    spec = ModelSpec.from_config({"source": "tiny:llama", "kind": "decoder_lora", "lr": 1e-3,
                                  "target_modules": ["q_proj", "v_proj"],
                                  "stages": [{"epochs": 1, "data": ["official", "gen"]}, {"epochs": 2}]})
    assert (spec.precision, spec.gradient_checkpointing, spec.attn_implementation) == ("auto", True, None)
    assert spec.prediction_batch_size == 32 and spec.scheduler == "linear"
    assert spec.training_stages == (StageSpec(1, ("official", "gen")), StageSpec(2, ("official",)))
    assert spec.lora_settings()["target_modules"] == ["q_proj", "v_proj"]
    assert ModelSpec.from_json(json.dumps(spec.to_config())) == spec
    assert config_defaults("decoder_lora")["precision"] == "auto" and "lr" not in config_defaults("decoder_lora")
    assert config_defaults("tfidf_linear") == {"seed": 42, "resources": {"gpu": 0, "mem_mb": 4000, "runtime": 60},
                                               "word_ngrams": [1, 2], "min_df": 1, "sublinear_tf": True, "C": 4.0,
                                               "max_iter": 1000}
    with pytest.raises(AttributeError):
        spec.lr = 1.0  # frozen


def test_unknown_or_missing_keys_are_one_line_errors():
    with pytest.raises(OoflineError, match="unknown key 'learning_rate'"):
        ModelSpec.from_config({"source": "x", "kind": "encoder_full", "learning_rate": 1.0})
    with pytest.raises(OoflineError, match="model config: encoder_full models have no r "):
        ModelSpec.from_config({"source": "x", "kind": "encoder_full", "r": 4})
    with pytest.raises(OoflineError, match="key 'kind' is missing"):
        ModelSpec.from_config({"source": "x"})
    with pytest.raises(OoflineError, match="key 'lr' is required"):
        ModelSpec.from_config({"source": "x", "kind": "encoder_full"}).require_lr()


@pytest.mark.parametrize("resources, merge, expected", [
    ({"gpu": 0}, None, False),              # the CPU default: prediction reads base + adapter, no export copy
    ({"gpu": 1}, None, True),               # on a GPU the merged model is what users ship
    ({"gres": "gpu:h100:2"}, None, True),   # a Slurm gres asks for GPUs too
    ({"gpu": 0}, True, True),               # asked for on the CPU
    ({"gpu": 2}, False, False),             # declined on a GPU
])
def test_merged_folders_are_built_on_a_gpu_or_when_asked(resources, merge, expected):
    entry = {"source": "tiny:llama", "kind": "decoder_lora", "resources": resources}
    if merge is not None:
        entry["merge"] = merge
    assert ModelSpec.from_config(entry).builds_merged is expected


def test_the_cpu_demo_plans_no_merge_jobs_and_a_gpu_model_plans_one_per_fold(tmp_path):
    """A dry run of the real rules: the demo's CPU LoRA model gets no merge job; the same model with
    `resources.gpu: 1` gets one per fold."""
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    repo = Path(__file__).resolve().parents[1]
    config = yaml.safe_load((repo / "config.yaml").read_text())
    config = {key: config[key] for key in ("demo", "data", "task", "folds", "model_defaults")} | {
        "models": {"qlora": config["models"]["tiny_llama_qlora"]}}
    plans = {}
    for gpu in (0, 1):
        config["models"]["qlora"]["resources"] = {"gpu": gpu}
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
        result = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(repo / "Snakefile"), "-n", "--cores", "1",
                                 "--configfile", "config.yaml"], cwd=tmp_path, capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        plans[gpu] = result.stdout.count("rule merge_adapter:")
    assert plans == {0: 0, 1: config["folds"]["n_folds"]}
