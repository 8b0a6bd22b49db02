"""Pick a fine-tune's checkpoint: by its validation score (`select_checkpoint: best`) or a fixed epoch
(`select_checkpoint: K`, chosen beforehand: what a final fit on every query, `valid_fold: null`, keeps).

The fine-tune keeps one checkpoint per epoch (HF `save_strategy epoch`, model weights only: safetensors);
each is scored on the pipeline's validation fold with the inference settings and metric code of
`retrieval.eval`: an embedder by the MAP@k of its own ranking, a reranker by the MAP@k of reranking the
`top_n` candidates of the iteration's (already chosen) embedder, as evaluate_retrieval does. The best
epoch (ties: the earliest) becomes the fine-tune's model. The choice is made on the validation fold, so
that fold's score of the chosen model is optimistic; checkpoints.json and score.json say so.
With a fixed K (1-based, at most `epochs`) nothing is scored: training keeps the learning-rate schedule of all
`epochs` and stops after epoch K (the write-ups' "early stop after 3 epochs"), and epoch K's checkpoint is the
model; no fold is used, so no score is optimistic.
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import polars as pl

from workflow_scripts.errors import OoflineError
from workflow_scripts.io import read_json
from workflow_scripts.metrics import best_index

CHECKPOINT_CHOICES = ("last", "best")  # or a whole number K: keep epoch K (1-based)
# FlagEmbedding's LoRA merge (the one its runners call after training) for each decoder entry point
MODEL_ARGUMENTS = {
    "FlagEmbedding.finetune.embedder.decoder_only.base": "DecoderOnlyEmbedderModelArguments",
    "FlagEmbedding.finetune.embedder.decoder_only.icl": "DecoderOnlyEmbedderICLModelArguments",
    "FlagEmbedding.finetune.reranker.decoder_only.base": "RerankerModelArguments",
}
OPTIMISTIC_NOTE = ("checkpoints were chosen by their score on this validation fold, so the fold's score of the "
                   "chosen model is optimistic; last_score is the last epoch's score, without that fine-tune's choice")

CheckpointScorer = Callable[[Path], dict]  # model folder -> {"map@k": ..., "recall@k": ...}


def fixed_epoch(select_checkpoint: str | int) -> int | None:
    """K for `select_checkpoint: K` (a 1-based epoch fixed beforehand); None for last and best."""
    if isinstance(select_checkpoint, bool):
        return None
    if isinstance(select_checkpoint, int):
        return select_checkpoint
    return int(select_checkpoint) if str(select_checkpoint).isdigit() else None


def parse_select_checkpoint(text: str) -> str | int:
    """The command line's --select-checkpoint: last, best or a whole number K."""
    return int(text) if text.isdigit() else text


def checkpoint_problem(select_checkpoint: object, epochs: float) -> str | None:
    """Why a select_checkpoint value cannot be used with this many epochs (a sentence), or None."""
    epoch = fixed_epoch(select_checkpoint) if isinstance(select_checkpoint, (str, int)) else None
    if epoch is None and select_checkpoint not in CHECKPOINT_CHOICES:
        return (f"select_checkpoint must be last, best or a whole epoch number (1 to epochs), "
                f"got {select_checkpoint!r}")
    if select_checkpoint != "last" and not float(epochs).is_integer():
        return f"select_checkpoint: {select_checkpoint} keeps one checkpoint per epoch: epochs must be whole, got {epochs}"
    if epoch is not None and not 1 <= epoch <= epochs:
        return f"select_checkpoint: {epoch} is not an epoch of this fine-tune (1 to epochs={epochs:g})"
    return None


@dataclass(frozen=True)
class EpochCheckpoint:
    epoch: int
    step: int
    path: Path


def epoch_checkpoints(run_dir: str | Path) -> list[EpochCheckpoint]:
    """The trainer's `checkpoint-STEP` folders in step order, each with the epoch its trainer_state.json records."""
    found = []
    for folder in Path(run_dir).glob("checkpoint-*"):
        state = folder / "trainer_state.json"
        if not folder.name.split("-", 1)[1].isdigit() or not state.exists():
            continue
        epoch = json.loads(state.read_text())["epoch"]
        found.append(EpochCheckpoint(int(round(epoch)), int(folder.name.split("-", 1)[1]), folder))
    return sorted(found, key=lambda checkpoint: checkpoint.step)


