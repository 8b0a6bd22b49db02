"""The one CPU/GPU training and inference path, tested without a GPU: device placement of batches and
targets, bf16 autocast through the real train step, gradient checkpointing, prediction batches and
precision, and 2-process DDP over gloo launched the way the train rule launches it."""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from safetensors.numpy import load_file

from workflow_scripts import modeling
from workflow_scripts.batching import pad_batch
from workflow_scripts.data import prepare_frames
from workflow_scripts.errors import OoflineError
from workflow_scripts.train import TRAINING_SPEED, micro_batch_loss, train_model

REPO = Path(__file__).resolve().parent.parent
TASK = {"type": "multiclass", "text_template": "{text}", "label_column": "category"}
QLORA = {"kind": "decoder_lora", "quantization": "4bit", "r": 4, "alpha": 8, "dropout": 0.0, "lr": 5e-3,
         "epochs": 2, "batch_size": 8, "max_length": 48, "seed": 3, "log_every": 1}


@pytest.fixture(scope="module")
def prepared(movies_demo):
    train, test, _ = movies_demo
    clean, clean_test, spec, targets = prepare_frames(train.head(64), test.head(16), TASK)
    return clean, clean_test, spec, targets


class DeviceRecordingModel(torch.nn.Module):
    """Claims its inputs live on `meta` (where its input embeddings are), records the devices of the
    tensors its forward receives and returns logits on `meta`: a loss can only be taken there if the
    targets were moved too."""

    def __init__(self, n_outputs: int):
        super().__init__()
        self.embeddings = torch.nn.Embedding(10, 2, device="meta")
        self.n_outputs = n_outputs
        self.received: list[str] = []

    def get_input_embeddings(self):
        return self.embeddings

    def forward(self, input_ids, attention_mask):
        self.received += [input_ids.device.type, attention_mask.device.type]
        logits = torch.zeros(input_ids.shape[0], self.n_outputs, device="meta", requires_grad=True)
        return type("Output", (), {"logits": logits})()


def test_batches_and_targets_are_moved_to_the_models_device_before_the_forward(prepared):
    _, _, spec, _ = prepared
    model = DeviceRecordingModel(len(spec.probability_columns))
    inputs = pad_batch([[5, 6, 7], [8, 9]], np.array([0, 1]), pad_token_id=0)  # built on the CPU
    targets = torch.eye(len(spec.probability_columns))[:2]  # on the CPU
    loss = micro_batch_loss(model, inputs, targets, spec, label_smoothing=0.0)
    assert model.received == ["meta", "meta"] and loss.device.type == "meta"


def gradients(model, inputs, targets, spec):
    model.zero_grad(set_to_none=True)
    micro_batch_loss(model, inputs, targets, spec, 0.0).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("kind,quantization", [("decoder_lora", "4bit"), ("encoder_full", "none")])
def test_gradient_checkpointing_gives_the_same_gradients(prepared, tiny_llama_dir, kind, quantization):
    train, _, spec, targets = prepared
    tokenizer = modeling.load_tokenizer(tiny_llama_dir)
    token_ids = tokenizer(train["text"].to_list()[:6], truncation=True, max_length=48)["input_ids"]
    inputs = pad_batch(token_ids, np.arange(6), tokenizer.pad_token_id)
    batch_targets = torch.from_numpy(targets.select(spec.probability_columns).to_numpy()[:6].astype(np.float32))
    found = []
    for checkpointing in (False, True):
        model = modeling.load_classifier(tiny_llama_dir, len(spec.probability_columns), kind, quantization,
                                         lora={"r": 4, "dropout": 0.0} if kind != "encoder_full" else None,
                                         seed=0, gradient_checkpointing=checkpointing)
        model.train()
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        assert inner.is_activation_checkpointing is checkpointing
        found.append(gradients(model, inputs, batch_targets, spec))
    plain, checkpointed = found
    assert plain.keys() == checkpointed.keys() and len(plain) > 2
    assert any(float(grad.abs().max()) > 0 for grad in plain.values())
    for name in plain:  # recomputation repeats the same kernels on the same inputs: equal to rounding
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)


