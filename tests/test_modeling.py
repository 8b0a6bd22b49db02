"""modeling: real forwards and optimizer steps on tiny models, QLoRA on the CPU, merged == adapter logits."""
from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import torch

from workflow_scripts import modeling, prepare_model
from workflow_scripts.errors import OoflineError, run_cli


TEXTS = [
    "A warm, funny and surprisingly moving film about friendship.",
    "The plot drags and the acting is wooden; a tedious two hours.",
    "An astronaut stranded on Mars has to grow potatoes to survive.",
    "Brilliant direction, but the script never finds its footing.",
] * 50
BATCH = ["a great movie", "bad plot and terrible acting, two long hours of it", "an astronaut on Mars"]
LABELS = torch.tensor([0, 2, 1])
LORA = {"r": 8, "alpha": 32, "dropout": 0.0, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    corpus = root / "corpus.csv"
    pl.DataFrame({"text": TEXTS}).write_csv(corpus)
    return prepare_model.materialise("tiny:llama", root / "base", seed=0, corpus=corpus)


@pytest.fixture(scope="module")
def minilm(tmp_path_factory) -> Path:
    return prepare_model.materialise("packaged:minilm", tmp_path_factory.mktemp("minilm") / "base")


def _batch(path):
    return modeling.load_tokenizer(path)(BATCH, padding=True, return_tensors="pt")


def _trainable(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def _one_step(model, batch, lr=1e-2):
    """One AdamW step; returns (loss, names of trainable parameters that changed)."""
    before = _trainable(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    loss = model(**batch, labels=LABELS).loss
    loss.backward()
    optimizer.step()
    after = _trainable(model)
    return loss.item(), {name for name in before if not torch.equal(before[name], after[name])}


def _logits(model, batch):
    model.eval()
    with torch.no_grad():
        return model(**batch).logits.float()


def test_tokenizer_pads_on_the_right(tiny_llama):
    tokenizer = modeling.load_tokenizer(tiny_llama)
    assert tokenizer.pad_token == "<pad>" and tokenizer.padding_side == "right"
    encoded = tokenizer(["short", "a much longer sentence than the first one"], padding=True)
    assert encoded["input_ids"][0][-1] == tokenizer.pad_token_id and encoded["attention_mask"][0][-1] == 0


def test_tokenizer_without_pad_reuses_eos(tmp_path, tiny_llama):
    tokenizer = modeling.load_tokenizer(tiny_llama)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text((tiny_llama / "config.json").read_text())
    assert modeling.load_tokenizer(tmp_path).pad_token == "</s>"


@pytest.mark.parametrize("quantization", ["none", "4bit", "8bit"])
def test_decoder_lora_trains_lora_and_head_only(tiny_llama, quantization):
    model = modeling.load_classifier(tiny_llama, 3, "decoder_lora", quantization, LORA, seed=0)
    if quantization == "4bit":
        import bitsandbytes as bnb

        q_proj = model.base_model.model.model.layers[0].self_attn.q_proj.base_layer
        assert isinstance(q_proj, bnb.nn.Linear4bit) and q_proj.weight.quant_type == "nf4"
    trainable = set(_trainable(model))
    assert trainable and all("lora_" in name or "score.modules_to_save" in name for name in trainable)
    assert any("score.modules_to_save" in name for name in trainable)  # the fresh head trains in full
    loss, changed = _one_step(model, _batch(tiny_llama))
    assert torch.isfinite(torch.tensor(loss))
    assert changed == trainable  # every LoRA matrix and the head moved after one step


def test_4bit_lora_still_learns_after_an_evaluation(tiny_llama):
    """bitsandbytes repacks 4-bit weights on a CPU eval pass; gradients must still reach layer 0's LoRA."""
    model = modeling.load_classifier(tiny_llama, 3, "decoder_lora", "4bit", LORA, seed=0)
    batch = _batch(tiny_llama)
    _logits(model, batch)  # an evaluation pass under no_grad, as between epochs
    model.train()
    model(**batch, labels=LABELS).loss.backward()
    first_layer_lora = model.base_model.model.model.layers[0].self_attn.q_proj.lora_B.default.weight
    assert first_layer_lora.grad is not None and first_layer_lora.grad.abs().sum() > 0


def test_decoder_logits_do_not_depend_on_batch_padding(tiny_llama):
    model = modeling.load_classifier(tiny_llama, 3, "decoder_lora", "none", LORA, seed=0)
    tokenizer = modeling.load_tokenizer(tiny_llama)
    together = _logits(model, tokenizer(BATCH, padding=True, return_tensors="pt"))
    alone = torch.cat([_logits(model, tokenizer([text], return_tensors="pt")) for text in BATCH])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


def test_seed_makes_head_initialisation_reproducible(tiny_llama):
    first = modeling.load_classifier(tiny_llama, 3, "decoder_lora", "none", LORA, seed=5)
    second = modeling.load_classifier(tiny_llama, 3, "decoder_lora", "none", LORA, seed=5)
    batch = _batch(tiny_llama)
    torch.testing.assert_close(_logits(first, batch), _logits(second, batch), atol=0, rtol=0)


# fp32, 4bit: merged into the dequantised nf4 base (exact fp32 CPU 4-bit path; see modeling._disable_cpu_packed_4bit).
# 8bit: LLM.int8 also quantises activations at run time, which no merged float model can reproduce
# (measured gap ~6e-3 on logits of magnitude ~2).
# bf16: the merged weights W + BA are rounded to bf16 once, the adapter model adds BAx in its own
# rounding: measured gaps 8e-3 (none) and 1.2e-2 (4bit) on logits of magnitude ~1.7, where one bf16
# ulp is 7.8e-3; the tolerance is 4 ulps.
@pytest.mark.parametrize("quantization, precision, tolerance", [
    ("none", "fp32", 1e-5), ("4bit", "fp32", 1e-5), ("8bit", "fp32", 2e-2),
    ("none", "bf16", 3e-2), ("4bit", "bf16", 3e-2)])
def test_merged_logits_match_adapter_logits(tmp_path, tiny_llama, monkeypatch, quantization, precision, tolerance):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    dtype = {"fp32": "float32", "bf16": "bfloat16"}[precision]
    model = modeling.load_classifier(tiny_llama, 3, "decoder_lora", quantization, LORA, seed=0)
    batch = _batch(tiny_llama)
    for _ in range(3):  # move LoRA and head away from their initialisation
        _one_step(model, batch)
    model.save_pretrained(tmp_path / "adapter")
    if precision == "fp32":
        adapter_logits = _logits(model, batch)
    else:  # the adapter as it runs in this precision: base loaded in bf16, LoRA on top
        base_in_dtype = modeling.load_base_classifier(tiny_llama, 3, quantization, dtype=dtype, device="cpu")
        adapter_logits = _logits(PeftModel.from_pretrained(base_in_dtype, tmp_path / "adapter"), batch)
    loaded_dtypes = []
    load_base = modeling.load_base_classifier

    def recording_load(*args, **kwargs):
        base = load_base(*args, **kwargs)
        loaded_dtypes.extend({p.dtype for p in base.parameters() if p.is_floating_point()})
        return base

    monkeypatch.setattr(modeling, "load_base_classifier", recording_load)
    merged_dir = modeling.merge_adapter(tiny_llama, tmp_path / "adapter", tmp_path / "merged", 3, quantization,
                                        dtype=dtype)
    monkeypatch.undo()
    # The base was never materialised in fp32 for a bf16 merge (no 56 GB copy of a 14B model).
    assert set(loaded_dtypes) == {modeling.torch_dtype(dtype)}
    assert (merged_dir / "model.safetensors").exists() and not (merged_dir / "adapter_config.json").exists()
    assert "quantization_config" not in json.loads((merged_dir / "config.json").read_text())
    merged = AutoModelForSequenceClassification.from_pretrained(merged_dir)  # plain transformers, no peft
    assert type(merged.model.layers[0].self_attn.q_proj) is torch.nn.Linear
    assert {p.dtype for p in merged.parameters()} == {modeling.torch_dtype(dtype)}
    merged_logits = _logits(merged, modeling.load_tokenizer(merged_dir)(BATCH, padding=True, return_tensors="pt"))
    torch.testing.assert_close(merged_logits, adapter_logits, atol=tolerance, rtol=0)
    base_logits = _logits(modeling.load_base_classifier(tiny_llama, 3), batch)
    assert not torch.allclose(merged_logits, base_logits, atol=1e-3)  # the adapter really was merged
    if quantization == "4bit" and precision == "fp32":
        # Why merge into the dequantised base: merging into the original float weights drifts further.
        naive_dir = modeling.merge_adapter(tiny_llama, tmp_path / "adapter", tmp_path / "naive", 3, "none")
        naive = AutoModelForSequenceClassification.from_pretrained(naive_dir)
        naive_gap = (_logits(naive, batch) - adapter_logits).abs().max()
        assert naive_gap > 3 * (merged_logits - adapter_logits).abs().max()


def _fake_gpu(monkeypatch, capability=(8, 0), free_bytes=80 * 10**9, total_bytes=80 * 10**9):
    """torch's device queries answer as one GPU of this capability and free memory would."""
    from types import SimpleNamespace

    properties = SimpleNamespace(name="fake GPU", major=capability[0], minor=capability[1], total_memory=total_bytes)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: properties)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free_bytes, total_bytes))


