"""Model construction: the one place that builds tokenizers and sequence-classification models.

Kinds: `encoder_full` (every weight trains), `encoder_lora`, `decoder_lora` (LoRA with task type
SEQ_CLS, so the fresh classification head trains in full through `modules_to_save`).
Quantization: `none`, `4bit` (bitsandbytes nf4 + double quant, compute in `dtype`), `8bit`
(LLM.int8). Both work on the CPU with bitsandbytes 0.50, so QLoRA is tested here, not only on GPUs.

Merging: an adapter trained on a quantized base is merged into the *dequantised* base (the weights
the adapter was trained against), not into the original full-precision weights, so the merged model
reproduces the adapter model's logits; merging into the original weights would shift them by the
quantization error the adapter learned to compensate.

CLI (merge one adapter): python -m workflow_scripts.modeling --base DIR --adapter DIR --out DIR
  --num-labels N [--quantization none|4bit|8bit] [--dtype float32] [--trust-remote-code]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Sequence

from workflow_scripts.errors import OoflineError, run_cli
from workflow_scripts.io import atomic_path

KINDS = ("encoder_full", "encoder_lora", "decoder_lora")
QUANTIZATIONS = ("none", "4bit", "8bit")
DTYPES = ("float32", "bfloat16", "float16")
# Config keys of a model's `lora:` block -> peft.LoraConfig arguments.
LORA_KEYS = {"r": "r", "alpha": "lora_alpha", "dropout": "lora_dropout",
             "target_modules": "target_modules", "bias": "bias"}
LORA_DEFAULTS = {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": "all-linear", "bias": "none"}


def resolve_model_path(path: str | Path) -> tuple[str, str | None]:
    """(name_or_path, revision) for from_pretrained; follows a prepare_model `source.json` pointer."""
    path = Path(path)
    pointer = path / "source.json"
    if pointer.exists() and not (path / "config.json").exists():
        spec = json.loads(pointer.read_text())
        if spec.get("kind") == "local":
            return resolve_model_path(spec["location"])
        return spec["location"], spec.get("revision")
    if path.is_dir():
        # adapter folders hold adapter_config.json and the tokenizer, but no config.json
        if not any((path / name).exists() for name in ("config.json", "adapter_config.json", "tokenizer_config.json")):
            raise OoflineError(f"model folder {path} has no config.json (expected a Hugging Face model folder)")
        return str(path), None
    if str(path).startswith(("/", ".")) or path.parent.is_dir() and str(path.parent) != ".":
        raise OoflineError(f"model path {path} does not exist")
    return str(path), None  # a hub id, resolved by transformers


def torch_dtype(dtype: Any):
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise OoflineError(f"dtype {dtype!r} is not supported (expected one of {', '.join(DTYPES)})")
    return getattr(torch, dtype)


def load_tokenizer(path: str | Path, trust_remote_code: bool = False):
    """Tokenizer with a pad token (decoders reuse eos) and right padding.

    Right padding keeps the real tokens' positions fixed, so a row's logits do not depend on how
    long its batch-mates are; decoder classification reads the last non-pad token either way.
    """
    from transformers import AutoTokenizer

    name, revision = resolve_model_path(path)
    tokenizer = AutoTokenizer.from_pretrained(name, revision=revision, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise OoflineError(f"tokenizer of {path} has no pad, eos or unk token to pad with")
        tokenizer.pad_token = fallback
    tokenizer.padding_side = "right"
    return tokenizer


def _quantization_config(quantization: str, dtype):
    import torch
    from transformers import BitsAndBytesConfig

    if quantization == "none":
        return None
    if quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                  bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype)
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise OoflineError(f"quantization {quantization!r} is not supported (expected one of {', '.join(QUANTIZATIONS)})")


def lora_config(lora: dict | None):
    """peft.LoraConfig (task SEQ_CLS) from a config `lora:` block; unknown keys are an error."""
    from peft import LoraConfig, TaskType

    lora = dict(lora or {})
    unknown = sorted(set(lora) - set(LORA_KEYS))
    if unknown:
        raise OoflineError(f"lora.{unknown[0]} is not a LoRA setting (expected {', '.join(LORA_KEYS)})")
    settings = {**LORA_DEFAULTS, **lora}
    if not isinstance(settings["r"], int) or settings["r"] <= 0:
        raise OoflineError(f"lora.r must be a positive integer, got {settings['r']!r}")
    target = settings["target_modules"]
    if isinstance(target, (list, tuple)):
        target = list(target)
    return LoraConfig(task_type=TaskType.SEQ_CLS, **{LORA_KEYS[key]: value for key, value in settings.items()
                                                     if key != "target_modules"}, target_modules=target)


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


ATTN_IMPLEMENTATIONS = ("sdpa", "flash_attention_2", "eager")


def check_attn_implementation(attn_implementation: str | None) -> None:
    """One clear error for an unknown kernel, or flash_attention_2 without the flash_attn package."""
    if attn_implementation is None:
        return
    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise OoflineError(f"attn_implementation {attn_implementation!r} is not one of {', '.join(ATTN_IMPLEMENTATIONS)}")
    if attn_implementation == "flash_attention_2":
        import importlib.util

        if importlib.util.find_spec("flash_attn") is None:
            raise OoflineError("attn_implementation 'flash_attention_2' needs the flash_attn package, which is not "
                               "installed here (pip install flash-attn on a CUDA host, or use 'sdpa')")


def supported_attn_implementations(model_type: str) -> tuple[str, ...] | None:
    """The kernels a family's sequence classifier can run (`eager` always), from the class's own flags;
    None when transformers has no sequence classifier for `model_type`."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

    class_name = MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES.get(model_type)
    model_class = getattr(transformers, class_name, None) if class_name else None
    if model_class is None:
        return None
    flags = {"sdpa": "_supports_sdpa", "flash_attention_2": "_supports_flash_attn"}
    return tuple(kernel for kernel in ATTN_IMPLEMENTATIONS
                 if kernel == "eager" or getattr(model_class, flags[kernel], False))