def test_flash_attention_without_the_package_is_one_error_naming_the_key(tiny_llama_dir):
    import importlib.util

    if importlib.util.find_spec("flash_attn") is not None:
        pytest.skip("flash_attn is installed here")
    with pytest.raises(OoflineError, match="attn_implementation 'flash_attention_2' needs the flash_attn package"):
        modeling.load_classifier(tiny_llama_dir, 3, "encoder_full", attn_implementation="flash_attention_2")


def logged_losses(text: str) -> list[float]:
    return [float(value) for value in re.findall(r" loss ([0-9.]+) ", text)]


@pytest.mark.slow
def test_bf16_training_on_the_cpu_autocasts_and_lowers_the_loss(tmp_path, prepared, tiny_llama_dir, capsys,
                                                                 monkeypatch):
    """QLoRA 4-bit with precision bf16 through the real train step: the head computes in bf16 (autocast and
    the 4-bit compute dtype), the LoRA weights that train stay float32, and the loss goes down."""
    import bitsandbytes as bnb

    train, _, spec, targets = prepared
    head_dtypes: set[torch.dtype] = set()
    load_classifier = modeling.load_classifier

    def recording_load_classifier(*args, **kwargs):
        model = load_classifier(*args, **kwargs)
        for name, module in model.named_modules():
            if name.endswith("score.modules_to_save.default"):
                module.register_forward_hook(lambda _m, _i, output: head_dtypes.add(output.dtype))
        assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
        four_bit = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
        assert four_bit and all(m.compute_dtype == torch.bfloat16 for m in four_bit)
        return model

    monkeypatch.setattr(modeling, "load_classifier", recording_load_classifier)
    config = {**QLORA, "precision": "bf16", "epochs": 4}
    out = tmp_path / "adapter"
    train_model(train, targets.select(spec.probability_columns).to_numpy(), spec, set(train["id"].to_list()),
                config, str(tiny_llama_dir), out, tmp_path / "work")
    losses = logged_losses(capsys.readouterr().out)
    assert len(losses) == 32 and head_dtypes == {torch.bfloat16}
    assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.3, losses  # measured 1.00 -> 0.41
    summary = json.loads((out / "training.json").read_text())["summary"]
    assert (summary["device"], summary["precision"], summary["gpu_name"], summary["world_size"]) == ("cpu", "bf16", None, 1)
    assert summary["peak_gpu_memory_mb"] is None
    assert json.loads((out / TRAINING_SPEED).read_text())["train_tokens_per_s"] > 0


@pytest.mark.slow
def test_prediction_runs_in_the_models_precision_with_predict_batch_size(tmp_path, prepared, tiny_llama_dir,
                                                                         monkeypatch):
    from workflow_scripts import predict

    train, test, spec, targets = prepared
    config = {"kind": "encoder_full", "lr": 1e-3, "epochs": 1, "batch_size": 8, "max_length": 48, "seed": 3}
    model_dir = tmp_path / "model"
    train_model(train, targets.select(spec.probability_columns).to_numpy(), spec, set(train["id"].to_list()),
                config, str(tiny_llama_dir), model_dir, tmp_path / "work")
    summary = json.loads((model_dir / "training.json").read_text())["summary"]
    assert (summary["device"], summary["precision"]) == ("cpu", "fp32")  # precision auto on the CPU
    test.select("id", "text").write_parquet(tmp_path / "test.parquet")
    spec.save(tmp_path / "labels.json")
    batches: list[tuple[int, torch.dtype]] = []
    load_trained = predict.load_trained

    def recording_load_trained(*args, **kwargs):
        model, tokenizer = load_trained(*args, **kwargs)
        model.score.register_forward_hook(lambda _m, inputs, output: batches.append((inputs[0].shape[0], output.dtype)))
        return model, tokenizer

    monkeypatch.setattr(predict, "load_trained", recording_load_trained)
    outputs = {}
    for precision in ("fp32", "bf16"):
        outputs[precision] = tmp_path / f"test.{precision}.parquet"
        predict.main(["--test", str(tmp_path / "test.parquet"), "--labels", str(tmp_path / "labels.json"),
                      "--fold", "full", "--model-dir", str(model_dir), "--base", str(tiny_llama_dir),
                      "--model-config", json.dumps({**config, "predict_batch_size": 5, "precision": precision}),
                      "--test-out", str(outputs[precision])])
    # 16 rows sorted by length into batches of 5: four forwards per precision, the head in that dtype
    assert batches == [(5, torch.float32)] * 3 + [(1, torch.float32)] + [(5, torch.bfloat16)] * 3 + [(1, torch.bfloat16)]
    full, half = (pl.read_parquet(outputs[p]) for p in ("fp32", "bf16"))
    assert full["id"].to_list() == test["id"].to_list() == half["id"].to_list()
    # bf16 keeps 8 bits of mantissa: probabilities agree to about 1e-2
    np.testing.assert_allclose(half.select(spec.probability_columns).to_numpy(),
                               full.select(spec.probability_columns).to_numpy(), atol=2e-2)


