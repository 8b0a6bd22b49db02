"""Real training on a tiny Llama: QLoRA 4-bit on the CPU, resume after a kill, sorted inference."""
from __future__ import annotations

import re

import numpy as np
import polars as pl
import pytest
import torch
from safetensors.numpy import load_file

from workflow_scripts.data import prepare_frames
from workflow_scripts.errors import OoflineError
from workflow_scripts.predict import load_trained, predict_probabilities
from workflow_scripts.train import chosen_epoch, held_out_fold, train_model, training_rows

TASK = {"type": "multiclass", "text_template": "{text}", "label_column": "category"}
QLORA = {"kind": "decoder_lora", "quantization": "4bit", "r": 4, "alpha": 8, "dropout": 0.1, "lr": 5e-3,
         "epochs": 2, "batch_size": 8, "grad_accum": 1, "max_length": 48, "seed": 3, "scheduler": "cosine",
         "warmup_ratio": 0.1}
# the same schedule as a full fine-tune, which has no LoRA keys
FULL = {**{k: v for k, v in QLORA.items() if k not in ("quantization", "r", "alpha", "dropout")}, "kind": "encoder_full"}


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
    # a run killed after step 13 (last checkpoint at step 12) resumes and ends with the same adapter and
    # the same training.json (its final loss averages the last 10 steps, some from before the kill)
    interrupted = tmp_path / "interrupted"
    stopped = train_model(train, targets, spec, rows, QLORA, str(tiny_llama_dir), interrupted, tmp_path / "work_b",
                          checkpoint_every=4, stop_after_steps=13)
    assert stopped == {"stopped_at_step": 13} and not interrupted.exists()
    train_model(train, targets, spec, rows, QLORA, str(tiny_llama_dir), interrupted, tmp_path / "work_b",
                checkpoint_every=4)
    first, second = adapter_weights(uninterrupted), adapter_weights(interrupted)
    assert first.keys() == second.keys() and any("lora" in key for key in first)
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])
    assert (uninterrupted / "training.json").read_bytes() == (interrupted / "training.json").read_bytes()
    assert not (tmp_path / "work_b").exists()  # work in progress is cleaned once the output exists


@pytest.mark.slow
def test_a_retry_with_a_smaller_micro_batch_resumes_the_same_checkpoint(tmp_path, prepared, tiny_llama_dir, capsys):
    """Attempt 2 (after an OOM, a preemption or a scancel) halves the micro-batch; an optimizer step
    still takes the same rows, so it resumes attempt 1's checkpoint and ends where attempt 1 would have."""
    train, _, spec, targets = prepared
    rows = set(train["id"].to_list())
    config = {**QLORA, "dropout": 0.0}  # dropout masks depend on the micro-batch's shape
    reference = tmp_path / "reference"
    train_model(train, targets, spec, rows, config, str(tiny_llama_dir), reference, tmp_path / "work_a")
    retried = tmp_path / "retried"
    train_model(train, targets, spec, rows, config, str(tiny_llama_dir), retried, tmp_path / "work_b",
                checkpoint_every=4, stop_after_steps=9)
    capsys.readouterr()
    summary = train_model(train, targets, spec, rows, config, str(tiny_llama_dir), retried, tmp_path / "work_b",
                          attempt=2, out_of_memory_retries=1, checkpoint_every=4)
    assert "resuming from checkpoint at stage 0 epoch 1 batch 0 (step 8)" in capsys.readouterr().out
    assert (summary["steps"], summary["micro_batch"], summary["grad_accum"]) == (16, 4, 2)
    first, second = adapter_weights(reference), adapter_weights(retried)
    for key in first:
        np.testing.assert_allclose(first[key], second[key], rtol=1e-3, atol=1e-5)


@pytest.mark.slow
def test_sorted_batches_give_the_same_predictions_in_input_order(tmp_path, prepared, tiny_llama_dir):
    train, test, spec, targets = prepared
    config = {**FULL, "epochs": 1}
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


def logged_steps(output: str) -> list[tuple[int, int, float]]:
    """(stage, step, learning rate) of every progress line the trainer printed."""
    return [(int(stage), int(step), float(lr)) for stage, step, lr in
            re.findall(r"^stage (\d+)/\d+ epoch \d+/\d+ step (\d+)/\d+ loss \S+ lr (\S+)", output, re.MULTILINE)]