def pick_best(scores: Sequence[float]) -> int:
    """Index of the highest score; ties go to the earliest (fewer epochs). NaN scores are never picked."""
    if not scores:
        raise OoflineError("no checkpoint scores to choose from")
    best = best_index(scores)
    if best is None:
        raise OoflineError(f"every checkpoint scored NaN: {list(scores)}")
    return best


def selection_record(epochs: Sequence[int], scores: Sequence[dict], metric: str, valid_fold: int,
                     scored_by: str) -> dict:
    """checkpoints.json: every epoch's validation scores, the chosen epoch (argmax of `metric`, ties: the
    earliest) and the last epoch's score, so the gain of the choice is visible."""
    if len(epochs) != len(scores):
        raise OoflineError(f"{len(epochs)} epochs but {len(scores)} scores")
    chosen = pick_best([float(score[metric]) for score in scores])
    return {
        "select_checkpoint": "best",
        "metric": metric,
        "valid_fold": valid_fold,
        "scored_by": scored_by,
        "epochs": [{"epoch": epoch, **score} for epoch, score in zip(epochs, scores)],
        "chosen_epoch": epochs[chosen],
        "chosen_score": scores[chosen][metric],
        "last_epoch": epochs[-1],
        "last_score": scores[-1][metric],
        "selected_on_valid_fold": True,
        "note": OPTIMISTIC_NOTE,
    }


def fixed_epoch_record(checkpoints: Sequence[EpochCheckpoint], chosen_epoch: int, planned_epochs: int) -> dict:
    """checkpoints.json of `select_checkpoint: K`: the epochs trained (1..K of a schedule of planned_epochs),
    the kept one and the learning rate it ended on (above 0 when K < planned_epochs: the schedule ran on)."""
    chosen = next(checkpoint for checkpoint in checkpoints if checkpoint.epoch == chosen_epoch)
    history = json.loads((chosen.path / "trainer_state.json").read_text()).get("log_history", [])
    rates = [entry["learning_rate"] for entry in history if "learning_rate" in entry]
    return {
        "select_checkpoint": chosen_epoch,
        "epochs": [{"epoch": checkpoint.epoch, "step": checkpoint.step} for checkpoint in checkpoints],
        "chosen_epoch": chosen_epoch,
        "planned_epochs": planned_epochs,
        "chosen_learning_rate": rates[-1] if rates else None,
        "selected_on_valid_fold": False,
        "note": f"epoch {chosen_epoch} of a {planned_epochs}-epoch schedule was fixed in the config before "
                "training; no checkpoint was scored",
    }


def merge_lora_checkpoint(entry_point: str, base_model: str, checkpoint: Path) -> Path:
    """`checkpoint/merged_model`: the base with the checkpoint's LoRA adapter merged, by FlagEmbedding's own
    save_merged_model (what its runner does for the final model)."""
    arguments = getattr(importlib.import_module(entry_point), MODEL_ARGUMENTS[entry_point])
    save_merged_model = importlib.import_module(entry_point + ".load_model").save_merged_model
    save_merged_model(arguments(model_name_or_path=base_model), str(checkpoint))
    return checkpoint / "merged_model"


def choose_checkpoint(checkpoints: Sequence[EpochCheckpoint], model_of: Callable[[EpochCheckpoint], Path],
                      scorer: CheckpointScorer, metric: str, valid_fold: int, scored_by: str,
                      ) -> tuple[EpochCheckpoint, dict]:
    """Score every checkpoint's model (model_of builds it: a merge for LoRA), keep only the best one's model
    folder on disk, and return (the chosen checkpoint, its selection record)."""
    scores, best_model, best_score = [], None, -math.inf
    for checkpoint in checkpoints:
        model = model_of(checkpoint)
        score = scorer(model)
        scores.append(score)
        print(f"epoch {checkpoint.epoch} (step {checkpoint.step}): {score}", flush=True)
        if score[metric] > best_score:  # strictly better: a tie keeps the earlier epoch
            if best_model is not None and best_model != checkpoint.path:
                _drop_model(best_model)
            best_model, best_score = model, score[metric]
        elif model != checkpoint.path:
            _drop_model(model)  # a LoRA merge nobody will read
    record = selection_record([c.epoch for c in checkpoints], scores, metric, valid_fold, scored_by)
    chosen = next(c for c in checkpoints if c.epoch == record["chosen_epoch"])
    print(f"chosen: epoch {record['chosen_epoch']} ({metric} {record['chosen_score']:.6f}; "
          f"last epoch {record['last_epoch']}: {record['last_score']:.6f})", flush=True)
    return chosen, record


