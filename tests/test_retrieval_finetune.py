"""Embedder/reranker fine-tunes through FlagEmbedding: command lines, data checks, real tiny runs (slow)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from workflow_scripts.errors import OoflineError
from workflow_scripts.retrieval.finetune import FinetuneSettings, command_line, finetune, main, prepare_training_data


def settings(**overrides):
    values = dict(kind="embedder", model_class="encoder-only-base", base_model="/m")
    values.update(overrides)
    return FinetuneSettings(**values)


def test_command_uses_transformers5_spellings_and_no_shell():
    argv = command_line(settings(epochs=2, learning_rate=1e-4, warmup=0.1, knowledge_distillation=True), "d.jsonl", "out")
    assert argv[1:3] == ["-m", "FlagEmbedding.finetune.embedder.encoder_only.base"]
    joined = " ".join(argv)
    for rejected in ("--overwrite_output_dir", "--warmup_ratio", "--logging_dir", "--evaluation_strategy", "--no_cuda"):
        assert rejected not in joined
    assert argv[argv.index("--warmup_steps") + 1] == "0.1" and argv[argv.index("--use_cpu") + 1] == "True"
    assert argv[argv.index("--knowledge_distillation") + 1] == "True"
    assert argv[argv.index("--learning_rate") + 1] == "0.0001"


def test_lora_icl_and_reranker_arguments():
    icl = command_line(settings(model_class="decoder-only-icl", lora=True, lora_rank=16, lora_alpha=32,
                                icl_examples=True, icl_suffix="\\n<response>"), "d", "o")
    assert icl[2] == "FlagEmbedding.finetune.embedder.decoder_only.icl"
    assert icl[icl.index("--lora_rank") + 1] == "16" and icl[icl.index("--save_merged_lora_model") + 1] == "True"
    assert icl[icl.index("--same_dataset_within_batch") + 1] == "True"
    assert icl[icl.index("--icl_suffix_str") + 1] == "\n<response>"  # a real newline: FlagEmbedding does not unescape
    reranker = command_line(settings(kind="reranker", model_class="decoder-only-base", lora=True), "d", "o")
    assert reranker[2] == "FlagEmbedding.finetune.reranker.decoder_only.base"
    assert reranker[reranker.index("--model_type") + 1] == "decoder"
    smoothed = command_line(settings(kind="reranker", label_smoothing=0.2), "d", "o")
    assert smoothed[1:4] == ["-m", "workflow_scripts.retrieval.finetune", "--launch"]
    assert smoothed[4] == "FlagEmbedding.finetune.reranker.encoder_only.base" and smoothed[6] == "0.2"


@pytest.mark.parametrize("overrides, message", [
    (dict(model_class="decoder-only-icl", kind="reranker"), "reranker/decoder-only-icl"),
    (dict(lora=True), "lora"),
    (dict(label_smoothing=0.1), "label_smoothing applies to rerankers"),
    (dict(train_group_size=1), "train_group_size"),
    (dict(learning_rate=0), "learning_rate"),
])
def test_bad_settings_name_the_key(overrides, message):
    with pytest.raises(OoflineError, match=message):
        settings(**overrides).validate()


def test_training_data_prompt_is_set_or_removed_and_kd_needs_scores(tmp_path):
    source = tmp_path / "mined.jsonl"
    source.write_text(json.dumps({"query": "q", "pos": ["p"], "neg": ["n"], "prompt": "embedder instruction"}) + "\n")
    prepare_training_data(source, tmp_path / "a.jsonl", settings(prompt="Is B about A?"))
    assert json.loads((tmp_path / "a.jsonl").read_text())["prompt"] == "Is B about A?"
    prepare_training_data(source, tmp_path / "b.jsonl", settings())
    assert "prompt" not in json.loads((tmp_path / "b.jsonl").read_text())
    with pytest.raises(OoflineError, match=r"mined.jsonl, line 1: knowledge_distillation needs 'pos_scores'"):
        prepare_training_data(source, tmp_path / "c.jsonl", settings(knowledge_distillation=True))
    source.write_text(json.dumps({"query": "q", "pos": ["p"]}) + "\n")
    with pytest.raises(OoflineError, match=r"line 1: field 'neg' is missing"):
        prepare_training_data(source, tmp_path / "d.jsonl", settings())


def test_missing_base_model_is_named(tmp_path):
    with pytest.raises(OoflineError, match="base model not found: /nonexistent"):
        finetune(settings(base_model="/nonexistent"), tmp_path / "x.jsonl", tmp_path / "out")



def tiny_training_data(path, with_scores=False):
    rows = []
    for i in range(8):
        row = {"id": f"q{i}", "query": f"review of movie {i}", "pos": [f"plot of movie {i}"],
               "neg": [f"plot of movie {(i + 1) % 8}", f"plot of movie {(i + 2) % 8}"]}
        if with_scores:
            row.update(pos_scores=[2.0], neg_scores=[0.5, -1.0])
        rows.append(json.dumps(row))
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.mark.slow
def test_real_embedder_finetune_gives_a_loadable_model(tiny_bert, tmp_path):
    from FlagEmbedding import FlagAutoModel

    data = tiny_training_data(tmp_path / "scored.jsonl", with_scores=True)
    main(["--kind", "embedder", "--model-class", "encoder-only-base", "--base-model", tiny_bert,
          "--train-data", str(data), "--output-dir", str(tmp_path / "embedder"), "--epochs", "1", "--batch-size", "4",
          "--train-group-size", "3", "--query-max-len", "16", "--passage-max-len", "16", "--knowledge-distillation", "true"])
    merged = tmp_path / "embedder" / "merged"
    assert list(merged.glob("*.safetensors")) and not list(merged.glob("*.bin"))
    assert not (tmp_path / "embedder" / "work").exists()
    model = FlagAutoModel.from_finetuned(str(merged), model_class="encoder-only-base", pooling_method="mean",
                                         query_instruction_format="{}{}", devices="cpu", use_fp16=False)
    vectors = np.asarray(model.encode_queries(["a review", "another review"]))
    assert vectors.shape == (2, 32) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)
    # training changed the weights (the merged model is not just a copy of the base)
    trained = load_file(next(merged.glob("*.safetensors")))
    base = load_file(next(Path(tiny_bert).glob("*.safetensors")))
    shared = [k for k in trained if k in base and "embeddings" not in k]
    assert any(not np.array_equal(trained[k], base[k]) for k in shared)
    recorded = json.loads((tmp_path / "embedder" / "settings.json").read_text())
    assert recorded["settings"]["knowledge_distillation"] is True and "--use_cpu" in recorded["command"]


@pytest.mark.slow
def test_real_reranker_finetune_with_label_smoothing(tiny_bert, tmp_path):
    from FlagEmbedding import FlagAutoReranker

    data = tiny_training_data(tmp_path / "mined.jsonl")
    main(["--kind", "reranker", "--model-class", "encoder-only-base", "--base-model", tiny_bert,
          "--train-data", str(data), "--output-dir", str(tmp_path / "reranker"), "--epochs", "1", "--batch-size", "4",
          "--train-group-size", "3", "--max-len", "32", "--label-smoothing", "0.2"])
    merged = tmp_path / "reranker" / "merged"
    reranker = FlagAutoReranker.from_finetuned(str(merged), model_class="encoder-only-base", devices="cpu", use_fp16=False)
    scores = reranker.compute_score([["a review", "a plot"], ["a review", "another plot"]], normalize=False)
    assert len(scores) == 2 and all(np.isfinite(scores))


# Run by the label-smoothing launcher in place of a FlagEmbedding entry point: builds a reranker model (the
# class the launcher patches) and writes its training loss on fixed logits, target = the positive (index 0).
LOSS_PROBE = '''
import json, sys
import torch
from FlagEmbedding.abc.finetune.reranker import AbsRerankerModel

class Probe(AbsRerankerModel):
    def encode(self, features):
        return features

class Config:
    pad_token_id = 0

class Base:
    config = Config()

class Tokenizer:
    pad_token_id = 0
    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [7]}

logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.3, 0.2]])
loss = Probe(Base(), Tokenizer(), train_batch_size=2).compute_loss(logits, torch.zeros(2, dtype=torch.long))
json.dump(float(loss), open(sys.argv[1], "w"))
'''


@pytest.mark.slow
def test_label_smoothing_launcher_smooths_the_reranker_loss(tmp_path):
    """The reranker's loss under the launcher is cross-entropy against (1 - e) * one-hot + e / n_passages,
    worked out here with numpy; unpatched it would be the plain cross-entropy."""
    import os
    import subprocess
    import sys

    smoothing = 0.2
    (tmp_path / "loss_probe.py").write_text(LOSS_PROBE)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(Path(__file__).resolve().parents[1])]))
    subprocess.run([sys.executable, "-m", "workflow_scripts.retrieval.finetune", "--launch", "loss_probe",
                    "--launch-label-smoothing", str(smoothing), "--", str(tmp_path / "loss.json")],
                   env=env, check=True, capture_output=True, timeout=120)
    logits = np.array([[2.0, 0.5, -1.0], [0.1, 0.3, 0.2]])
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    targets = (1 - smoothing) * np.eye(3)[[0, 0]] + smoothing / 3
    expected = float(-(targets * log_p).sum(axis=1).mean())
    assert json.loads((tmp_path / "loss.json").read_text()) == pytest.approx(expected, rel=1e-6)
    assert expected > float(-log_p[:, 0].mean()) + 0.05  # far from the unsmoothed loss


def test_a_lora_adapters_config_is_written_in_a_fixed_order(tmp_path):
    """peft writes target_modules from a set (its order follows the process's hash seed): the adapter folder keeps
    them sorted, so a pipeline rebuilt from its record is byte-identical."""
    from workflow_scripts.retrieval.finetune import _move_adapter

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    modules = ["v_proj", "q_proj", "o_proj", "k_proj"]
    (run_dir / "adapter_config.json").write_text(json.dumps({"target_modules": modules, "r": 4, "peft_type": "LORA"}))
    (run_dir / "adapter_model.safetensors").write_bytes(b"weights")
    _move_adapter(run_dir, tmp_path / "adapter")
    written = (tmp_path / "adapter" / "adapter_config.json").read_text()
    assert json.loads(written) == {"peft_type": "LORA", "r": 4, "target_modules": sorted(modules)}
    assert written == json.dumps(json.loads(written), indent=2, sort_keys=True) + "\n"
    assert (tmp_path / "adapter" / "adapter_model.safetensors").read_bytes() == b"weights"