def test_merge_runs_on_the_jobs_gpu_in_the_models_precision(monkeypatch):
    from workflow_scripts.merge import merge_device_and_dtype

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert merge_device_and_dtype({})[:2] == ("cpu", "float32")  # auto on the CPU
    assert merge_device_and_dtype({"precision": "bf16"})[:2] == ("cpu", "bfloat16")
    _fake_gpu(monkeypatch)
    assert merge_device_and_dtype({})[:2] == ("cuda:0", "bfloat16")
    assert merge_device_and_dtype({"precision": "fp16"})[:2] == ("cuda:0", "float16")
    with pytest.raises(OoflineError, match="precision 'half'"):
        merge_device_and_dtype({"precision": "half"})


def test_a_base_too_large_for_the_gpus_free_memory_merges_in_host_memory_in_the_gpus_dtype(monkeypatch, tiny_llama,
                                                                                          tmp_path, capsys):
    """A GPU that fits QLoRA training but not the bf16 base: the merge runs in host memory (a real merge here, the
    GPU's queries faked), in the dtype the GPU would have used, and its log says where and why."""
    from workflow_scripts import merge
    from workflow_scripts.labels import Head, LabelSpec
    from workflow_scripts.merge import merge_device_and_dtype

    model = modeling.load_classifier(tiny_llama, 3, "decoder_lora", "4bit", LORA, seed=0)  # bitsandbytes imported
    _one_step(model, _batch(tiny_llama))
    model.save_pretrained(tmp_path / "adapter")
    labels = tmp_path / "labels.json"
    LabelSpec("multiclass", (Head("label", "multiclass", "label", ("a", "b", "c")),)).save(labels)
    bf16_bytes = modeling.weights_bytes(tiny_llama, "bfloat16")
    parameters = sum(p.numel() for p in modeling.load_base_classifier(tiny_llama, 3).base_model.parameters())
    assert parameters * 2 <= bf16_bytes <= parameters * 2 + 3 * 10**6  # + the saved LM head of the random base
    assert modeling.weights_bytes(tiny_llama, "float32") == 2 * bf16_bytes

    _fake_gpu(monkeypatch, free_bytes=bf16_bytes + 2**31)
    device, dtype, why = merge_device_and_dtype({"quantization": "4bit"}, str(tiny_llama))
    assert (device, dtype) == ("cuda:0", "bfloat16") and "GB free" in why
    _fake_gpu(monkeypatch, capability=(7, 5), free_bytes=2**30 + bf16_bytes // 2, total_bytes=16 * 10**9)
    device, dtype, why = merge_device_and_dtype({"quantization": "4bit"}, str(tiny_llama))
    assert (device, dtype) == ("cpu", "float16") and "merging in host memory" in why

    _fake_gpu(monkeypatch, free_bytes=2**30, total_bytes=16 * 10**9)
    merge.main(["--adapter", str(tmp_path / "adapter"), "--base", str(tiny_llama), "--labels", str(labels),
                "--model-config", json.dumps({"quantization": "4bit"}), "--out", str(tmp_path / "merged")])
    log = capsys.readouterr().out
    assert "[merge] on cpu in bfloat16:" in log and "merging in host memory" in log
    saved = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert saved["dtype"] == "bfloat16" and "quantization_config" not in saved


def test_a_gpu_base_streams_onto_the_device_without_a_host_copy(monkeypatch, tiny_llama):
    """load_base_classifier on a GPU passes device_map (weights go straight to the GPU), never .to() after."""
    from transformers import AutoModelForSequenceClassification

    seen = {}
    real = AutoModelForSequenceClassification.from_pretrained

    def recording(name, **kwargs):
        seen.update(kwargs)
        kwargs.pop("device_map", None)  # no GPU here: build it on the CPU
        return real(name, **kwargs)

    monkeypatch.setattr(AutoModelForSequenceClassification, "from_pretrained", recording)
    model = modeling.load_base_classifier(tiny_llama, 3, dtype="bfloat16", device="cuda:0")
    assert seen["device_map"] == {"": "cuda:0"} and seen["dtype"] is torch.bfloat16
    assert next(model.parameters()).device.type == "cpu"  # not moved again by .to()


def test_merge_cli(tmp_path, tiny_llama):
    model = modeling.load_classifier(tiny_llama, 2, "decoder_lora", "none", LORA, seed=0)
    model.save_pretrained(tmp_path / "adapter")
    argv = ["--base", str(tiny_llama), "--adapter", str(tmp_path / "adapter"), "--out", str(tmp_path / "m"),
            "--num-labels", "2"]
    assert run_cli(modeling.main, argv) == 0
    assert (tmp_path / "m" / "model.safetensors").exists()


def test_minilm_encoder_full_gives_logits_and_trains_everything(minilm):
    model = modeling.load_classifier(minilm, 3, "encoder_full", seed=0)
    batch = _batch(minilm)
    logits = _logits(model, batch)
    assert logits.shape == (3, 3) and torch.isfinite(logits).all()
    all_names = {name for name, _ in model.named_parameters()}
    assert set(_trainable(model)) == all_names
    loss, changed = _one_step(model, batch, lr=1e-3)
    assert torch.isfinite(torch.tensor(loss)) and "classifier.weight" in changed and len(changed) > 50


def test_minilm_encoder_lora_trains_lora_and_classifier(minilm):
    model = modeling.load_classifier(minilm, 3, "encoder_lora", "none", {"r": 4, "target_modules": ["query", "value"]})
    trainable = set(_trainable(model))
    assert any("classifier.modules_to_save" in name for name in trainable)
    assert all("lora_" in name or "classifier.modules_to_save" in name for name in trainable)
    _, changed = _one_step(model, _batch(minilm))
    assert changed == trainable


def test_problem_type_multilabel(minilm):
    model = modeling.load_classifier(minilm, 4, "encoder_full", problem_type="multi_label_classification")
    batch = _batch(minilm)
    loss = model(**batch, labels=torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 1], [1, 1, 0, 0]])).loss
    assert torch.isfinite(loss)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"kind": "decoder_qlora"}, "decoder_qlora"),
        ({"kind": "decoder_lora", "quantization": "3bit"}, "3bit"),
        ({"kind": "encoder_full", "quantization": "4bit"}, "encoder_full"),
        ({"kind": "decoder_lora", "lora": {"rank": 8}}, "lora.rank"),
        ({"kind": "decoder_lora", "lora": {"r": 0}}, "lora.r"),
        ({"kind": "decoder_lora", "dtype": "float8"}, "float8"),
    ],
)
def test_bad_settings_name_the_key(tiny_llama, kwargs, message):
    with pytest.raises(OoflineError, match=message):
        modeling.load_classifier(tiny_llama, 3, **kwargs)


def test_missing_model_path_names_it(tmp_path):
    missing = tmp_path / "models" / "nope"
    with pytest.raises(OoflineError, match="nope"):
        modeling.load_classifier(missing, 3, "decoder_lora")
    with pytest.raises(OoflineError, match="adapter_config.json"):
        modeling.merge_adapter(missing, tmp_path, tmp_path / "out", 3)
