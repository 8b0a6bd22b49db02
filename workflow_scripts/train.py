"""Fine-tune one model on one fold (or on all rows): LoRA / QLoRA adapters or full fine-tunes.

Work in progress (checkpoints) lives in --work-dir; --out is written only when training finished, so a
killed run resumes from its last checkpoint on rerun and never leaves a half-written output.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import polars as pl

from workflow_scripts.errors import OoflineError
from workflow_scripts.io import atomic_path, read_table, write_json, write_parquet
from workflow_scripts.labels import LabelSpec
from workflow_scripts.model_spec import OFFICIAL, TRAIN, ModelSpec, StageSpec
from workflow_scripts.predict import prediction_frame


def effective_batching(model_spec: ModelSpec, out_of_memory_retries: int) -> tuple[int, int]:
    """Micro-batch and gradient accumulation after that many out-of-memory failures: each halves the
    micro-batch and doubles accumulation."""
    from workflow_scripts.execution.oom import retry_plan

    plan = retry_plan(1 + out_of_memory_retries, model_spec.batch_size, model_spec.grad_accum, 1)
    return plan.micro_batch_size, plan.grad_accum_steps


# The attempts that ran out of memory, kept beside the checkpoint until training finishes: each one halves
# the micro-batch of every later attempt (in this or a later Snakemake run); a retry after anything else
# (scancel, preemption, a host OOM-kill, which mem_mb growth answers) keeps the micro-batch.
OOM_RECORD = "out_of_memory.json"
# wall-time figures of a finished run (tokens/s), beside training.json; a dot-file, so manifests skip it
TRAINING_SPEED = ".training_speed.json"


def recorded_out_of_memory(work_dir: str | Path, key: str) -> list[int]:
    """Attempts recorded as out of memory for this configuration (`key`); none for another one."""
    path = Path(work_dir) / OOM_RECORD
    if not path.exists():
        return []
    record = json.loads(path.read_text())
    return list(record["attempts"]) if record.get("key") == key else []


def record_out_of_memory(work_dir: str | Path, key: str, attempt: int) -> None:
    # every rank of a multi-process run records the same attempt: count it once
    attempts = sorted({*recorded_out_of_memory(work_dir, key), attempt})
    Path(work_dir).mkdir(parents=True, exist_ok=True)
    write_json({"key": key, "attempts": attempts}, Path(work_dir) / OOM_RECORD)


# Attempts that failed on bad input (an OoflineError), beside the OOM record: the rule's mem_mb does not grow
# for them, so a typo or a missing model is not resubmitted with ever more memory.
USER_ERROR_RECORD = "user_errors.json"


def record_user_error(work_dir: str | Path, attempt: int) -> None:
    path = Path(work_dir) / USER_ERROR_RECORD
    attempts = json.loads(path.read_text())["attempts"] if path.exists() else []
    Path(work_dir).mkdir(parents=True, exist_ok=True)
    write_json({"attempts": sorted({*attempts, attempt})}, path)


def training_rows(folds: pl.DataFrame, fold: str) -> set[str]:
    """The ids a model trains on: every row for `full`, else the rows outside fold `k` (an outer fold model) or
    outside folds `k+j...` (an inner teacher model, generated/teacher_labels.py)."""
    if fold == "full":
        return set(folds["id"].to_list())
    have = set(folds["fold"].to_list())
    parts = fold.split("+")
    if not all(part.isdigit() for part in parts) or not {int(part) for part in parts} <= have:
        raise OoflineError(f"fold {fold!r} is not in the folds file (have {sorted(have)})")
    rows = set(folds.filter(~pl.col("fold").is_in([int(part) for part in parts]))["id"].to_list())
    if not rows:
        raise OoflineError(f"fold {fold!r}: holding out these folds leaves no rows to train on")
    return rows


# select_epoch: best. The best epoch's trainable weights and the latest epoch's held-out predictions wait in the
# work folder (so a resumed run keeps them); the output gets the chosen weights and the last epoch's predictions,
# whose score is the plain (not optimistic) CV of the fold.
BEST_EPOCH_WEIGHTS = "best_epoch.safetensors"
LATEST_EPOCH_VALID = "latest_epoch_valid.parquet"
LAST_EPOCH_VALID = "last_epoch_valid.parquet"


@dataclass(frozen=True)
class HeldOut:
    """The held-out fold a `select_epoch: best` model is scored on after every epoch.

    targets: (n_rows, n_columns) in the label spec's column order, from the file OOF scoring reads."""

    ids: list[Any]  # as the training file types them, like predict's held-out predictions
    texts: list[str]
    targets: np.ndarray
    fold: int
    metric: str


