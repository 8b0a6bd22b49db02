"""Tiny random models of every family the recipes name, built locally from transformers' own config classes.

`source: tiny:<family>` (prepare_model) builds one: a few layers and a small hidden size, but the traits that
set the family apart, so a test meets what a real checkpoint of that family does:

| source | class (as saved) | kept from the family |
| --- | --- | --- |
| tiny:deberta-v2 | DebertaV2ForMaskedLM | disentangled relative attention (c2p + p2c, log buckets, shared keys, no absolute positions), token types (pairs get type 1), [CLS] x [SEP]; no sdpa kernel |
| tiny:modernbert | ModernBertForMaskedLM | alternating global / local (sliding-window) attention layers, RoPE, [CLS] x [SEP], no token types |
| tiny:llama | LlamaForCausalLM | the demo's tiny Llama (a `<pad>` token, no chat template), unchanged |
| tiny:mistral | MistralForCausalLM | sliding-window attention, no pad token (as Mistral's tokenizer), an [INST] chat template |
| tiny:qwen2 | Qwen2ForCausalLM | q/k/v biases, tied embeddings, no BOS, `<|endoftext|>` pad, a ChatML chat template |
| tiny:qwen3 | Qwen3ForCausalLM | q/k RMS norms, an explicit head_dim, ChatML with `<think>` tokens |
| tiny:gemma2 | Gemma2ForCausalLM | attention and final logit soft-capping, alternating sliding / global layers, query_pre_attn_scalar, tied scaled embeddings; no sdpa kernel |
| tiny:gemma3 | Gemma3ForCausalLM (Gemma3TextConfig, `gemma3_text`) | q/k norms, local / global layers with two RoPE bases, a `<start_of_turn>` chat template |

Each tokenizer is a byte-level BPE trained on the given texts (the demo's or the task's) with the family's
special tokens; same seed and texts -> byte-identical files. Nothing is downloaded.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

# The family matrix's sources, one per family the recipes name (tests/test_family_matrix.py runs each).
TINY_FAMILIES = ("deberta-v2", "modernbert", "llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3")
TINY_SOURCES = tuple(f"tiny:{family}" for family in TINY_FAMILIES)
# config.json's model_type of each family's tiny model (what transformers' Auto classes dispatch on)
MODEL_TYPES = {"deberta-v2": "deberta-v2", "modernbert": "modernbert", "llama": "llama", "mistral": "mistral",
               "qwen2": "qwen2", "qwen3": "qwen3", "gemma2": "gemma2", "gemma3": "gemma3_text"}
ENCODER_FAMILIES = ("deberta-v2", "modernbert")
DECODER_FAMILIES = tuple(family for family in TINY_FAMILIES if family not in ENCODER_FAMILIES)

TINY_VOCAB_SIZE = 1000
MAX_POSITIONS = 512
# a window shorter than the tests' rows (max_length 32-64), so local attention really masks something
LOCAL_WINDOW = 16
DECODER_SIZE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=MAX_POSITIONS)

_MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "[INST] {{ message['content'] }} [/INST]{% elif message['role'] == 'assistant' %}"
    "{{ message['content'] }}{{ eos_token }}{% endif %}{% endfor %}")
_CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
_GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<start_of_turn>"
    "{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n{{ message['content'] }}<end_of_turn>\n"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")

# Per family: special tokens (in id order), which of them are bos/eos/pad/cls/sep/mask/unk, the post-processor
# template, and the chat template. pad None: the tokenizer has none (modeling.load_tokenizer pads with eos).
TOKENIZERS: dict[str, dict[str, Any]] = {
    "deberta-v2": dict(special=["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"], pad="[PAD]", cls="[CLS]", sep="[SEP]",
                       unk="[UNK]", mask="[MASK]", bos="[CLS]", eos="[SEP]", single="[CLS] $A [SEP]",
                       pair="[CLS] $A [SEP] $B:1 [SEP]:1", token_types=True),
    "modernbert": dict(special=["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"], pad="[PAD]", cls="[CLS]", sep="[SEP]",
                       unk="[UNK]", mask="[MASK]", single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
                       token_types=False),
    "mistral": dict(special=["<unk>", "<s>", "</s>", "[INST]", "[/INST]"], unk="<unk>", bos="<s>", eos="</s>",
                    pad=None, single="<s> $A", pair="<s> $A <s> $B", chat_template=_MISTRAL_TEMPLATE),
    "qwen2": dict(special=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], eos="<|im_end|>", pad="<|endoftext|>",
                  single=None, chat_template=_CHATML_TEMPLATE),
    "qwen3": dict(special=["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"], eos="<|im_end|>",
                  pad="<|endoftext|>", single=None, chat_template=_CHATML_TEMPLATE),
    "gemma2": dict(special=["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"], pad="<pad>",
                   eos="<eos>", bos="<bos>", unk="<unk>", single="<bos> $A", pair="<bos> $A <bos> $B",
                   chat_template=_GEMMA_TEMPLATE),
}
TOKENIZERS["gemma3"] = TOKENIZERS["gemma2"]


def _log(message: str) -> None:
    print(f"[prepare_model] {message}", flush=True)


def family_tokenizer(texts: Sequence[str], family: str, vocab_size: int = TINY_VOCAB_SIZE):
    """A byte-level BPE trained on `texts` with the family's special tokens and templates (transformers fast)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    spec = TOKENIZERS[family]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=spec["special"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(list(texts), trainer)
    if spec.get("single"):
        used = [token for token in spec["special"] if token in spec["single"] or token in spec.get("pair", "")]
        tokenizer.post_processor = processors.TemplateProcessing(
            single=spec["single"], pair=spec.get("pair"),
            special_tokens=[(token, tokenizer.token_to_id(token)) for token in used])
    names = {f"{role}_token": spec[role] for role in ("bos", "eos", "pad", "unk", "cls", "sep", "mask")
             if spec.get(role)}
    extra: dict[str, Any] = {"model_input_names": ["input_ids", "token_type_ids", "attention_mask"]
                             if spec.get("token_types") else ["input_ids", "attention_mask"]}
    if spec.get("chat_template"):
        extra["chat_template"] = spec["chat_template"]
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, padding_side="right", model_max_length=MAX_POSITIONS,
                                   **names, **extra)


