"""The GPU check (run it through bench/gpu_check.sh): a real Snakemake run of bench/gpu.yaml, then its facts.

1. Writes a synthetic 3-class text task (no downloads; word lists made here) and builds two random models
   locally: a Llama of realistic width and a BERT-style encoder, with a BPE tokenizer trained on the task.
2. Runs the workflow end to end (folds -> QLoRA / full fine-tunes -> merged adapters -> OOF -> ensemble ->
   submission) with `python -m snakemake`.
3. Checks every fold's training.json: it ran on the asked device in the configured precision.
4. Times a plain peft + bitsandbytes loop on the same QLoRA model and fold-0 batches, and prints oofline's
   training tokens/s against it and the peak GPU memory. Writes <out>/gpu_check.json.
5. In the same Snakemake run, one fold of a tiny model of every family the recipes name (workflow_scripts.
   tiny_models, built here as `source: tiny:<family>` builds them: DeBERTa-v2 and ModernBERT full fine-tunes,
   Llama, Mistral, Qwen2, Qwen3, Gemma-2 and Gemma-3 QLoRA 4-bit), all in bf16, with flash_attention_2 where
   flash_attn is installed and the family has it, else the kernel transformers chooses (sdpa, or eager for
   DeBERTa and Gemma-2); each fold's training.json must name the device, the precision and that kernel, and its
   OOF rows must sum to 1.

Exit 0 when the workflow finished and every check held; 1 otherwise (one line per failed check).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# Model widths per device: on a GPU, throughput only means something at a realistic width.
SIZES = {
    "cuda": {
        "llama": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=16, num_attention_heads=16,
                      num_key_value_heads=4),
        "bert": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
        "vocab": 8000, "n_train": 4000, "n_test": 1000, "words": (40, 190),
    },
    "cpu": {
        "llama": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2),
        "bert": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
        "vocab": 600, "n_train": 80, "n_test": 20, "words": (8, 30),
    },
}
CLASSES = ("fresh", "rotten", "plot")
QLORA_MODEL = "llama_qlora"
# The submission pulls in folds, both models' fold fine-tunes, OOF, test predictions and the ensemble; the
# merged adapters exercise merging on the device. Plots and the leaderboard are left out (no device facts).
TARGETS = ["results/submissions/pair_top3/submission.csv", "results/models/llama_qlora/fold0/merged",
           "results/models/llama_qlora/fold1/merged"]


FAMILY_PREFIX = "family_"


def family_model_name(family: str) -> str:
    return FAMILY_PREFIX + family.replace("-", "")


def log(message: str) -> None:
    print(f"[gpu_check] {message}", flush=True)


def synthetic_task(data_dir: Path, n_train: int, n_test: int, words: tuple[int, int], seed: int = 0) -> list[str]:
    """train/test/sample_submission CSVs: each class's rows lean on its own words; returns every text."""
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(seed)
    syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "qui", "dor", "len", "mar", "sto"]
    vocabulary = sorted({"".join(rng.choice(syllables, size=rng.integers(1, 4))) for _ in range(3000)})
    cue_words = {c: list(rng.choice(vocabulary, size=30, replace=False)) for c in CLASSES}

    def rows(n: int, prefix: str):
        labels = rng.choice(CLASSES, size=n)
        texts = []
        for label in labels:
            length = int(rng.integers(*words))
            picked = rng.choice(vocabulary, size=length)
            cues = rng.random(length) < 0.15
            picked[cues] = rng.choice(cue_words[label], size=int(cues.sum()))
            texts.append(" ".join(picked))
        return pl.DataFrame({"id": [f"{prefix}{i}" for i in range(n)], "text": texts, "category": list(labels)})

    data_dir.mkdir(parents=True, exist_ok=True)
    train, test = rows(n_train, "r"), rows(n_test, "t")
    train.write_csv(data_dir / "train.csv")
    test.drop("category").write_csv(data_dir / "test.csv")
    test.select("id").with_columns(pl.lit(CLASSES[0]).alias("category")).write_csv(data_dir / "sample_submission.csv")
    return train["text"].to_list() + test["text"].to_list()


