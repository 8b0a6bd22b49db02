"""The typed model spec: one field per schema key, the defaults applied once, bad entries named."""
import pytest

from workflow_scripts.config_check import load_schema
from workflow_scripts.errors import OoflineError
from workflow_scripts.model_spec import ModelSpec, StageSpec, config_defaults


def test_every_schema_model_key_has_a_field_and_every_field_a_schema_key():
    import dataclasses

    schema_keys = set(load_schema()["definitions"]["model"]["properties"])
    field_names = {f.name for f in dataclasses.fields(ModelSpec)}
    assert schema_keys - field_names == set(), "schema keys without a ModelSpec field"
    assert field_names - schema_keys == set(), "ModelSpec fields the schema does not allow"


def test_defaults_come_from_the_spec_and_round_trip_through_json():
    import json

    spec = ModelSpec.from_config({"source": "tiny:llama", "kind": "decoder_lora", "lr": 1e-3,
                                  "target_modules": ["q_proj", "v_proj"],
                                  "stages": [{"epochs": 1, "data": ["official", "gen"]}, {"epochs": 2}]})
    assert (spec.precision, spec.gradient_checkpointing, spec.attn_implementation) == ("auto", True, "sdpa")
    assert spec.prediction_batch_size == 32 and spec.scheduler == "linear"
    assert spec.training_stages == (StageSpec(1, ("official", "gen")), StageSpec(2, ("official",)))
    assert spec.lora_settings()["target_modules"] == ["q_proj", "v_proj"]
    assert ModelSpec.from_json(json.dumps(spec.to_config())) == spec
    assert config_defaults()["precision"] == "auto" and "lr" not in config_defaults()
    with pytest.raises(AttributeError):
        spec.lr = 1.0  # frozen


def test_unknown_or_missing_keys_are_one_line_errors():
    with pytest.raises(OoflineError, match="unknown key 'learning_rate'"):
        ModelSpec.from_config({"source": "x", "kind": "encoder_full", "learning_rate": 1.0})
    with pytest.raises(OoflineError, match="key 'kind' is missing"):
        ModelSpec.from_config({"source": "x"})
    with pytest.raises(OoflineError, match="key 'lr' is required"):
        ModelSpec.from_config({"source": "x", "kind": "encoder_full"}).require_lr()
