"""Fine-tune an embedder or a reranker with FlagEmbedding 1.4's entry points, run as a subprocess.

Output folder (written atomically, so it exists only when training finished):
- `merged/`   the model to load for inference (always present; safetensors + tokenizer);
- `adapter/`  the LoRA adapter (LoRA runs only);
- `settings.json` the settings and the exact FlagEmbedding command line;
- `checkpoints.json` (`select_checkpoint: best` or `K` only) every epoch's validation score and the chosen
  epoch (best), or the fixed epoch K and its learning rate (K); that epoch's model is the one in `merged/`
  (retrieval/checkpoints.py).
Training data is rewritten first: a row's `prompt` field overrides the trainer's instruction in
FlagEmbedding, so it is set to `--prompt` when given and removed otherwise (mined.jsonl feeds both the
embedder, where `prompt` is the query instruction, and the reranker, where it is the yes/no question).
"""
from __future__ import annotations

import argparse
import json
import os
import runpy
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence

from workflow_scripts.errors import OoflineError, run_cli
from workflow_scripts.execution.device import DEVICES, PRECISIONS, resolve_device, resolve_precision
from workflow_scripts.execution.warm_start import interpreter
from workflow_scripts.io import atomic_path
from workflow_scripts.retrieval.checkpoints import (
    EpochCheckpoint, ValidationScorer, checkpoint_problem, choose_checkpoint, epoch_checkpoints, fixed_epoch,
    fixed_epoch_record, merge_lora_checkpoint, parse_select_checkpoint,
)

ENTRY_POINTS = {
    ("embedder", "encoder-only-base"): "FlagEmbedding.finetune.embedder.encoder_only.base",
    ("embedder", "decoder-only-base"): "FlagEmbedding.finetune.embedder.decoder_only.base",
    ("embedder", "decoder-only-icl"): "FlagEmbedding.finetune.embedder.decoder_only.icl",
    ("reranker", "encoder-only-base"): "FlagEmbedding.finetune.reranker.encoder_only.base",
    ("reranker", "decoder-only-base"): "FlagEmbedding.finetune.reranker.decoder_only.base",
}
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PICKLED_SUFFIXES = (".bin", ".pt", ".pth", ".pkl")
# HF TrainingArguments' mixed-precision flags for a resolved precision (fp32: none).
TRAINING_PRECISION_ARGUMENTS = {"bf16": ["--bf16", "True"], "fp16": ["--fp16", "True"], "fp32": []}