def _drop_model(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


# ---- the validation fold's scoring (the inference settings and metric of retrieval.eval) ----


def validation_parser() -> argparse.ArgumentParser:
    """The arguments after `--validation` on the fine-tune's command line."""
    from workflow_scripts.retrieval.mining import add_embedder_arguments
    from workflow_scripts.retrieval.models import add_reranker_arguments

    parser = argparse.ArgumentParser(prog="finetune --validation", description="score checkpoints on a fold")
    parser.add_argument("--queries", required=True)
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--folds", required=True)
    parser.add_argument("--valid-fold", type=int, required=True)
    parser.add_argument("--k", type=int, default=25)
    parser.add_argument("--top-n", type=int, default=50)
    parser.add_argument("--candidate-embedder", default=None,
                        help="reranker: the embedder (a merged/ folder) whose top_n candidates it reranks")
    add_embedder_arguments(parser, with_model=False)
    add_reranker_arguments(parser, with_model=False)
    return parser


class ValidationScorer:
    """Scores a model folder on the validation fold: MAP@k and Recall@k (metrics.py), as evaluate_retrieval."""

    def __init__(self, kind: str, argv: Sequence[str]):
        from workflow_scripts.retrieval.data import load_task, with_query_folds

        self.kind, self.args = kind, validation_parser().parse_args(list(argv))
        if kind == "reranker" and not self.args.candidate_embedder:
            raise OoflineError("--validation: a reranker's checkpoints are scored on --candidate-embedder's candidates")
        queries, self.corpus = load_task(self.args.queries, self.args.corpus)
        queries = with_query_folds(queries, self.args.folds)
        fold = self.args.valid_fold
        self.held_out = queries.filter(pl.col("fold") == fold)
        self.training = queries.filter(pl.col("fold") != fold)
        if self.held_out.height == 0:
            raise OoflineError(f"{self.args.folds}: valid fold {fold} has no queries to choose a checkpoint on")
        self.metric = f"map@{self.args.k}"
        self._vectors = None

    @property
    def scored_by(self) -> str:
        if self.kind == "embedder":
            return "the embedder's ranking of the corpus"
        return f"reranking the top {self.args.top_n} of {self.args.candidate_embedder}"

    def _encode(self, embedder_path: str):
        from workflow_scripts.retrieval.mining import embedder_settings
        from workflow_scripts.retrieval.models import encode_queries_and_corpus

        settings = embedder_settings(self.args, embedder_path, training_queries=self.training, corpus=self.corpus)
        return encode_queries_and_corpus(settings, self.held_out["query"].to_list(), self.corpus["text"].to_list())

    def __call__(self, model: Path) -> dict:
        from workflow_scripts.retrieval.eval import evaluate_fold, reranker_scorer, score_oof

        if self.kind == "embedder":
            query_vecs, passage_vecs = self._encode(str(model))
            score_pairs, column = None, "embedder"
        else:
            if self._vectors is None:  # the candidates are the same for every reranker checkpoint
                self._vectors = self._encode(self.args.candidate_embedder)
            query_vecs, passage_vecs = self._vectors
            score_pairs, column = reranker_scorer(str(model), self.args), "reranked"
        depth = max(self.args.k, self.args.top_n)
        oof = evaluate_fold(self.held_out, self.corpus, query_vecs, passage_vecs, score_pairs, self.args.valid_fold,
                            depth, self.args.top_n)
        return score_oof(oof, self.held_out, self.args.k)["overall"][column]


def score_summary(record: dict) -> dict:
    """What score.json shows of a fine-tune's checkpoint choice."""
    keys = ("metric", "chosen_epoch", "chosen_score", "last_epoch", "last_score", "scored_by")
    summary = {key: record[key] for key in keys}
    summary["epoch_scores"] = {str(entry["epoch"]): entry[record["metric"]] for entry in record["epochs"]}
    return summary


def read_records(paths: dict[str, str | None]) -> dict[str, dict]:
    """{role: checkpoints.json} for the roles that chose a checkpoint."""
    return {role: read_json(path) for role, path in paths.items() if path}