def held_out_fold(train: pl.DataFrame, targets: pl.DataFrame, folds: pl.DataFrame, fold: str, spec: LabelSpec,
                  metric: str) -> HeldOut:
    """The rows of fold `fold` (a number: the full-data model has no held-out rows to pick an epoch on).

    train: the official training rows (not a corrected file, whose `action: drop` removed rows): the fold is
    scored on every row predict and oof score it on."""
    if not fold.isdigit():
        raise OoflineError(f"select_epoch: best needs a held-out fold; fold {fold!r} has none "
                           "(train the full-data model with select_epoch: last)")
    # the same rows, in the same order, as predict's held-out predictions
    held_out_ids = set(folds.filter(pl.col("fold") == int(fold))["id"].to_list())
    rows = train.filter(pl.col("id").is_in(list(held_out_ids)))
    if rows.height == 0:
        raise OoflineError(f"fold {fold} has no rows to pick an epoch on")
    keyed = targets.with_columns(pl.col("id").cast(pl.String).alias("_key"))
    aligned = rows.select(pl.col("id").cast(pl.String).alias("_key")).join(keyed, on="_key", how="left",
                                                                             maintain_order="left")
    values = aligned.select(spec.probability_columns).to_numpy().astype(np.float32)
    if np.isnan(values).any():
        raise OoflineError(f"held-out targets: {int(np.isnan(values).any(axis=1).sum())} rows of fold {fold} have none")
    return HeldOut(rows["id"].to_list(), rows["text"].to_list(), values, int(fold), metric)


def chosen_epoch(history: list[dict[str, Any]], metric: str) -> int:
    """The epoch whose held-out score is best in the metric's direction; ties go to the earliest, NaN never wins.

    history: one {"epoch": n, "score": value, ...} per evaluated epoch, in training order."""
    from workflow_scripts.metrics import best_index, metric_direction

    if not history:
        raise OoflineError("select_epoch: best: no epoch was scored on the held-out fold")
    best = best_index([entry["score"] for entry in history], metric_direction(metric))
    return int(history[best or 0]["epoch"])  # every score NaN: the first epoch, as before any comparison


def held_out_score(model, tokenizer, held_out: HeldOut, spec: LabelSpec, model_spec: ModelSpec,
                   precision: str) -> tuple[float, np.ndarray]:
    """The task metric on the held-out fold and its probabilities (n_rows, n_columns): the same prediction
    and scoring code as predict and oof, so the chosen epoch's score is what its OOF predictions score."""
    from workflow_scripts.metrics import task_scores
    from workflow_scripts.predict import predict_probabilities

    probabilities = predict_probabilities(model, tokenizer, held_out.texts, spec, model_spec.max_length,
                                          model_spec.prediction_batch_size, label="held-out", precision=precision)
    model.train()
    return float(task_scores(spec, probabilities, held_out.targets, held_out.metric)["score"]), probabilities


def trainable_weights(model) -> dict[str, Any]:
    """The weights that train (LoRA and head, or every weight of a full fine-tune), as CPU tensors by name."""
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


def save_trainable(model, path: Path) -> None:
    from safetensors.torch import save_file

    with atomic_path(path, durable=True) as tmp:
        save_file(trainable_weights(model), str(tmp))


def load_weights(model, weights: dict[str, Any]) -> None:
    """Copy saved tensors into the model's parameters of the same names."""
    import torch

    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in weights.items():
            parameters[name].copy_(tensor)