def model_input_device(model):
    """The device the model's inputs must be on: where its input embeddings live (the first device of a
    model split by device_map); sees through a DistributedDataParallel wrapper."""
    while not hasattr(model, "get_input_embeddings") and hasattr(model, "module"):
        model = model.module
    return model.get_input_embeddings().weight.device


def enable_gradient_checkpointing(model) -> None:
    # non-reentrant checkpointing needs no input that requires grad and works under DDP and autocast
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 (the old name is deprecated)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _disable_cpu_packed_4bit(model) -> None:
    """Keep bitsandbytes' exact fp32 4-bit path on CPUs with AVX512-BF16.

    bitsandbytes 0.50 repacks Linear4bit weights in place on the first eval forward under no_grad
    and then runs a bf16 kernel through which no gradient flows: LoRA layers before the last
    silently stop learning once training resumes after an evaluation (and eval logits drift ~1e-3).
    """
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def load_base_classifier(path: str | Path, num_labels: int, quantization: str = "none",
                         trust_remote_code: bool = False, dtype: Any = "float32",
                         problem_type: str | None = None, device: Any = None, attn_implementation: str | None = None):
    """AutoModelForSequenceClassification with `num_labels` outputs, pad_token_id set, optionally quantized.

    `dtype` is the weights' dtype and the 4-bit compute dtype; `device` is where the model is put
    (on a GPU every model is loaded there directly, without a copy in host RAM)."""
    from transformers import AutoModelForSequenceClassification

    if not isinstance(num_labels, int) or num_labels < 1:
        raise OoflineError(f"num_labels must be a positive integer, got {num_labels!r}")
    compute_dtype = torch_dtype(dtype)
    quantization_config = _quantization_config(quantization, compute_dtype)
    name, revision = resolve_model_path(path)
    kwargs: dict[str, Any] = dict(num_labels=num_labels, revision=revision, dtype=compute_dtype,
                                  trust_remote_code=trust_remote_code)
    if problem_type is not None:
        kwargs["problem_type"] = problem_type
    check_attn_implementation(attn_implementation)
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
        kwargs["device_map"] = {"": str(device) if device is not None else _default_device()}
    elif device is not None and str(device) != "cpu":
        # Stream the weights straight onto the GPU: no full copy of a large model in host RAM.
        kwargs["device_map"] = {"": str(device)}
    model = AutoModelForSequenceClassification.from_pretrained(name, **kwargs)
    if quantization == "4bit":
        _disable_cpu_packed_4bit(model)
    if model.config.pad_token_id is None:
        # Decoders classify from the last non-pad token, so they need to know which id pads.
        model.config.pad_token_id = load_tokenizer(path, trust_remote_code).pad_token_id
    if quantization_config is None and device is not None and str(device) == "cpu":
        model = model.to(device)
    return model