@dataclass(frozen=True)
class FinetuneSettings:
    kind: str  # embedder | reranker
    model_class: str  # encoder-only-base | decoder-only-base | decoder-only-icl (embedder only)
    base_model: str
    epochs: float = 1.0
    learning_rate: float = 1e-5
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    train_group_size: int = 8
    query_max_len: int = 128
    passage_max_len: int = 256
    max_len: int = 512  # reranker: query + passage
    warmup: float = 0.1  # transformers 5: a float below 1 in --warmup_steps is a ratio
    seed: int = 0
    knowledge_distillation: bool = False
    label_smoothing: float = 0.0  # reranker only; FlagEmbedding has none, oofline patches its loss
    lora: bool = False
    lora_rank: int = 8
    lora_alpha: float = 32.0
    lora_dropout: float = 0.05
    lora_target_modules: tuple[str, ...] = DEFAULT_LORA_TARGETS
    pooling_method: str = "mean"  # embedder
    temperature: float = 0.02  # embedder
    query_instruction: str = ""
    query_instruction_format: str = "{}{}"
    passage_instruction: str = ""
    passage_instruction_format: str = "{}{}"
    prompt: str = ""  # written into every training row's `prompt` when set
    icl_examples: bool = False  # decoder-only-icl: add in-context examples to queries
    icl_suffix: str = "\n<response>"
    device: str = "auto"  # auto (the job's GPU when it has one) | cpu | cuda
    precision: str = "auto"  # auto | bf16 | fp16 | fp32: HF TrainingArguments --bf16 / --fp16
    extra_args: tuple[str, ...] = field(default_factory=tuple)  # passed through verbatim (an escape hatch)
    # last: the final model (one save); best: one checkpoint per epoch, the best on the valid fold;
    # K (int): epoch K of the `epochs` schedule, fixed beforehand (training stops after it)
    select_checkpoint: str | int = "last"

    def validate(self) -> None:
        if (self.kind, self.model_class) not in ENTRY_POINTS:
            allowed = sorted(f"{k}/{c}" for k, c in ENTRY_POINTS)
            raise OoflineError(f"fine-tune kind/model_class {self.kind}/{self.model_class} is not one of {allowed}")
        if self.lora and self.model_class.startswith("encoder"):
            raise OoflineError("lora: FlagEmbedding's encoder-only runners have no LoRA (use a decoder-only model_class)")
        if self.label_smoothing and self.kind != "reranker":
            raise OoflineError("label_smoothing applies to rerankers only")
        if not 0 <= self.label_smoothing < 1:
            raise OoflineError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.train_group_size < 2:
            raise OoflineError(f"train_group_size must be at least 2 (one positive + negatives), got {self.train_group_size}")
        for key in ("epochs", "learning_rate", "batch_size"):
            if getattr(self, key) <= 0:
                raise OoflineError(f"{key} must be positive, got {getattr(self, key)}")
        if self.device not in DEVICES:
            raise OoflineError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.precision not in PRECISIONS:
            raise OoflineError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        problem = checkpoint_problem(self.select_checkpoint, self.epochs)
        if problem:
            raise OoflineError(problem)

    @property
    def saves_epoch_checkpoints(self) -> bool:
        """best and K keep a checkpoint per epoch (weights only) and lay out one of them after training."""
        return self.select_checkpoint != "last"

    def resolved(self) -> "FinetuneSettings":
        """These settings with `device` and `precision` resolved for this job (cpu/cuda, fp32/bf16/fp16)."""
        device = resolve_device(self.device)
        return replace(self, device=device.type, precision=resolve_precision(self.precision, device))


def _flag(value: bool) -> str:
    return "True" if value else "False"


def flagembedding_arguments(settings: FinetuneSettings, train_data: str | Path, output_dir: str | Path) -> list[str]:
    """The argument list for FlagEmbedding's runner (transformers 5 spellings: no overwrite/ratio/no_cuda)."""
    s = settings.resolved()
    args = [
        "--model_name_or_path", s.base_model,
        "--train_data", str(train_data),
        "--output_dir", str(output_dir),
        "--num_train_epochs", str(s.epochs),
        "--per_device_train_batch_size", str(s.batch_size),
        "--gradient_accumulation_steps", str(s.gradient_accumulation_steps),
        "--learning_rate", str(s.learning_rate),
        "--warmup_steps", str(s.warmup),
        "--train_group_size", str(s.train_group_size),
        "--query_max_len", str(s.query_max_len),
        "--passage_max_len", str(s.passage_max_len),
        "--knowledge_distillation", _flag(s.knowledge_distillation),
        "--seed", str(s.seed),
        "--data_seed", str(s.seed),
        "--logging_steps", "1",
        # best / K: a checkpoint per epoch, weights only (no optimizer/scheduler/RNG pickles)
        *(["--save_strategy", "epoch", "--save_only_model", "True"] if s.saves_epoch_checkpoints
          else ["--save_strategy", "no"]),
        "--report_to", "none",
        "--dataloader_num_workers", "0",
        "--disable_tqdm", "True",
    ]
    if s.device == "cpu":
        args += ["--use_cpu", "True"]
    args += TRAINING_PRECISION_ARGUMENTS[s.precision]
    if s.kind == "embedder":
        args += [
            "--sentence_pooling_method", s.pooling_method,
            "--normalize_embeddings", "True",
            "--temperature", str(s.temperature),
            "--query_instruction_format", s.query_instruction_format.replace("\\n", "\n"),
        ]
        if s.query_instruction:
            args += ["--query_instruction_for_retrieval", s.query_instruction]
        if s.passage_instruction:
            args += ["--passage_instruction_for_retrieval", s.passage_instruction,
                     "--passage_instruction_format", s.passage_instruction_format.replace("\\n", "\n")]
        if s.model_class == "decoder-only-icl":
            # the ICL runner needs every batch from one dataset; the suffix is not unescaped by FlagEmbedding
            args += ["--same_dataset_within_batch", "True",
                     "--retrieval_use_examples", _flag(s.icl_examples),
                     "--icl_suffix_str", s.icl_suffix.replace("\\n", "\n")]
    else:
        args += [
            "--max_len", str(s.max_len),
            "--query_instruction_format", s.query_instruction_format.replace("\\n", "\n"),
            "--passage_instruction_format", s.passage_instruction_format.replace("\\n", "\n"),
            "--model_type", "decoder" if s.model_class.startswith("decoder") else "encoder",
        ]
        if s.query_instruction:
            args += ["--query_instruction_for_rerank", s.query_instruction]
        if s.passage_instruction:
            args += ["--passage_instruction_for_rerank", s.passage_instruction]
    if s.lora:
        args += [
            "--use_lora", "True",
            "--lora_rank", str(s.lora_rank),
            "--lora_alpha", str(s.lora_alpha),
            "--lora_dropout", str(s.lora_dropout),
            "--target_modules", *s.lora_target_modules,
            # best / K: the kept epoch's checkpoint is merged after training instead (checkpoints.merge_lora_checkpoint)
            "--save_merged_lora_model", _flag(not s.saves_epoch_checkpoints),
        ]
    elif s.model_class.startswith("decoder"):
        args += ["--use_lora", "False"]
    return args + list(s.extra_args)