def config_fingerprint(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


class Checkpointer:
    """Save and restore trainable weights, optimizer state, RNG and position as safetensors + json."""

    def __init__(self, work_dir: Path, fingerprint: str):
        self.directory = work_dir / "checkpoint"
        self.fingerprint = fingerprint

    def load(self, model, optimizer) -> dict[str, Any] | None:
        import torch
        from safetensors.torch import load_file

        state_path = self.directory / "state.json"
        if not state_path.exists():
            return None
        state = json.loads(state_path.read_text())
        if state.get("fingerprint") != self.fingerprint:
            print("checkpoint is from a different configuration: starting fresh", flush=True)
            shutil.rmtree(self.directory, ignore_errors=True)
            return None
        load_weights(model, load_file(str(self.directory / "trainable.safetensors")))
        optimizer_tensors = load_file(str(self.directory / "optimizer.safetensors"))
        optimizer_state = {"state": {}, "param_groups": state["param_groups"]}
        for key, tensor in optimizer_tensors.items():
            index, field = key.split(".", 1)
            optimizer_state["state"].setdefault(int(index), {})[field] = tensor
        optimizer.load_state_dict(optimizer_state)
        rng = load_file(str(self.directory / "rng.safetensors"))
        torch.set_rng_state(rng["torch"])
        cuda_states = [rng[f"cuda.{i}"] for i in range(len(rng) - 1)]
        if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        return state

    def save(self, model, optimizer, position: dict[str, Any]) -> None:
        import torch
        from safetensors.torch import save_file

        with atomic_path(self.directory, durable=True) as tmp:
            tmp.mkdir()
            save_file(trainable_weights(model), str(tmp / "trainable.safetensors"))
            optimizer_state = optimizer.state_dict()
            tensors = {
                f"{index}.{field}": value.contiguous().cpu() if torch.is_tensor(value) else torch.tensor(value)
                for index, fields in optimizer_state["state"].items() for field, value in fields.items()
            }
            save_file(tensors, str(tmp / "optimizer.safetensors"))
            rng = {"torch": torch.get_rng_state()}
            if torch.cuda.is_available():  # dropout on the GPU draws from the CUDA generators
                rng.update({f"cuda.{i}": state for i, state in enumerate(torch.cuda.get_rng_state_all())})
            save_file(rng, str(tmp / "rng.safetensors"))
            state = dict(position, fingerprint=self.fingerprint, param_groups=optimizer_state["param_groups"])
            (tmp / "state.json").write_text(json.dumps(state, sort_keys=True))


def lr_factor(step: int, total_steps: int, warmup_steps: int, scheduler: str) -> float:
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if scheduler == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    if scheduler == "linear":
        return max(0.0, 1 - progress)
    return 1.0


def micro_batch_loss(model, inputs: dict[str, Any], targets, spec: LabelSpec, label_smoothing: float):
    """The loss of one micro-batch: inputs and targets are moved to wherever the model's inputs live
    (pad_batch builds them on the CPU), the forward runs there, the loss is taken in float32."""
    from workflow_scripts.losses import combined_loss
    from workflow_scripts.modeling import model_input_device

    device = model_input_device(model)
    inputs = {name: tensor.to(device, non_blocking=True) for name, tensor in inputs.items()}
    logits = model(**inputs).logits
    return combined_loss(logits.float(), targets.to(logits.device), spec, label_smoothing)


def training_accelerator(model_spec: ModelSpec):
    """accelerate.Accelerator for this process (its rank's device, the resolved precision) and that precision.

    Under torchrun (WORLD_SIZE > 1) it joins the process group: NCCL on GPUs, gloo on the CPU.
    """
    from workflow_scripts.execution.device import process_accelerator, resolve_device, resolve_precision

    device = resolve_device("auto")
    precision = resolve_precision(model_spec.precision, device)
    accelerator = process_accelerator(precision, device)
    return accelerator, precision


def rank_share(step_rows: np.ndarray, rank: int, world_size: int) -> tuple[np.ndarray, float]:
    """This rank's rows of an optimizer step and the weight of its loss sum.

    DDP averages gradients over ranks, so each rank's row-weighted loss is scaled by world_size: the
    step's gradient is the mean over all its rows, as in one process. A rank left without rows (a
    short last batch) runs one row at weight 0 so that it still joins the gradient all-reduce.
    """
    shares = np.array_split(step_rows, world_size)
    rows = shares[rank]
    if len(rows) == 0:
        return step_rows[:1], 0.0
    return rows, float(world_size)


def without_held_out_rows(extra: pl.DataFrame, official_ids: pl.Series, training_ids) -> pl.DataFrame:
    """Extra rows minus those that are official rows outside this fold's training rows.

    Soft labels on official rows (a teacher's OOF probabilities) carry the held-out fold's texts: training
    on them would leak the fold the model is scored on. official_ids: every official row (the folds file's
    ids; a corrected training file may lack the rows `action: drop` removed).
    """
    if "id" not in extra.columns:
        return extra
    ids = extra["id"].cast(pl.String)
    official = ids.is_in(official_ids.cast(pl.String).implode())
    training = ids.is_in(pl.Series([str(i) for i in training_ids], dtype=pl.String).implode())
    return extra.filter(~official | training)


def _label_sources(frame: pl.DataFrame) -> list[str]:
    """The distinct teacher models (`teacher/split`) named by a frame's `label_source` column; none without one."""
    from workflow_scripts.generated.teacher_labels import LABEL_SOURCE

    if LABEL_SOURCE not in frame.columns:
        return []
    return sorted({part for value in frame[LABEL_SOURCE].drop_nulls().to_list() for part in value.split(",")})


@dataclass
class TrainingData:
    """Every data set's tokenized rows and targets, and the stages' schedule of optimizer steps."""

    token_ids: dict[str, list[list[int]]]  # data set -> token ids per row
    targets: dict[str, np.ndarray]  # data set -> (n_rows, n_columns)
    stages: tuple[StageSpec, ...]
    rows_per_step: int
    total_steps: int
    warmup_steps: int
    # data set -> the teacher models (teacher/split) that made its labels (a `label_source` column)
    label_sources: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    def stage_rows(self, stage: StageSpec) -> tuple[list[list[int]], np.ndarray]:
        """The stage's rows: its data sets' token ids and targets, in the order the stage names them."""
        token_ids = [ids for name in stage.data for ids in self.token_ids[name]]
        return token_ids, np.concatenate([self.targets[name] for name in stage.data])


def build_training_data(train: pl.DataFrame, targets: np.ndarray, spec: LabelSpec, row_ids: set[str],
                        extra_sets: dict[str, pl.DataFrame], model_spec: ModelSpec, tokenizer,
                        official_ids: pl.Series | None = None) -> TrainingData:
    """The fold's official rows and the extra sets (minus held-out official rows: official_ids, default
    train's ids), checked against the stages, tokenized, and the number of optimizer steps."""
    official_mask = train["id"].is_in(list(row_ids)).to_numpy()
    datasets: dict[str, tuple[list[str], np.ndarray]] = {
        OFFICIAL: (train.filter(pl.Series(official_mask))["text"].to_list(), targets[official_mask])
    }
    # which teacher models made the labels trained on (a `label_source` column of a corrected or soft-labelled file)
    label_sources = {OFFICIAL: _label_sources(train.filter(pl.Series(official_mask)))}
    for name, frame in extra_sets.items():
        missing = [c for c in ["text", *spec.probability_columns] if c not in frame.columns]
        if missing:
            raise OoflineError(f"extra training data {name!r}: columns {missing} are missing")
        frame = without_held_out_rows(frame, official_ids if official_ids is not None else train["id"], row_ids)
        datasets[name] = (frame["text"].to_list(), frame.select(spec.probability_columns).to_numpy().astype(np.float32))
        label_sources[name] = _label_sources(frame)
    stages = model_spec.training_stages
    for stage in stages:
        unknown = [d for d in stage.data if d not in datasets]
        if unknown:
            raise OoflineError(f"stage data {unknown} are not provided (have {sorted(datasets)})")
    token_ids = {name: tokenizer(texts, truncation=True, max_length=model_spec.max_length)["input_ids"]
                 for name, (texts, _) in datasets.items()}
    # An optimizer step takes one batch of batch_size * grad_accum rows (as configured), cut into micro-batches
    # of the attempt's size: the data order and the checkpoint position do not depend on the micro-batch
    # (nor on the number of processes), so a retry with a smaller one (after an OOM, a preemption, a
    # scancel) resumes the same checkpoint.
    rows_per_step = model_spec.batch_size * model_spec.grad_accum
    total_steps = sum(stage.epochs * math.ceil(sum(len(token_ids[name]) for name in stage.data) / rows_per_step)
                      for stage in stages)
    return TrainingData(token_ids, {name: values for name, (_, values) in datasets.items()}, stages, rows_per_step,
                        total_steps, int(model_spec.warmup_ratio * total_steps), label_sources)


@dataclass
class Trainer:
    """What the epoch loop steps: the model as accelerate prepared it (DDP-wrapped under torchrun), the
    module inside it (what checkpoints and the output hold), its optimizer and this process's place."""

    accelerator: Any
    model: Any
    unwrapped: Any
    optimizer: Any
    trainable: list
    tokenizer: Any
    precision: str
    micro_batch: int
    work_dir: Path

    @property
    def is_writer(self) -> bool:  # rank 0 writes checkpoints and the output
        return self.accelerator.is_main_process


def build_model_and_optimizer(model_spec: ModelSpec, base_path: str, spec: LabelSpec, base_lr: float, accelerator,
                              precision: str, device, attempt: int):
    """(model, unwrapped model, optimizer, trainable parameters): the classifier (LoRA/QLoRA adapters or
    every weight) in the precision's dtype and its AdamW, placed on this rank's device by accelerate."""
    import torch

    from workflow_scripts import modeling
    from workflow_scripts.execution.device import torch_dtype_of
    from workflow_scripts.execution.oom import maybe_inject_oom, maybe_inject_user_error

    model = modeling.load_classifier(
        base_path, num_labels=len(spec.probability_columns), kind=model_spec.kind,
        quantization=model_spec.quantization, lora=model_spec.lora_settings(),
        trust_remote_code=model_spec.trust_remote_code, seed=model_spec.seed, dtype=torch_dtype_of(precision),
        gradient_checkpointing=model_spec.gradient_checkpointing, device=device,
        attn_implementation=model_spec.attn_implementation,
    )
    model.train()
    maybe_inject_oom(attempt)
    maybe_inject_user_error(attempt)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=base_lr, weight_decay=model_spec.weight_decay)
    # places the model on this rank's device (a quantized one is already there), wraps its forward in
    # autocast for bf16/fp16 and, under torchrun, in DistributedDataParallel
    model, optimizer = accelerator.prepare(model, optimizer)
    return model, accelerator.unwrap_model(model), optimizer, trainable