@pytest.mark.slow
def test_cosine_schedule_and_weight_decay_reach_the_optimizer(tmp_path, prepared, tiny_llama_dir, capsys):
    """Each step's learning rate follows transformers' cosine schedule, and AdamW's decoupled weight decay
    shrinks every weight by (1 - lr * weight_decay) per step: embedding rows of tokens the data never uses get
    no gradient, so that shrinking is all that happens to them."""
    from transformers import AutoTokenizer, get_cosine_schedule_with_warmup

    train, _, spec, targets = prepared
    train, targets = train.head(32), targets[:32]
    config = {**FULL, "epochs": 1, "batch_size": 4, "lr": 1e-2,
              "weight_decay": 2.0, "scheduler": "cosine", "warmup_ratio": 0.0, "log_every": 1}
    capsys.readouterr()
    summary = train_model(train, targets, spec, set(train["id"].to_list()), config, str(tiny_llama_dir),
                          tmp_path / "m", tmp_path / "w")
    steps = logged_steps(capsys.readouterr().out)
    assert summary["steps"] == len(steps) == 8

    reference = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=config["lr"])
    schedule = get_cosine_schedule_with_warmup(reference, num_warmup_steps=0, num_training_steps=8)
    expected_lrs = []
    for _ in range(8):
        expected_lrs.append(reference.param_groups[0]["lr"])
        reference.step()
        schedule.step()
    assert [lr for _, _, lr in steps] == pytest.approx(expected_lrs, rel=6e-3)  # the log prints 3 digits
    assert expected_lrs[4] == pytest.approx(0.5e-2) and expected_lrs[2] > 0.8e-2  # not linear (0.75e-2 there)

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_llama_dir))
    used = {token for ids in tokenizer(train["text"].to_list(), truncation=True, max_length=48)["input_ids"]
            for token in ids} | {tokenizer.pad_token_id}
    unused = sorted(set(range(len(tokenizer))) - used)
    assert len(unused) > 10
    before = next(v for k, v in load_file(str(tiny_llama_dir / "model.safetensors")).items() if "embed_tokens" in k)
    after = next(v for k, v in load_file(str(tmp_path / "m" / "model.safetensors")).items() if "embed_tokens" in k)
    shrink = np.prod([1 - lr * config["weight_decay"] for lr in expected_lrs])
    np.testing.assert_allclose(after[unused], before[unused] * shrink, rtol=1e-4, atol=1e-7)
    assert shrink < 0.95  # far from 1, so a trainer without weight decay fails this test


@pytest.mark.slow
def test_staged_training_sees_the_extra_rows_in_stage_one_only(tmp_path, prepared, tiny_llama_dir, capsys):
    """stages: [official + extra, official]: stage 1 takes 32 + 16 rows (6 steps of 8), stage 2 the 32 official
    rows only (4 steps), in that order."""
    import polars as pl

    train, test, spec, targets = prepared
    train, targets = train.head(32), targets[:32]
    extra = test.select("id", "text").with_columns(
        [pl.lit(1 / len(spec.probability_columns), dtype=pl.Float32).alias(c) for c in spec.probability_columns])
    config = {**FULL, "batch_size": 8, "log_every": 1,
              "stages": [{"epochs": 1, "data": ["official", "generated"]}, {"epochs": 1, "data": ["official"]}]}
    capsys.readouterr()
    summary = train_model(train, targets, spec, set(train["id"].to_list()), config, str(tiny_llama_dir),
                          tmp_path / "m", tmp_path / "w", extra_sets={"generated": extra})
    steps = logged_steps(capsys.readouterr().out)
    assert [(stage, step) for stage, step, _ in steps] == [(1, k) for k in range(1, 7)] + [(2, k) for k in range(7, 11)]
    assert summary["train_rows"] == {"official": 32, "generated": 16}