def build_models(models_dir: Path, texts: list[str], sizes: dict, seed: int = 0) -> dict[str, int]:
    """A random Llama and a random BERT-style encoder sharing a BPE tokenizer trained on `texts`; bf16 weights."""
    import torch
    from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

    from workflow_scripts.prepare_model import train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer(texts, vocab_size=sizes["vocab"])
    tokenizer.model_max_length = 512
    special = dict(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                   eos_token_id=tokenizer.eos_token_id)
    configs = {
        "llama": (LlamaForCausalLM, LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=512,
                                                tie_word_embeddings=False, **special, **sizes["llama"])),
        "bert": (BertModel, BertConfig(vocab_size=len(tokenizer), max_position_embeddings=512,
                                                           pad_token_id=tokenizer.pad_token_id, **sizes["bert"])),
    }
    parameters = {}
    for name, (model_class, config) in configs.items():
        folder = models_dir / name
        if (folder / "config.json").exists():  # a rerun in the same folder keeps Snakemake's outputs valid
            parameters[name] = json.loads((folder / "parameters.json").read_text())["parameters"]
            continue
        torch.manual_seed(seed)
        model = model_class(config).to(torch.bfloat16)  # bf16 on disk: the check trains in bf16
        parameters[name] = sum(p.numel() for p in model.parameters())
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        (folder / "parameters.json").write_text(json.dumps({"parameters": parameters[name]}))
        log(f"built {name}: {parameters[name] / 1e6:.1f}M parameters")
    return parameters


def build_family_models(models_dir: Path, corpus: Path, seed: int = 0) -> None:
    """A tiny model of every family in models/tiny-<family>/, built as `source: tiny:<family>` builds it
    (prepare_model.materialise), its tokenizer trained on the task's training text."""
    from workflow_scripts.prepare_model import materialise
    from workflow_scripts.tiny_models import TINY_FAMILIES

    for family in TINY_FAMILIES:
        folder = models_dir / f"tiny-{family}"
        if not (folder / "config.json").exists():  # a rerun keeps the folder, so Snakemake's outputs stay valid
            materialise(f"tiny:{family}", folder, seed=seed, corpus=corpus)


def expected_attention(family: str, device: str) -> tuple[str | None, str]:
    """(the attn_implementation to configure, the kernel training.json must name) for a family on `device`:
    flash_attention_2 where flash_attn is installed on a GPU and the family has it; else the key is left out
    and transformers picks sdpa, or eager where the family has no sdpa (DeBERTa-v2, Gemma-2)."""
    import importlib.util

    from workflow_scripts.modeling import supported_attn_implementations
    from workflow_scripts.tiny_models import MODEL_TYPES

    supported = supported_attn_implementations(MODEL_TYPES[family])
    if device == "cuda" and importlib.util.find_spec("flash_attn") and "flash_attention_2" in supported:
        return "flash_attention_2", "flash_attention_2"
    return None, "sdpa" if "sdpa" in supported else "eager"


def family_config(work: Path, device: str) -> Path:
    """families.yaml: one fold of each tiny family in bf16 (encoders fully fine-tuned, decoders QLoRA 4-bit)."""
    import yaml

    from workflow_scripts.tiny_models import ENCODER_FAMILIES, TINY_FAMILIES

    resources = {"gpu": 1, "mem_mb": 16000, "runtime": 30} if device == "cuda" else {"gpu": 0, "threads": 1}
    models = {}
    for family in TINY_FAMILIES:
        entry = {"source": f"models/tiny-{family}", "folds": [0], "batch_size": 16 if device == "cuda" else 8,
                 "resources": dict(resources)}
        if family in ENCODER_FAMILIES:
            entry.update(kind="encoder_full", lr=1e-4)
        else:
            entry.update(kind="decoder_lora", quantization="4bit", r=8, alpha=16, lr=1e-3)
        kernel, _ = expected_attention(family, device)
        if kernel:
            entry["attn_implementation"] = kernel
        models[family_model_name(family)] = entry
    path = work / "families.yaml"
    path.write_text(yaml.safe_dump({"models": models}, sort_keys=True))
    return path


def family_reports(results: Path, folds: list[dict], device: str) -> tuple[list[dict], list[str]]:
    """One row per family (its fold-0 facts) and the problems found: a missing fold, the wrong kernel, OOF
    probabilities that do not sum to 1."""
    import numpy as np
    import polars as pl

    from workflow_scripts.tiny_models import TINY_FAMILIES

    rows, problems = [], []
    by_model = {row["model"]: row for row in folds if row["fold"] == "fold0"}
    for family in TINY_FAMILIES:
        name = family_model_name(family)
        _, kernel = expected_attention(family, device)
        row = by_model.get(name)
        if row is None:
            problems.append(f"{name}: no fold0 training.json")
            continue
        rows.append({"family": family, **row})
        if row["attn_implementation"] != kernel:
            problems.append(f"{name}: trained with attention {row['attn_implementation']}, not {kernel}")
        oof_path = results / "oof" / f"{name}.parquet"
        if not oof_path.exists():
            problems.append(f"{name}: no OOF file")
            continue
        oof = pl.read_parquet(oof_path)
        sums = oof.select(list(CLASSES)).sum_horizontal().to_numpy()
        if not len(sums) or not np.allclose(sums, 1.0, atol=1e-4):
            problems.append(f"{name}: OOF rows do not sum to 1 ({len(sums)} rows)")
    return rows, problems