def training_fingerprint(model_spec: ModelSpec, row_ids: set[str], extra_sets: dict[str, pl.DataFrame]) -> str:
    """What a checkpoint must match to be resumed: the settings training reads (run settings such as
    log_every may change between attempts), the fold's rows and the extra sets' sizes."""
    return config_fingerprint({"config": model_spec.step_config(TRAIN), "rows": sorted(row_ids),
                               "extra": {k: v.height for k, v in extra_sets.items()}})


@dataclass
class Progress:
    """Where training stands (a checkpoint's position) and what it recorded. The loss tail and the epoch
    scores are part of the checkpoint: training.json must not depend on a resume."""

    position: dict[str, int]  # the next stage, epoch and batch to run, and the optimizer steps taken
    losses: list[float]
    epoch_scores: list[dict[str, Any]]  # select_epoch: best, one entry per finished epoch
    started: float = dataclasses.field(default_factory=time.time)
    seen: int = 0
    seen_tokens: int = 0

    @property
    def step(self) -> int:
        return self.position["step"]


def resume(checkpointer: Checkpointer, trainer: Trainer) -> Progress:
    """The checkpoint's progress (its weights, optimizer state and RNG restored), or a fresh start."""
    resumed = checkpointer.load(trainer.unwrapped, trainer.optimizer)
    position = resumed or {"stage": 0, "epoch": 0, "batch": 0, "step": 0}
    if resumed:
        print(f"resuming from checkpoint at stage {position['stage']} epoch {position['epoch']} "
              f"batch {position['batch']} (step {position['step']})", flush=True)
    return Progress({key: position[key] for key in ("stage", "epoch", "batch", "step")},
                    list(position.get("recent_losses", [])), list(position.get("epoch_scores", [])))