def command_line(settings: FinetuneSettings, train_data: str | Path, output_dir: str | Path,
                 processes: int = 1) -> list[str]:
    """argv of the training subprocess (never a shell string); `processes` > 1 runs it under torchrun, one
    process per GPU of the job (the per-device batch is `batch_size`, so the total is batch_size x processes)."""
    module = ENTRY_POINTS[(settings.kind, settings.model_class)]
    arguments = flagembedding_arguments(settings, train_data, output_dir)
    # one process: the warm-start client where warm start is on (execution/warm_start.py), else this interpreter
    launcher = [interpreter(), "-m"]
    if processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
                    "-m"]
    patches = []
    if settings.label_smoothing:
        # FlagEmbedding's reranker loss has no smoothing: oofline's launcher patches it
        patches += ["--launch-label-smoothing", str(settings.label_smoothing)]
    if fixed_epoch(settings.select_checkpoint) is not None:
        # keep the schedule of every epoch but stop after the kept one: the later epochs would be thrown away
        patches += ["--launch-stop-after-epoch", str(fixed_epoch(settings.select_checkpoint))]
    if patches:
        # run FlagEmbedding's entry point in oofline's patching launcher
        return [*launcher, "workflow_scripts.retrieval.finetune", "--launch", module, *patches, "--", *arguments]
    return [*launcher, module, *arguments]