def run_workflow(work: Path, configfiles: list[Path], device: str, cores: int, targets: list[str]) -> float:
    """`snakemake` over the whole config in `work`; returns its wall time in seconds."""
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(work),
               "--cores", str(cores), "--resources", f"gpu={1 if device == 'cuda' else 0}",
               "--configfile", *map(str, configfiles), "--scheduler", "greedy", *targets]
    log("running: " + " ".join(command[1:]))
    started = time.time()
    result = subprocess.run(command, cwd=work, stdout=sys.stdout, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        logs = sorted((work / "results" / "logs").rglob("*.log")) if (work / "results" / "logs").exists() else []
        for path in logs[-3:]:
            print(f"--- {path}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-25:]), flush=True)
        raise SystemExit(f"gpu_check: the workflow failed (exit {result.returncode}); logs under {work}/results/logs")
    return time.time() - started


def fold_reports(results: Path) -> list[dict]:
    """One row per trained fold: model, fold, training.json's device facts, tokens/s from .training_speed.json."""
    rows = []
    for training in sorted(results.glob("models/*/fold*/*/training.json")):
        summary = json.loads(training.read_text())["summary"]
        speed_file = training.parent / ".training_speed.json"
        speed = json.loads(speed_file.read_text()) if speed_file.exists() else {}
        rows.append({"model": training.parts[-4], "fold": training.parts[-3], **{
            key: summary.get(key) for key in ("device", "gpu_name", "precision", "peak_gpu_memory_mb", "world_size",
                                              "steps", "attn_implementation")},
                     "train_tokens_per_s": speed.get("train_tokens_per_s")})
    return rows


def plain_peft_loop(work: Path, model_config: dict, device: str, fold: int = 0) -> dict:
    """tokens/s and peak memory of a plain peft + bitsandbytes QLoRA loop on fold `fold`'s training rows,
    in oofline's batches (same tokenizer, max_length, length grouping, batch size, precision)."""
    import numpy as np
    import polars as pl
    import torch
    from peft import LoraConfig, TaskType, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, BitsAndBytesConfig

    from workflow_scripts.batching import length_grouped_batches, pad_batch

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[model_config["precision"]]
    folder = work / model_config["source"]
    train = pl.read_csv(work / "data" / "train.csv")
    folds = pl.read_parquet(work / "results" / "folds.parquet")
    rows = train.join(folds, on="id").filter(pl.col("fold") != fold)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    token_ids = tokenizer(["Review: " + text for text in rows["text"]], truncation=True,
                          max_length=model_config["max_length"])["input_ids"]
    targets = torch.tensor([CLASSES.index(c) for c in rows["category"]])
    lengths = np.array([len(ids) for ids in token_ids])
    batches = length_grouped_batches(lengths, model_config["batch_size"], seed=0)
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=dtype)
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=len(CLASSES), dtype=dtype,
                                                               quantization_config=quantization,
                                                               device_map={"": device})
    model.config.pad_token_id = tokenizer.pad_token_id
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=model_config["gradient_checkpointing"])
    model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=model_config["r"],
                                             lora_alpha=model_config["alpha"], lora_dropout=0.05,
                                             target_modules="all-linear"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=model_config["lr"])
    on_gpu = device == "cuda"
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    model.train()
    started, tokens = time.time(), 0
    for batch_rows in batches:
        batch = {name: tensor.to(device) for name, tensor in pad_batch(token_ids, batch_rows, tokenizer.pad_token_id).items()}
        with torch.autocast(device_type=device, dtype=dtype, enabled=dtype != torch.float32):
            logits = model(**batch).logits
        loss = torch.nn.functional.cross_entropy(logits.float(), targets[batch_rows].to(device))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += int(lengths[batch_rows].sum())
    if on_gpu:
        torch.cuda.synchronize()
    seconds = time.time() - started
    peak = round(torch.cuda.max_memory_allocated() / 2**20, 1) if on_gpu else None
    return {"fold": f"fold{fold}", "tokens": tokens, "seconds": round(seconds, 2),
            "train_tokens_per_s": round(tokens / max(seconds, 1e-9), 1), "peak_gpu_memory_mb": peak}


def resolved_model_config(configfiles: list[Path], model: str, work: Path) -> dict:
    """The model's settings as the workflow in `work` sees them: config files merged, defaults filled."""
    import yaml

    from workflow_scripts.config_check import check_config

    merged: dict = {}
    for path in configfiles:
        _deep_update(merged, yaml.safe_load(path.read_text()))
    return check_config(merged, work)["models"][model]