def test_the_chosen_epoch_is_the_first_best_in_the_metrics_direction():
    history = [{"epoch": 1, "score": 0.5}, {"epoch": 2, "score": 0.7}, {"epoch": 3, "score": 0.7},
               {"epoch": 4, "score": 0.6}]
    assert chosen_epoch(history, "map@3") == 2  # argmax; the tie with epoch 3 goes to the earlier epoch
    assert chosen_epoch(history, "log_loss") == 1  # a loss: the lowest wins
    assert chosen_epoch([{"epoch": 1, "score": float("nan")}, {"epoch": 2, "score": 0.1}], "accuracy") == 2
    with pytest.raises(OoflineError, match="no epoch was scored"):
        chosen_epoch([], "accuracy")


def test_the_full_data_model_has_no_fold_to_pick_an_epoch_on(prepared):
    train, _, spec, targets = prepared
    folds = pl.DataFrame({"id": train["id"], "fold": [i % 2 for i in range(train.height)]})
    targets_frame = pl.DataFrame({"id": train["id"]}).hstack(pl.DataFrame(targets, schema=spec.probability_columns))
    with pytest.raises(OoflineError, match="select_epoch: best needs a held-out fold; fold 'full' has none"):
        held_out_fold(train, targets_frame, folds, "full", spec, "map@3")
    held_out = held_out_fold(train, targets_frame, folds, "1", spec, "map@3")
    assert held_out.ids == train["id"].to_list()[1::2] and held_out.targets.shape == (train.height // 2, 3)


@pytest.mark.slow
def test_best_epoch_is_kept_recorded_and_survives_a_resume(tmp_path, prepared, tiny_llama_dir):
    from workflow_scripts.metrics import task_scores

    train, _, spec, targets = prepared
    folds = pl.DataFrame({"id": train["id"], "fold": [i % 2 for i in range(train.height)]})
    targets_frame = pl.DataFrame({"id": train["id"]}).hstack(pl.DataFrame(targets, schema=spec.probability_columns))
    held_out = held_out_fold(train, targets_frame, folds, "0", spec, "map@3")
    rows = set(training_rows(folds, "0"))
    config = {"kind": "encoder_full", "lr": 1e-2, "epochs": 3, "batch_size": 8, "max_length": 32, "seed": 3,
              "select_epoch": "best"}
    uninterrupted = tmp_path / "uninterrupted"
    summary = train_model(train, targets, spec, rows, config, str(tiny_llama_dir), uninterrupted, tmp_path / "work_a",
                          held_out=held_out)
    selection = summary["epoch_selection"]
    history = [entry["score"] for entry in selection["history"]]
    assert [(e["epoch"], e["stage"], e["stage_epoch"]) for e in selection["history"]] == [(1, 1, 1), (2, 1, 2), (3, 1, 3)]
    assert selection["chosen_epoch"] == int(np.argmax(history)) + 1 and selection["last_epoch"] == 3
    # the saved model is the chosen epoch's: predicting the fold with it scores what training recorded
    model, tokenizer = load_trained(str(uninterrupted), str(tiny_llama_dir), config, 3)
    probabilities = predict_probabilities(model, tokenizer, held_out.texts, spec, 32, 16)
    applied = task_scores(spec, probabilities, held_out.targets, "map@3")["score"]
    assert applied == pytest.approx(history[selection["chosen_epoch"] - 1], abs=1e-6)
    last_epoch = pl.read_parquet(uninterrupted / "last_epoch_valid.parquet")
    last_scored = task_scores(spec, last_epoch.select(spec.probability_columns).to_numpy(), held_out.targets, "map@3")
    assert last_epoch["fold"].unique().to_list() == [0] and last_scored["score"] == pytest.approx(history[-1], abs=1e-9)
    # killed in epoch 2 (last checkpoint: the end of epoch 1), resumed: the same history, choice and weights
    interrupted = tmp_path / "interrupted"
    train_model(train, targets, spec, rows, config, str(tiny_llama_dir), interrupted, tmp_path / "work_b",
                checkpoint_every=100, stop_after_steps=6, held_out=held_out)
    train_model(train, targets, spec, rows, config, str(tiny_llama_dir), interrupted, tmp_path / "work_b",
                checkpoint_every=100, held_out=held_out)
    assert (uninterrupted / "training.json").read_bytes() == (interrupted / "training.json").read_bytes()
    first = load_file(str(uninterrupted / "model.safetensors"))
    second = load_file(str(interrupted / "model.safetensors"))
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])