def prepare_training_data(source: str | Path, target: Path, settings: FinetuneSettings) -> int:
    """Copy rows with `prompt` set/removed; check the fields FlagEmbedding needs. Returns the row count."""
    source = Path(source)
    if not source.exists():
        raise OoflineError(f"training data not found: {source}")
    rows = 0
    with open(source, encoding="utf-8") as reader, open(target, "w", encoding="utf-8") as writer:
        for number, line in enumerate(reader, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise OoflineError(f"{source}, line {number}: not valid JSON ({error})") from None
            for key in ("query", "pos", "neg"):
                if key not in row:
                    raise OoflineError(f"{source}, line {number}: field {key!r} is missing (expected query, pos, neg)")
            if not row["neg"]:
                raise OoflineError(f"{source}, line {number}: field 'neg' is empty")
            if settings.knowledge_distillation:
                for key, texts in (("pos_scores", "pos"), ("neg_scores", "neg")):
                    if len(row.get(key) or []) != len(row[texts]):
                        raise OoflineError(
                            f"{source}, line {number}: knowledge_distillation needs {key!r} with one score per "
                            f"{texts!r} entry (run teacher_scores first)"
                        )
            row.pop("prompt", None)
            if settings.prompt:
                row["prompt"] = settings.prompt.replace("\\n", "\n")
            writer.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
            rows += 1
    if rows == 0:
        raise OoflineError(f"{source}: no training rows")
    return rows


def reranker_head(settings: FinetuneSettings) -> str | None:
    """Where an encoder reranker's score head starts: kept from a cross-encoder base (a one-label
    sequence-classification model, e.g. bge-reranker), else new and random on top of the encoder (a sentence
    encoder such as MiniLM: a short fine-tune may leave it near random). None for embedders and decoder
    rerankers (they score with the language-model head's yes/no logits)."""
    if settings.kind != "reranker" or settings.model_class.startswith("decoder"):
        return None
    config_path = Path(settings.base_model) / "config.json"
    if not config_path.exists():
        return "as the hub model's config says (not a local folder)"
    config = json.loads(config_path.read_text())
    architectures = config.get("architectures") or []
    labels = len(config.get("id2label") or {}) or config.get("num_labels", 2)
    if any(name.endswith("ForSequenceClassification") for name in architectures) and labels == 1:
        return "kept from the base (a cross-encoder: one-label sequence-classification head)"
    return (f"new, random (the base, {', '.join(architectures) or config.get('model_type')}, has no one-label "
            "sequence-classification head)")


def _move_model_files(source: Path, target: Path) -> None:
    """Move a saved model (not checkpoints, not pickles) from source to target."""
    target.mkdir(parents=True, exist_ok=True)
    for item in sorted(source.iterdir()):
        if (item.name.startswith("checkpoint-") or item.name in ("merged_model", "runs", "trainer_state.json")
                or item.suffix in PICKLED_SUFFIXES):
            continue
        shutil.move(str(item), target / item.name)


def finetune(settings: FinetuneSettings, train_data: str | Path, output_dir: str | Path, processes: int = 1,
             scorer: ValidationScorer | None = None, valid_fold: int | None = None) -> Path:
    """Train (under torchrun when `processes` > 1), then lay out `merged/` (+ `adapter/` for LoRA) and
    settings.json in output_dir. With select_checkpoint best, `scorer` scores each epoch's checkpoint on the
    valid fold and the best one is laid out (+ checkpoints.json)."""
    if processes < 1:
        raise OoflineError(f"--processes must be >= 1; got {processes}")
    settings.validate()
    if (settings.select_checkpoint == "best") != (scorer is not None):
        raise OoflineError("select_checkpoint: best needs the valid fold to score checkpoints on (--validation ...), "
                           "and only best uses it")
    settings = settings.resolved()
    print(f"fine-tuning on {settings.device} in {settings.precision}", flush=True)
    from workflow_scripts.retrieval.models import resolve_model

    settings = replace(settings, base_model=resolve_model(settings.base_model, "base"))
    head = reranker_head(settings)
    if head:
        print(f"reranker score head: {head}", flush=True)
    with atomic_path(output_dir) as tmp:
        work = tmp / "work"
        work.mkdir(parents=True)
        data = work / "train.jsonl"
        n_rows = prepare_training_data(train_data, data, settings)
        run_dir = work / "run"
        argv = command_line(settings, data, run_dir, processes)
        print(f"fine-tuning {settings.kind} ({settings.model_class}) on {n_rows} rows: {' '.join(argv[:4])} ...", flush=True)
        env = dict(os.environ, TOKENIZERS_PARALLELISM="false", WANDB_DISABLED="true")
        if settings.device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""
        result = subprocess.run(argv, env=env, stdout=sys.stdout, stderr=sys.stderr, check=False)
        if result.returncode != 0:
            raise OoflineError(f"FlagEmbedding {settings.kind} fine-tune exited with code {result.returncode} (see the log above)")
        if settings.saves_epoch_checkpoints:
            record = lay_out_epoch_checkpoint(settings, run_dir, tmp, scorer, valid_fold)
            (tmp / "checkpoints.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        elif settings.lora:
            if not (run_dir / "merged_model").exists():
                raise OoflineError(f"LoRA fine-tune finished without {run_dir / 'merged_model'}")
            _move_model_files(run_dir / "merged_model", tmp / "merged")
            _move_adapter(run_dir, tmp / "adapter")
        else:
            _move_model_files(run_dir, tmp / "merged")
        if not list((tmp / "merged").glob("*.safetensors")):
            raise OoflineError(f"fine-tune wrote no safetensors weights into {run_dir}")
        payload = {"settings": asdict(settings), "command": [Path(argv[0]).name, *argv[1:]], "rows": n_rows,
                   "reranker_head": head}
        payload["command"] = [str(part).replace(str(tmp), "<output>") for part in payload["command"]]
        (tmp / "settings.json").write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
        shutil.rmtree(work)
    print(f"fine-tune done -> {output_dir}/merged", flush=True)
    return Path(output_dir)


def lay_out_epoch_checkpoint(settings: FinetuneSettings, run_dir: Path, target: Path,
                             scorer: ValidationScorer | None, valid_fold: int | None) -> dict:
    """best: score each epoch's checkpoint; K: take epoch K's. Move that model to target/merged (+ adapter/) and
    return the record (checkpoints.json)."""
    kept = fixed_epoch(settings.select_checkpoint)
    checkpoints = epoch_checkpoints(run_dir)
    expected = kept if kept is not None else int(settings.epochs)  # K stops after epoch K
    if [c.epoch for c in checkpoints] != list(range(1, expected + 1)):
        raise OoflineError(f"select_checkpoint: {settings.select_checkpoint}: expected checkpoints of epochs 1 to "
                           f"{expected} in {run_dir}, found {[c.path.name for c in checkpoints]}")
    if (run_dir / "embedding").exists():
        # FlagEmbedding trained new token embeddings (extra special tokens): its checkpoints do not hold them
        raise OoflineError(f"select_checkpoint: {settings.select_checkpoint} cannot merge checkpoints of a run that "
                           f"trains token embeddings ({run_dir / 'embedding'}); use select_checkpoint: last")
    entry_point = ENTRY_POINTS[(settings.kind, settings.model_class)]

    def model_of(checkpoint: EpochCheckpoint) -> Path:
        for item in checkpoint.path.iterdir():  # the trainer pickles its arguments; nothing reads them
            if item.suffix in PICKLED_SUFFIXES:
                item.unlink()
        if settings.lora:
            return merge_lora_checkpoint(entry_point, settings.base_model, checkpoint.path)
        return checkpoint.path

    if kept is None:
        chosen, record = choose_checkpoint(checkpoints, model_of, scorer, scorer.metric, valid_fold, scorer.scored_by)
    else:
        chosen = checkpoints[kept - 1]
        record = fixed_epoch_record(checkpoints, kept, int(settings.epochs))
        model_of(chosen)
        print(f"kept epoch {kept} of {int(settings.epochs)} (fixed in the config; learning rate at its end "
              f"{record['chosen_learning_rate']})", flush=True)
    if settings.lora:
        _move_model_files(chosen.path / "merged_model", target / "merged")
        _move_adapter(chosen.path, target / "adapter")
    else:
        _move_model_files(chosen.path, target / "merged")
    return record


def _move_adapter(run_dir: Path, target: Path) -> None:
    """The LoRA adapter's files into target, its adapter_config.json written in a fixed order (peft writes
    target_modules from a set: a rebuild in another process would differ byte-wise)."""
    from workflow_scripts.modeling import normalise_adapter_config

    _move_model_files(run_dir, target)
    normalise_adapter_config(target / "adapter_config.json")


def patch_label_smoothing(smoothing: float) -> None:
    """FlagEmbedding's reranker loss becomes a label-smoothed cross-entropy."""
    import torch.nn as nn
    from FlagEmbedding.abc.finetune.reranker import AbsRerankerModel

    original_init = AbsRerankerModel.__init__

    def init_with_smoothing(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.cross_entropy = nn.CrossEntropyLoss(reduction="mean", label_smoothing=smoothing)

    AbsRerankerModel.__init__ = init_with_smoothing


def stop_after_epoch_callback(epoch: int):
    """A TrainerCallback that ends training at the end of `epoch` (after that epoch's checkpoint is saved: the
    trainer saves after on_epoch_end), leaving the learning-rate schedule of every configured epoch untouched."""
    from transformers import TrainerCallback

    class StopAfterEpoch(TrainerCallback):
        def on_epoch_end(self, args, state, control, **kwargs):
            if state.epoch is not None and round(state.epoch) >= epoch:
                control.should_training_stop = True
            return control

    return StopAfterEpoch()


def patch_stop_after_epoch(epoch: int) -> None:
    """Every transformers Trainer (FlagEmbedding's subclass them) gets stop_after_epoch_callback(epoch)."""
    import functools

    from transformers import Trainer

    original_init = Trainer.__init__

    @functools.wraps(original_init)  # FlagEmbedding inspects the signature (processing_class or tokenizer)
    def init_with_stop(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.add_callback(stop_after_epoch_callback(epoch))

    Trainer.__init__ = init_with_stop


def launch(argv: Sequence[str]) -> None:
    """`--launch MODULE [--launch-label-smoothing E] [--launch-stop-after-epoch K] -- ARGS`: run a FlagEmbedding
    entry point in this process with oofline's patches."""
    split = list(argv).index("--")
    parser = argparse.ArgumentParser(prog="finetune --launch")
    parser.add_argument("--launch", required=True)
    parser.add_argument("--launch-label-smoothing", type=float, default=0.0)
    parser.add_argument("--launch-stop-after-epoch", type=int, default=None)
    options = parser.parse_args(argv[:split])
    if options.launch_label_smoothing:
        patch_label_smoothing(options.launch_label_smoothing)
    if options.launch_stop_after_epoch is not None:
        patch_stop_after_epoch(options.launch_stop_after_epoch)
    sys.argv = [options.launch, *argv[split + 1:]]
    runpy.run_module(options.launch, run_name="__main__", alter_sys=True)


def _bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--launch"]:  # internal: the patching launcher
        launch(argv)
        return
    # everything after --validation describes the valid fold that select_checkpoint best scores on
    validation = argv[argv.index("--validation") + 1:] if "--validation" in argv else None
    argv = argv[:argv.index("--validation")] if validation is not None else argv
    parser = argparse.ArgumentParser(description="Fine-tune an embedder or reranker with FlagEmbedding.")
    parser.add_argument("--kind", required=True, choices=["embedder", "reranker"])
    parser.add_argument("--model-class", required=True, choices=sorted({c for _, c in ENTRY_POINTS}))
    parser.add_argument("--base-model", required=True, help="local model folder")
    parser.add_argument("--train-data", required=True, help="mined.jsonl or scored.jsonl")
    parser.add_argument("--output-dir", required=True)
    defaults = FinetuneSettings("embedder", "encoder-only-base", "")
    for name in ("epochs", "learning_rate", "warmup", "lora_alpha", "lora_dropout", "temperature", "label_smoothing"):
        parser.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(defaults, name))
    for name in ("batch_size", "gradient_accumulation_steps", "train_group_size", "query_max_len", "passage_max_len",
                 "max_len", "seed", "lora_rank"):
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(defaults, name))
    for name in ("knowledge_distillation", "lora", "icl_examples"):
        parser.add_argument("--" + name.replace("_", "-"), type=_bool, default=getattr(defaults, name))
    for name in ("pooling_method", "query_instruction", "query_instruction_format", "passage_instruction",
                 "passage_instruction_format", "prompt", "icl_suffix", "device", "precision"):
        parser.add_argument("--" + name.replace("_", "-"), default=getattr(defaults, name))
    parser.add_argument("--select-checkpoint", type=parse_select_checkpoint, default=defaults.select_checkpoint,
                        help="last, best (scored on --validation's fold) or K: keep epoch K")
    parser.add_argument("--lora-target-modules", nargs="+", default=list(DEFAULT_LORA_TARGETS))
    parser.add_argument("--processes", type=int, default=1, help="GPUs of the job: > 1 trains under torchrun")
    args = parser.parse_args(argv)
    values = vars(args)
    train_data, output_dir = values.pop("train_data"), values.pop("output_dir")
    processes = values.pop("processes")
    values["lora_target_modules"] = tuple(values["lora_target_modules"])
    settings = FinetuneSettings(**values)
    settings.validate()
    # read the valid fold before training, so a bad input fails now rather than after hours of it
    scorer = ValidationScorer(settings.kind, validation) if validation is not None else None
    finetune(settings, train_data, output_dir, processes, scorer, scorer.args.valid_fold if scorer else None)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