@pytest.mark.slow
def test_two_process_ddp_over_gloo_matches_one_process(tmp_path, prepared, tiny_llama_dir):
    """`gpu: 2` runs train under torchrun through the GPU allocator (two fake GPUs, so the CPU and gloo
    here): each rank trains its 4-bit model on half of every step's rows and DDP averages gradients, so
    the adapter matches one process taking the same 8 rows a step. 29 training rows in steps of 8 (micro-batches
    of 2, accumulation 4): three full steps per epoch give each rank 2 micro-batches, the short step of 5 rows
    gives rank 0 three rows (2 micro-batches) and rank 1 two (1 micro-batch): the ranks sync on different
    micro-batches of that step, and the result must not change."""
    from workflow_scripts.train import rank_share

    train, _, spec, targets = prepared
    config = {**QLORA, "precision": "fp32", "batch_size": 2, "grad_accum": 4}
    short_step = np.arange(29 % 8)
    assert [math.ceil(len(rank_share(short_step, rank, 2)[0]) / 2) for rank in (0, 1)] == [2, 1]
    folds = pl.DataFrame({"id": train["id"], "fold": [0 if index < train.height - 29 else 1
                                                      for index in range(train.height)]})
    for name, frame in {"train": train, "targets": targets, "folds": folds}.items():
        frame.write_parquet(tmp_path / f"{name}.parquet")
    spec.save(tmp_path / "labels.json")
    reference = tmp_path / "one_process"
    train_model(train, targets.select(spec.probability_columns).to_numpy(), spec,
                set(folds.filter(pl.col("fold") != 0)["id"].to_list()), config, str(tiny_llama_dir), reference,
                tmp_path / "work_one")
    env = {key: value for key, value in os.environ.items() if not key.startswith(("CUDA_", "SLURM_", "OOFLINE_"))}
    env.update(PYTHONPATH=str(REPO), OOFLINE_GPU_DEVICES="0,1", OOFLINE_GPU_LOCK_DIR=str(tmp_path / "locks"))
    two = tmp_path / "two_processes"
    command = [sys.executable, "-m", "workflow_scripts.execution.gpu_devices", "--gpus", "2", "--torchrun", "--",
               sys.executable, "-m", "workflow_scripts.train", "--train", str(tmp_path / "train.parquet"),
               "--targets", str(tmp_path / "targets.parquet"), "--folds", str(tmp_path / "folds.parquet"),
               "--labels", str(tmp_path / "labels.json"), "--fold", "0", "--model-config", json.dumps(config),
               "--base", str(tiny_llama_dir), "--out", str(two), "--work-dir", str(tmp_path / "work_two"),
               "--threads", "1"]
    result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("2 process(es)") == 2  # both ranks trained; rank 0 alone wrote the output
    summary = json.loads((two / "training.json").read_text())["summary"]
    assert (summary["world_size"], summary["device"], summary["steps"]) == (2, "cpu", 8)
    assert not (tmp_path / "work_two").exists()
    one, both = load_file(str(reference / "adapter_model.safetensors")), load_file(str(two / "adapter_model.safetensors"))
    assert one.keys() == both.keys()
    # the same arithmetic up to summation order (4 + 4 rows all-reduced vs 8 rows at once); after 8 Adam
    # steps the adapters differ by ~1e-6 (measured 8e-7 with equal micro-batch counts)
    for key in one:
        np.testing.assert_allclose(both[key], one[key], rtol=1e-4, atol=1e-5, err_msg=key)