def load_classifier(path: str | Path, num_labels: int, kind: str, quantization: str = "none",
                    lora: dict | None = None, trust_remote_code: bool = False, dtype: Any = "float32",
                    problem_type: str | None = None, gradient_checkpointing: bool = False,
                    seed: int | None = None, device: Any = None, attn_implementation: str | None = None):
    """A trainable sequence classifier; `*_lora` kinds return a peft model whose LoRA and head train.

    `lora`: {r, alpha, dropout, target_modules, bias} (defaults r=8, alpha=16, dropout=0.05,
    target_modules="all-linear"). `seed` seeds the fresh head's initialisation. `dtype` is the frozen
    base's dtype for LoRA kinds; weights that train are kept in float32 (optimizer updates in bf16
    lose small steps), so mixed precision comes from autocast, not from the weights.
    """
    if kind not in KINDS:
        raise OoflineError(f"model kind {kind!r} is not supported (expected one of {', '.join(KINDS)})")
    if quantization not in QUANTIZATIONS:
        raise OoflineError(f"quantization {quantization!r} is not supported (expected one of {', '.join(QUANTIZATIONS)})")
    if kind == "encoder_full" and quantization != "none":
        raise OoflineError(f"kind 'encoder_full' trains every weight, so quantization must be 'none', got {quantization!r}")
    if kind == "encoder_full" and lora:
        raise OoflineError("kind 'encoder_full' takes no lora settings (use kind 'encoder_lora')")
    peft_config = lora_config(lora) if kind != "encoder_full" else None
    import torch

    if seed is not None:
        torch.manual_seed(seed)
    # every weight of a full fine-tune trains: float32 master weights whatever the compute precision
    base_dtype = "float32" if kind == "encoder_full" else dtype
    model = load_base_classifier(path, num_labels, quantization, trust_remote_code, base_dtype, problem_type, device,
                                 attn_implementation)
    if kind == "encoder_full":
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        if gradient_checkpointing:
            enable_gradient_checkpointing(model)
        return model
    from peft import get_peft_model, prepare_model_for_kbit_training

    if quantization != "none":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    elif gradient_checkpointing:
        enable_gradient_checkpointing(model)
    model = get_peft_model(model, peft_config)
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()
    return model


SAFETENSORS_ITEM_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                          "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def weights_bytes(path: str | Path, dtype: Any) -> int | None:
    """Bytes a model's floating-point weights take in `dtype` (integer tensors as stored), read from its
    safetensors headers without loading a tensor; None when the folder has no safetensors (or is a hub id)."""
    import struct

    import torch

    location, revision = resolve_model_path(path)
    if not Path(location).is_dir():
        try:  # a hub id: its snapshot in the local cache, when there is one
            from huggingface_hub import snapshot_download

            location = snapshot_download(location, revision=revision, local_files_only=True)
        except Exception:  # the hub raises several types for a missing snapshot
            return None
    files = sorted(Path(location).glob("*.safetensors"))
    if not files:
        return None
    item_bytes = torch.empty((), dtype=torch_dtype(dtype)).element_size()
    total = 0
    for file in files:
        with open(file, "rb") as handle:
            header = json.loads(handle.read(struct.unpack("<Q", handle.read(8))[0]))
        for name, tensor in header.items():
            if name == "__metadata__":
                continue
            count = 1
            for extent in tensor["shape"]:
                count *= extent
            floating = tensor["dtype"].startswith(("F", "BF"))
            total += count * (item_bytes if floating else SAFETENSORS_ITEM_BYTES.get(tensor["dtype"], 1))
    return total


