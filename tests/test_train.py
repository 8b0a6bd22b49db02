"""Real training on a tiny Llama: QLoRA 4-bit on the CPU, resume after a kill, sorted inference."""
from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load_file

from workflow_scripts.data import prepare_frames
from workflow_scripts.errors import OoflineError
from workflow_scripts.predict import load_trained, predict_probabilities
from workflow_scripts.train import train_model, training_rows

TASK = {"type": "multiclass", "text_template": "{text}", "label_column": "category"}
QLORA = {"kind": "decoder_lora", "quantization": "4bit", "r": 4, "alpha": 8, "dropout": 0.1, "lr": 5e-3,
         "epochs": 2, "batch_size": 8, "grad_accum": 1, "max_length": 48, "seed": 3, "scheduler": "cosine",
         "warmup_ratio": 0.1}


@pytest.fixture(scope="module")
def prepared(movies_demo):
    train, test, _ = movies_demo
    clean, clean_test, spec, targets = prepare_frames(train.head(64), test.head(16), TASK)
    return clean, clean_test, spec, targets.select(spec.probability_columns).to_numpy()


def adapter_weights(directory):
    return load_file(str(directory / "adapter_model.safetensors"))


@pytest.mark.slow
def test_qlora_4bit_trains_and_resumes_identically(tmp_path, prepared, tiny_llama_dir):
    train, _, spec, targets = prepared
    rows = set(train["id"].to_list())
    uninterrupted = tmp_path / "uninterrupted"
    summary = train_model(train, targets, spec, rows, QLORA, str(tiny_llama_dir), uninterrupted, tmp_path / "work_a")
    assert summary["steps"] == 16 and np.isfinite(summary["final_loss"])
    # a run killed after step 5 (last checkpoint at step 4) resumes and ends with the same adapter
    interrupted = tmp_path / "interrupted"
    stopped = train_model(train, targets, spec, rows, QLORA, str(tiny_llama_dir), interrupted, tmp_path / "work_b",
                          checkpoint_every=4, stop_after_steps=5)
    assert stopped == {"stopped_at_step": 5} and not interrupted.exists()
    train_model(train, targets, spec, rows, QLORA, str(tiny_llama_dir), interrupted, tmp_path / "work_b",
                checkpoint_every=4)
    first, second = adapter_weights(uninterrupted), adapter_weights(interrupted)
    assert first.keys() == second.keys() and any("lora" in key for key in first)
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])
    assert not (tmp_path / "work_b").exists()  # work in progress is cleaned once the output exists


@pytest.mark.slow
def test_sorted_batches_give_the_same_predictions_in_input_order(tmp_path, prepared, tiny_llama_dir):
    train, test, spec, targets = prepared
    config = {**QLORA, "kind": "encoder_full", "quantization": "none", "epochs": 1}
    train_model(train, targets, spec, set(train["id"].to_list()), config, str(tiny_llama_dir), tmp_path / "m", tmp_path / "w")
    model, tokenizer = load_trained(str(tmp_path / "m"), str(tiny_llama_dir), config, len(spec.probability_columns))
    texts = test["text"].to_list()
    sorted_probs = predict_probabilities(model, tokenizer, texts, spec, 48, 4, sort_by_length=True)
    plain_probs = predict_probabilities(model, tokenizer, texts, spec, 48, 4, sort_by_length=False)
    padded_probs = predict_probabilities(model, tokenizer, texts, spec, 48, 4, sort_by_length=False, pad_to=48)
    np.testing.assert_allclose(sorted_probs, plain_probs, atol=1e-5)
    np.testing.assert_allclose(sorted_probs, padded_probs, atol=1e-5)
    np.testing.assert_allclose(sorted_probs.sum(axis=1), 1, atol=1e-5)


def test_unknown_fold_and_stage_data_are_errors(prepared, tmp_path, tiny_llama_dir):
    import polars as pl

    with pytest.raises(OoflineError, match="fold '7' is not in the folds file"):
        training_rows(pl.DataFrame({"id": ["a", "b"], "fold": [0, 1]}), "7")
    train, _, spec, targets = prepared
    config = {**QLORA, "stages": [{"epochs": 1, "data": ["official", "generated"]}]}
    with pytest.raises(OoflineError, match=r"stage data \['generated'\] are not provided"):
        train_model(train, targets, spec, set(train["id"].to_list()), config, str(tiny_llama_dir), tmp_path / "o", tmp_path / "w")