def _special_ids(tokenizer) -> dict[str, int | None]:
    return {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id}


def family_model(family: str, tokenizer):
    """The family's randomly initialised model (as its checkpoints are saved) for `tokenizer`'s vocabulary."""
    import transformers as tf

    vocab = dict(vocab_size=len(tokenizer))
    ids = _special_ids(tokenizer)
    if family == "deberta-v2":
        # DeBERTa-v3's attention: relative positions only, content<->position both ways, log buckets
        config = tf.DebertaV2Config(
            **vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=MAX_POSITIONS, relative_attention=True, pos_att_type=["p2c", "c2p"],
            position_biased_input=False, max_relative_positions=-1, position_buckets=32, norm_rel_ebd="layer_norm",
            share_att_key=True, type_vocab_size=2, pad_token_id=tokenizer.pad_token_id)
        return tf.DebertaV2ForMaskedLM(config)
    if family == "modernbert":
        config = tf.ModernBertConfig(
            **vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
            max_position_embeddings=MAX_POSITIONS, global_attn_every_n_layers=2, local_attention=LOCAL_WINDOW,
            pad_token_id=tokenizer.pad_token_id, cls_token_id=tokenizer.cls_token_id,
            sep_token_id=tokenizer.sep_token_id, bos_token_id=tokenizer.cls_token_id,
            eos_token_id=tokenizer.sep_token_id)
        return tf.ModernBertForMaskedLM(config)
    if family == "mistral":
        config = tf.MistralConfig(**vocab, **DECODER_SIZE, **ids, sliding_window=LOCAL_WINDOW, tie_word_embeddings=False)
        return tf.MistralForCausalLM(config)
    if family == "qwen2":
        config = tf.Qwen2Config(**vocab, **DECODER_SIZE, **ids, tie_word_embeddings=True)
        return tf.Qwen2ForCausalLM(config)
    if family == "qwen3":
        config = tf.Qwen3Config(**vocab, **DECODER_SIZE, **ids, head_dim=32, tie_word_embeddings=True)
        return tf.Qwen3ForCausalLM(config)
    if family == "gemma2":
        config = tf.Gemma2Config(**vocab, **DECODER_SIZE, **ids, head_dim=16, query_pre_attn_scalar=16,
                                 sliding_window=LOCAL_WINDOW, attn_logit_softcapping=50.0, final_logit_softcapping=30.0)
        return tf.Gemma2ForCausalLM(config)
    if family == "gemma3":
        config = tf.Gemma3TextConfig(**vocab, **DECODER_SIZE, **ids, head_dim=16, query_pre_attn_scalar=16,
                                     sliding_window=LOCAL_WINDOW, layer_types=["sliding_attention", "full_attention"])
        return tf.Gemma3ForCausalLM(config)
    raise ValueError(f"no tiny model for family {family!r}")


def build_tiny_family(family: str, out_dir: Path, seed: int, texts: Sequence[str]) -> None:
    """Write a tiny `family` model and its tokenizer (trained on `texts`) into `out_dir`."""
    import torch

    _log(f"training a {TINY_VOCAB_SIZE}-token BPE tokenizer ({family}) on {len(texts)} texts")
    tokenizer = family_tokenizer(texts, family)
    torch.manual_seed(seed)
    model = family_model(family, tokenizer)
    _log(f"tiny {family}: {type(model).__name__}, {sum(p.numel() for p in model.parameters()):,} parameters, "
         f"seed {seed}")
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