def merge_adapter(base_path: str | Path, adapter_dir: str | Path, out_dir: str | Path, num_labels: int,
                  quantization: str = "none", trust_remote_code: bool = False, dtype: Any = "float32",
                  problem_type: str | None = None, device: str = "cpu") -> Path:
    """Merge a LoRA adapter into its base and save safetensors + tokenizer to `out_dir` (atomically).

    `quantization` is the one the adapter was trained with: the base is loaded that way and
    dequantised before merging, so merged logits match the adapter model's. The base is loaded
    directly in `dtype` on `device` (the job's GPU when the base fits its free memory in `dtype`, else
    the CPU: `execution.device.merge_placement`), so a 14B bf16 merge never holds an fp32 copy (56 GB)
    in host RAM; the merged weights are saved in `dtype`.
    """
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").exists():
        raise OoflineError(f"adapter folder {adapter_dir} has no adapter_config.json")
    print(f"[merge] loading base {base_path} ({quantization})", flush=True)
    model = load_base_classifier(base_path, num_labels, quantization, trust_remote_code, dtype, problem_type,
                                 device=str(device))
    model = merge_into_loaded_base(model, adapter_dir, quantization, dtype)
    has_tokenizer = (adapter_dir / "tokenizer_config.json").exists()
    tokenizer = load_tokenizer(adapter_dir if has_tokenizer else base_path, trust_remote_code)
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    print(f"[merge] wrote {out_dir}", flush=True)
    return out_dir


def merge_into_loaded_base(model, adapter_dir: str | Path, quantization: str, dtype: Any):
    """`model` (the base, loaded as the adapter was trained: quantized or not, on the job's device) with the adapter
    merged in, dequantised first (see the module docstring), in `dtype`; any model class (classifier, causal LM)."""
    from peft import PeftModel

    if quantization != "none":
        model = model.dequantize()
    # the adapter's weights go where the base is (peft would put them on a visible GPU, even for a host merge)
    model = PeftModel.from_pretrained(model, adapter_dir, torch_device=str(model.device)).merge_and_unload()
    model = model.to(torch_dtype(dtype))
    for attribute in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(model.config, attribute):
            delattr(model.config, attribute)
    return model


def normalise_adapter_config(path: Path) -> None:
    """peft writes `target_modules` from a set, so its order changes with the process's hash seed;
    sort it (and the keys) so a rebuilt adapter is byte-identical."""
    if not path.exists():
        return
    adapter_config = json.loads(path.read_text())
    for key, value in adapter_config.items():
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            adapter_config[key] = sorted(value)
    path.write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Merge a LoRA adapter into its base model (safetensors).")
    parser.add_argument("--base", required=True, help="base model folder (prepare_model output) or hub id")
    parser.add_argument("--adapter", required=True, help="adapter folder (adapter_config.json)")
    parser.add_argument("--out", required=True, help="output folder for the merged model")
    parser.add_argument("--num-labels", type=int, required=True, help="number of classifier outputs")
    parser.add_argument("--quantization", default="none", choices=QUANTIZATIONS,
                        help="quantization the adapter was trained with")
    parser.add_argument("--dtype", default="float32", choices=DTYPES)
    parser.add_argument("--problem-type", default=None,
                        choices=["single_label_classification", "multi_label_classification", "regression"])
    parser.add_argument("--trust-remote-code", action="store_true")
    args = parser.parse_args(argv)
    merge_adapter(args.base, args.adapter, args.out, args.num_labels, quantization=args.quantization,
                  trust_remote_code=args.trust_remote_code, dtype=args.dtype, problem_type=args.problem_type)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