def _deep_update(target: dict, update: dict) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _deep_update(target[key], value)
        else:
            target[key] = value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=sorted(SIZES), default="cuda")
    parser.add_argument("--out", type=Path, default=None, help="run folder (default bench/out/gpu-check-DEVICE)")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: --device cuda but torch sees no GPU (torch "
                         f"{torch.__version__}, CUDA build {torch.version.cuda}); use --device cpu to test the script")
    started = time.time()
    work = (args.out or REPO / "bench" / "out" / f"gpu-check-{args.device}").resolve()
    work.mkdir(parents=True, exist_ok=True)
    sizes = SIZES[args.device]
    texts = synthetic_task(work / "data", sizes["n_train"], sizes["n_test"], sizes["words"])
    parameters = build_models(work / "models", texts, sizes)
    build_family_models(work / "models", work / "data" / "train.csv")
    configfiles = [REPO / "bench" / "gpu.yaml"] + ([REPO / "bench" / "gpu-cpu.yaml"] if args.device == "cpu" else [])
    configfiles.append(family_config(work, args.device))
    from workflow_scripts.tiny_models import TINY_FAMILIES

    targets = TARGETS + [f"results/oof/{family_model_name(family)}.parquet" for family in TINY_FAMILIES]
    workflow_seconds = run_workflow(work, configfiles, args.device, args.cores, targets)

    problems = []
    results = work / "results"
    folds = fold_reports(results)
    expected = {(model, f"fold{k}") for model in ("llama_qlora", "bert_full") for k in (0, 1)}
    expected |= {(family_model_name(family), "fold0") for family in TINY_FAMILIES}
    missing = expected - {(row["model"], row["fold"]) for row in folds}
    if missing:
        problems.append(f"no training.json for {sorted(missing)}")
    for row in folds:
        precision = resolved_model_config(configfiles, row["model"], work)["precision"]
        if not str(row["device"]).startswith(args.device):
            problems.append(f"{row['model']} {row['fold']} ran on {row['device']}, not {args.device}")
        if row["precision"] != precision:
            problems.append(f"{row['model']} {row['fold']} trained in {row['precision']}, not {precision}")
    families, family_problems = family_reports(results, folds, args.device)
    problems += family_problems
    submission = results / "submissions" / "pair_top3" / "submission.csv"
    if not submission.exists():
        problems.append(f"no submission at {submission}")
    for model in ("llama_qlora", "bert_full"):
        if not (results / "oof" / f"{model}.parquet").exists():
            problems.append(f"no OOF for {model}")

    qlora = resolved_model_config(configfiles, QLORA_MODEL, work)
    baseline = plain_peft_loop(work, qlora, args.device)
    oofline_rate = next((row["train_tokens_per_s"] for row in folds
                         if row["model"] == QLORA_MODEL and row["fold"] == baseline["fold"]), None)
    ratio = round(oofline_rate / baseline["train_tokens_per_s"], 3) if oofline_rate else None

    print("\nmodel              fold   device  gpu                    precision  attention          tokens/s   peak MiB",
          flush=True)
    for row in folds:
        print(f"{row['model']:<18} {row['fold']:<6} {row['device']:<7} {str(row['gpu_name'] or '-')[:22]:<22} "
              f"{row['precision']:<10} {str(row['attn_implementation']):<18} {row['train_tokens_per_s'] or '-':<10} "
              f"{row['peak_gpu_memory_mb'] or '-'}")
    print(f"families: {len(families)} of {len(TINY_FAMILIES)} trained one fold and predicted "
          f"({', '.join(row['family'] for row in families)})")
    print(f"plain peft+bitsandbytes loop, {QLORA_MODEL} {baseline['fold']}: {baseline['train_tokens_per_s']} tokens/s, "
          f"peak {baseline['peak_gpu_memory_mb'] or '-'} MiB")
    goal = "meets" if ratio is not None and ratio >= 1.0 else "BELOW"
    print(f"oofline / plain loop training tokens/s: {ratio}x ({goal} the 1.0x goal)")
    summary = {
        "device": args.device, "gpu_name": torch.cuda.get_device_name() if args.device == "cuda" else None,
        "torch": torch.__version__, "parameters": parameters, "workflow_seconds": round(workflow_seconds, 1),
        "total_seconds": round(time.time() - started, 1), "folds": folds, "families": families,
        "plain_peft_loop": baseline,
        "oofline_over_plain_tokens_per_s": ratio, "problems": problems,
    }
    (work / "gpu_check.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"workflow {summary['workflow_seconds']} s, total {summary['total_seconds']} s; summary: {work / 'gpu_check.json'}")
    for problem in problems:
        print(f"gpu_check: FAILED: {problem}", flush=True)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