class EpochLoop:
    """Every remaining epoch of every stage from a (resumed) position: optimizer steps over length-grouped
    batches, a log line every log_every steps, the held-out score after each epoch (select_epoch: best),
    and a checkpoint every checkpoint_every steps and at the end of each epoch."""

    def __init__(self, trainer: Trainer, data: TrainingData, progress: Progress, checkpointer: Checkpointer,
                 spec: LabelSpec, model_spec: ModelSpec, held_out: HeldOut | None, checkpoint_every: int,
                 grad_accum: int):
        self.trainer, self.data, self.progress, self.checkpointer = trainer, data, progress, checkpointer
        self.spec, self.model_spec, self.held_out = spec, model_spec, held_out
        self.checkpoint_every, self.grad_accum = checkpoint_every, grad_accum
        self.log_every = model_spec.log_every
        self.loss_tail = max(10, self.log_every * grad_accum)

    def run(self, stop_after_steps: int | None = None) -> bool:
        """Train to the end (True), or stop after `stop_after_steps` optimizer steps (False; tests)."""
        import torch

        from workflow_scripts.batching import length_grouped_batches

        start = dict(self.progress.position)
        for stage_index in range(start["stage"], len(self.data.stages)):
            stage = self.data.stages[stage_index]
            token_ids, stage_targets = self.data.stage_rows(stage)
            lengths = np.array([len(ids) for ids in token_ids])
            stage_lr = float(stage.lr) if stage.lr else self.model_spec.require_lr()
            first_epoch = start["epoch"] if stage_index == start["stage"] else 0
            for epoch in range(first_epoch, stage.epochs):
                batches = length_grouped_batches(lengths, self.data.rows_per_step,
                                                 self.model_spec.seed * 1000 + stage_index * 100 + epoch)
                first_batch = start["batch"] if (stage_index, epoch) == (start["stage"], start["epoch"]) else 0
                for batch_index in range(first_batch, len(batches)):
                    self.optimizer_step(token_ids, torch.from_numpy(stage_targets), lengths, batches[batch_index],
                                        stage_lr)
                    self.log(stage_index, epoch)
                    if not self.after_step(stage_index, epoch, batch_index == len(batches) - 1, batch_index,
                                           stop_after_steps):
                        return False
        return True

    def optimizer_step(self, token_ids, target_tensor, lengths: np.ndarray, step_rows: np.ndarray,
                       stage_lr: float) -> None:
        """One optimizer step on one batch: this rank's share of its rows in micro-batches, gradients
        all-reduced once, the scheduled learning rate, clipping."""
        from workflow_scripts.batching import pad_batch

        trainer, progress = self.trainer, self.progress
        accelerator, optimizer = trainer.accelerator, trainer.optimizer
        own_rows, rank_weight = rank_share(step_rows, accelerator.process_index, accelerator.num_processes)
        optimizer.zero_grad(set_to_none=True)
        starts = range(0, len(own_rows), trainer.micro_batch)
        for start in starts:
            rows = own_rows[start:start + trainer.micro_batch]
            # gradients are all-reduced once per optimizer step, on the last micro-batch
            sync = accelerator.no_sync(trainer.model) if start != starts[-1] else contextlib.nullcontext()
            with sync:
                loss = micro_batch_loss(trainer.model, pad_batch(token_ids, rows, trainer.tokenizer.pad_token_id),
                                        target_tensor[rows], self.spec, self.model_spec.label_smoothing)
                # weighted by its share of the step's rows: the gradient is the whole batch's mean
                accelerator.backward(loss * (rank_weight * len(rows) / len(step_rows)))
            progress.losses.append(float(loss.detach()))
        progress.seen += len(step_rows)
        progress.seen_tokens += int(lengths[step_rows].sum())
        for group in optimizer.param_groups:
            group["lr"] = stage_lr * lr_factor(progress.step, self.data.total_steps, self.data.warmup_steps,
                                               self.model_spec.scheduler)
        accelerator.clip_grad_norm_(trainer.trainable, self.model_spec.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        progress.position["step"] += 1

    def log(self, stage_index: int, epoch: int) -> None:
        step, total_steps = self.progress.step, self.data.total_steps
        if step % self.log_every == 0 or step == total_steps:
            stages = self.data.stages
            rate = self.progress.seen / max(1e-9, time.time() - self.progress.started)
            loss = np.mean(self.progress.losses[-self.log_every * self.grad_accum:])
            print(f"stage {stage_index + 1}/{len(stages)} epoch {epoch + 1}/{stages[stage_index].epochs} "
                  f"step {step}/{total_steps} loss {loss:.4f} "
                  f"lr {self.trainer.optimizer.param_groups[0]['lr']:.2e} {rate:.1f} samples/s", flush=True)

    def after_step(self, stage_index: int, epoch: int, last_in_epoch: bool, batch_index: int,
                   stop_after_steps: int | None) -> bool:
        """The next position; at an epoch's end the held-out score; a checkpoint when due. False: stop here."""
        step = self.progress.step
        next_position = {"stage": stage_index, "epoch": epoch, "batch": batch_index + 1, "step": step}
        if last_in_epoch:
            next_position = {"stage": stage_index, "epoch": epoch + 1, "batch": 0, "step": step}
        if last_in_epoch and self.held_out is not None:
            self.score_epoch(stage_index, epoch)
        if step % self.checkpoint_every == 0 or last_in_epoch:
            if self.trainer.is_writer:
                self.checkpointer.save(self.trainer.unwrapped, self.trainer.optimizer,
                                       dict(next_position, recent_losses=self.progress.losses[-self.loss_tail:],
                                            epoch_scores=self.progress.epoch_scores))
            self.trainer.accelerator.wait_for_everyone()
        return stop_after_steps is None or step < stop_after_steps

    def score_epoch(self, stage_index: int, epoch: int) -> None:
        """select_epoch: best: score the held-out fold; keep the best epoch's weights and this epoch's
        predictions of the fold in the work folder."""
        trainer, held_out, stages = self.trainer, self.held_out, self.data.stages
        epoch_number = sum(s.epochs for s in stages[:stage_index]) + epoch + 1
        score, probabilities = held_out_score(trainer.unwrapped, trainer.tokenizer, held_out, self.spec,
                                              self.model_spec, trainer.precision)
        self.progress.epoch_scores.append({"epoch": epoch_number, "stage": stage_index + 1,
                                           "stage_epoch": epoch + 1, "score": score})
        best = chosen_epoch(self.progress.epoch_scores, held_out.metric)
        print(f"epoch {epoch_number}: held-out fold {held_out.fold} {held_out.metric} {score:.5f} "
              f"(best so far: epoch {best})", flush=True)
        if trainer.is_writer:
            if best == epoch_number:
                save_trainable(trainer.unwrapped, trainer.work_dir / BEST_EPOCH_WEIGHTS)
            frame = prediction_frame(held_out.ids, probabilities, self.spec, held_out.fold)
            write_parquet(frame, trainer.work_dir / LATEST_EPOCH_VALID)


def keep_selected_epoch(trainer: Trainer, epoch_scores: list[dict[str, Any]], held_out: HeldOut) -> dict[str, Any]:
    """select_epoch: best: the chosen epoch's weights back into the model; the choice and every epoch's score."""
    best = chosen_epoch(epoch_scores, held_out.metric)
    selection = {"select_epoch": "best", "metric": held_out.metric, "fold": held_out.fold,
                 "held_out_rows": len(held_out.ids), "history": epoch_scores, "chosen_epoch": best,
                 "last_epoch": epoch_scores[-1]["epoch"]}
    if best != epoch_scores[-1]["epoch"]:
        from safetensors.torch import load_file

        load_weights(trainer.unwrapped, load_file(str(trainer.work_dir / BEST_EPOCH_WEIGHTS)))
    scores_text = ", ".join(f"{entry['score']:.5f}" for entry in epoch_scores)
    print(f"select_epoch best: keeping epoch {best} of {epoch_scores[-1]['epoch']} (held-out "
          f"{held_out.metric} per epoch: {scores_text})", flush=True)
    return selection


def save_trained(trainer: Trainer, out_dir: str | Path, model_spec: ModelSpec, spec: LabelSpec,
                 summary: dict[str, Any], speed: dict[str, Any], held_out: HeldOut | None) -> None:
    """Rank 0 writes the output folder at once (weights, tokenizer, training.json; the last epoch's
    held-out predictions with select_epoch: best) and drops the work folder; every rank then finishes."""
    from workflow_scripts.modeling import normalise_adapter_config

    if trainer.is_writer:
        with atomic_path(out_dir, durable=True) as tmp:
            trainer.unwrapped.save_pretrained(tmp, safe_serialization=True)
            trainer.tokenizer.save_pretrained(tmp)
            normalise_adapter_config(tmp / "adapter_config.json")
            # the settings training read: run settings (log_every, ...) stay out, so a rebuild is byte-identical
            (tmp / "training.json").write_text(json.dumps({"model_config": model_spec.step_config(TRAIN),
                                                             "summary": summary, "labels": spec.to_dict()},
                                                            indent=2, sort_keys=True))
            (tmp / TRAINING_SPEED).write_text(json.dumps(speed, indent=2, sort_keys=True))
            if held_out is not None:
                shutil.copyfile(trainer.work_dir / LATEST_EPOCH_VALID, tmp / LAST_EPOCH_VALID)
        shutil.rmtree(trainer.work_dir, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()


def training_summary(progress: Progress, data: TrainingData, micro_batch: int, grad_accum: int, attempt: int,
                     device, precision: str, world_size: int, selection: dict[str, Any] | None,
                     train_seconds: float, attn_implementation: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(training.json's summary, wall-time figures). The figures stay out of training.json, which manifests
    hash and verify rebuilds byte for byte: they go to the log and to .training_speed.json (a dot-file,
    which manifests skip)."""
    from workflow_scripts.execution.device import DeviceReport, peak_gpu_memory_mb

    report = DeviceReport.of(device, precision)
    summary = {
        "steps": progress.step, "micro_batch": micro_batch, "grad_accum": grad_accum, "attempt": attempt,
        "train_rows": {name: len(ids) for name, ids in data.token_ids.items()},
        # rank 0's losses: its share of each step's rows
        "final_loss": float(np.mean(progress.losses[-10:])) if progress.losses else None,
        "device": report.device, "gpu_name": report.gpu_name, "precision": report.precision,
        "peak_gpu_memory_mb": peak_gpu_memory_mb(device), "world_size": world_size,
        # the kernel transformers ran (attn_implementation left out: sdpa where the family has it, else eager)
        "attn_implementation": attn_implementation,
    }
    used_sources = {name: sources for name, sources in data.label_sources.items()
                    if sources and any(name in stage.data for stage in data.stages)}
    if used_sources:  # teacher-made labels: which teacher models (teacher/split) made the rows trained on
        summary["label_sources"] = used_sources
    if selection is not None:
        summary["epoch_selection"] = selection
    speed = {"train_tokens_per_s": round(progress.seen_tokens / max(1e-9, train_seconds), 1),
             "train_seconds": round(train_seconds, 1), "train_tokens": progress.seen_tokens}
    print(f"trained in {train_seconds:.1f} s, {speed['train_tokens_per_s']} tokens/s on {report.device} "
          f"({report.gpu_name or 'cpu'}, {precision}, {world_size} process(es))", flush=True)
    return summary, speed


def train_model(train: pl.DataFrame, targets: np.ndarray, spec: LabelSpec, row_ids: set[str],
                model_spec: ModelSpec | dict[str, Any], base_path: str, out_dir: str | Path, work_dir: str | Path,
                extra_sets: dict[str, pl.DataFrame] | None = None, attempt: int = 1,
                checkpoint_every: int | None = None, stop_after_steps: int | None = None,
                out_of_memory_retries: int = 0, held_out: HeldOut | None = None,
                official_ids: pl.Series | None = None) -> dict[str, Any]:
    """Train and save a model; returns a summary. targets: (n_rows, n_columns) aligned with `train`.

    One path for the CPU and GPUs: accelerate puts the model on this rank's device, runs the forward
    under autocast in the resolved precision and, under torchrun, all-reduces gradients (DDP); only
    rank 0 writes checkpoints and the output.

    out_of_memory_retries: earlier attempts that ran out of memory; each halves the micro-batch
    (`attempt` itself only goes into the summary and the OOM injection used by tests).

    extra_sets: name -> frame with `id`, `text` and the probability columns as (soft) targets, used by
    stages that list the name in their `data`; official rows among them (official_ids, default train's ids)
    outside row_ids are dropped.

    held_out: with `select_epoch: best`, the fold scored after every epoch (of every stage); the output keeps
    the best epoch's weights, training.json records every epoch's score and the choice, and
    last_epoch_valid.parquet holds the last epoch's predictions of the fold (its plain CV).
    """
    import torch

    from workflow_scripts import modeling

    model_spec = ModelSpec.from_config(model_spec)
    if model_spec.selects_best_epoch and held_out is None:
        raise OoflineError("select_epoch: best needs the held-out fold to score each epoch on")
    if held_out is not None and not model_spec.selects_best_epoch:
        held_out = None  # select_epoch: last keeps the last epoch and scores nothing while training
    extra_sets = extra_sets or {}
    torch.manual_seed(model_spec.seed)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    micro_batch, grad_accum = effective_batching(model_spec, out_of_memory_retries)
    base_lr = model_spec.require_lr()
    accelerator, precision = training_accelerator(model_spec)
    # a multi-process CPU run names its device cpu:0 on every rank; it is the CPU
    device = accelerator.device if accelerator.device.type != "cpu" else torch.device("cpu")

    # the steps: the data and stages, the model and optimizer, the epoch loop, the held-out choice, the save
    tokenizer = modeling.load_tokenizer(base_path, trust_remote_code=model_spec.trust_remote_code)
    data = build_training_data(train, targets, spec, row_ids, extra_sets, model_spec, tokenizer, official_ids)
    model, unwrapped, optimizer, trainable = build_model_and_optimizer(model_spec, base_path, spec, base_lr,
                                                                       accelerator, precision, device, attempt)
    trainer = Trainer(accelerator, model, unwrapped, optimizer, trainable, tokenizer, precision, micro_batch, work_dir)
    checkpointer = Checkpointer(work_dir, training_fingerprint(model_spec, row_ids, extra_sets))
    progress = resume(checkpointer, trainer)
    loop = EpochLoop(trainer, data, progress, checkpointer, spec, model_spec, held_out,
                     checkpoint_every or model_spec.checkpoint_every, grad_accum)
    if not loop.run(stop_after_steps):
        return {"stopped_at_step": progress.step}
    train_seconds = time.time() - progress.started
    selection = keep_selected_epoch(trainer, progress.epoch_scores, held_out) if held_out is not None else None
    summary, speed = training_summary(progress, data, micro_batch, grad_accum, attempt, device, precision,
                                      accelerator.num_processes, selection, train_seconds,
                                      getattr(unwrapped.config, "_attn_implementation", None))
    save_trained(trainer, out_dir, model_spec, spec, summary, speed, held_out)
    return summary


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train", required=True, help="clean training data parquet (id, text, ...)")
    parser.add_argument("--targets", required=True, help="targets parquet (id + probability columns)")
    parser.add_argument("--folds", required=True)
    parser.add_argument("--labels", required=True)
    parser.add_argument("--fold", required=True, help="fold number, or 'full' for all rows")
    parser.add_argument("--model-config", required=True, help="the settings training reads, as JSON")
    parser.add_argument("--run-settings", default="{}",
                        help="how the job runs, as JSON: log_every, checkpoint_every, ... (not what it makes)")
    parser.add_argument("--base", required=True, help="base model folder or hub id")
    parser.add_argument("--extra", action="append", default=[], metavar="NAME=PATH",
                        help="extra (soft-labelled) training data for stages that name it")
    parser.add_argument("--out", required=True)
    parser.add_argument("--work-dir", required=True)
    parser.add_argument("--attempt", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--metric", help="select_epoch best: the task metric each epoch's held-out fold is scored on")
    parser.add_argument("--held-out-targets",
                        help="select_epoch best: the targets OOF scoring reads (default --targets)")
    parser.add_argument("--official-train",
                        help="the official training rows when --train is a corrected file: select_epoch best scores "
                             "the held-out fold on them (default --train)")
    args = parser.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    model_spec = ModelSpec.from_json(args.model_config, args.run_settings)
    spec = LabelSpec.load(args.labels)
    train = read_table(args.train)
    targets_frame = read_table(args.targets)
    if targets_frame["id"].to_list() != train["id"].to_list():
        raise OoflineError(f"{args.targets}: ids do not match {args.train} (rebuild both from the same data)")
    folds = read_table(args.folds)
    official_ids = folds["id"]
    unknown = train.filter(~pl.col("id").cast(pl.String).is_in(official_ids.cast(pl.String).implode()))
    if unknown.height:
        raise OoflineError(f"{args.train}: {unknown.height} row(s) are not official training rows of {args.folds}, "
                           f"e.g. {unknown['id'][0]!r}")
    held_out = None
    if model_spec.selects_best_epoch:
        if not args.metric:
            raise OoflineError("select_epoch: best needs --metric (the task metric to pick the epoch on)")
        scoring_targets = read_table(args.held_out_targets) if args.held_out_targets else targets_frame
        official = read_table(args.official_train) if args.official_train else train
        held_out = held_out_fold(official, scoring_targets, folds, args.fold, spec, args.metric)
    extra_sets = {}
    for item in args.extra:
        name, _, path = item.partition("=")
        extra_sets[name] = read_table(path)
    from workflow_scripts.execution.oom import is_out_of_memory

    # run settings count here: turning gradient checkpointing on starts the micro-batch afresh
    oom_key = config_fingerprint({"config": model_spec.to_config(), "fold": args.fold})
    try:
        summary = train_model(
            train, targets_frame.select(spec.probability_columns).to_numpy().astype(np.float32), spec,
            training_rows(folds, args.fold), model_spec, args.base, args.out, args.work_dir, extra_sets,
            attempt=args.attempt,
            out_of_memory_retries=len(recorded_out_of_memory(args.work_dir, oom_key)), held_out=held_out,
            official_ids=official_ids,
        )
    except BaseException as error:  # noqa: BLE001 - recorded for the retry, then re-raised
        if is_out_of_memory(error):
            record_out_of_memory(args.work_dir, oom_key, args.attempt)
        elif isinstance(error, OoflineError):
            record_user_error(args.work_dir, args.attempt)
        raise
    print(f"finished: {json.dumps(summary, sort_keys=True)}", flush=True)


if __name__ == "__main__":
    from workflow_scripts.execution.oom import run_cli_with_oom

    raise SystemExit(run_cli_with_oom(main))
