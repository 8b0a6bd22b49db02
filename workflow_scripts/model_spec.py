"""A model's config entry as one frozen, typed object: the one place that holds the defaults.

`config_check` merges `config_defaults()` into every model entry before validation, rules pass the
entry to steps as JSON (`--model-config`), and steps build a `ModelSpec` from it and read attributes.
Every key of the schema's `model` object has a field here (tests/test_model_spec.py checks both ways).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from workflow_scripts.errors import OoflineError

LORA_KINDS = ("decoder_lora", "encoder_lora")
OFFICIAL = "official"  # the competition's own training rows, as a stage's data name


@dataclass(frozen=True)
class StageSpec:
    """One training stage: epochs over the named data sets, optionally at its own learning rate."""

    epochs: int
    data: tuple[str, ...] = (OFFICIAL,)
    lr: float | None = None


@dataclass(frozen=True)
class ModelSpec:
    """One model entry of config.yaml with every default applied (see schemas/config.schema.yaml)."""

    kind: str
    # steps get the materialised base as --base; the rules resolve `source`, so steps may omit it
    source: str | None = None
    quantization: str = "none"
    r: int = 8
    alpha: float = 16
    dropout: float = 0.05
    target_modules: str | tuple[str, ...] = "all-linear"
    lr: float | None = None  # no sensible default: training without one is an error
    scheduler: str = "linear"
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    max_grad_norm: float = 1.0
    epochs: int = 1
    # None is `last`: left out of the merged defaults, so a config that does not set it plans the same jobs
    select_epoch: str | None = None
    batch_size: int = 16
    predict_batch_size: int | None = None  # None: twice batch_size (no gradients, so twice fits)
    grad_accum: int = 1
    max_length: int = 256
    seed: int = 42
    log_every: int = 10
    checkpoint_every: int = 50
    # auto: bf16 on a GPU that supports it (fp16 on an older one), fp32 on the CPU
    precision: str = "auto"
    # on: recomputing activations in the backward costs ~20-30% compute but is what lets a 7-14B
    # decoder train on long rows in one GPU's memory; gradients are the same (tests/test_device_training.py)
    gradient_checkpointing: bool = True
    # None: transformers chooses (sdpa where the family has it, else eager: DeBERTa-v2/v3, Gemma-2); left out of
    # the merged defaults. config_check rejects a kernel the model's family cannot use.
    attn_implementation: str | None = None
    folds: tuple[int, ...] | None = None
    train_full: bool = False
    test_predictions: str = "folds"  # folds: the fold models' mean; full: the full-data model's
    # None: a merged/ copy for GPU models only; on the CPU prediction reads base + adapter anyway, so a
    # merged copy is only an export that costs a job per fold (`merge: true` asks for it)
    merge: bool | None = None
    trust_remote_code: bool = False
    corrected_by: str | None = None
    extra_data: Mapping[str, str] = field(default_factory=dict)
    stages: tuple[StageSpec, ...] | None = None
    resources: Mapping[str, Any] = field(default_factory=lambda: {"gpu": 0, "mem_mb": 4000, "runtime": 60})
    # tfidf_linear and embedding_head: their steps apply the kind's own defaults (linear_models.TFIDF_DEFAULTS,
    # embedding_head), since one default cannot suit both (C is 4.0 for TF-IDF rows, 1.0 for embeddings)
    word_ngrams: tuple[int, int] | None = None
    char_ngrams: tuple[int, int] | None = None
    min_df: int | None = None
    max_features: int | None = None
    sublinear_tf: bool | None = None
    C: float | None = None
    max_iter: int | None = None
    pooling: str | None = None
    embed_batch_size: int | None = None

    @classmethod
    def from_config(cls, entry: Mapping[str, Any] | "ModelSpec") -> "ModelSpec":
        """Build from a model's config entry (defaults fill what it leaves out); unknown keys are errors."""
        if isinstance(entry, ModelSpec):
            return entry
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(entry) - names)
        if unknown:
            raise OoflineError(f"model config: unknown key {unknown[0]!r} (expected one of {', '.join(sorted(names))})")
        if "kind" not in entry:
            raise OoflineError("model config: key 'kind' is missing")
        values = dict(entry)
        if isinstance(values.get("target_modules"), list):
            values["target_modules"] = tuple(values["target_modules"])
        if values.get("folds") is not None:
            values["folds"] = tuple(int(f) for f in values["folds"])
        if values.get("stages") is not None:
            values["stages"] = tuple(StageSpec(epochs=int(s["epochs"]), data=tuple(s.get("data", [OFFICIAL])),
                                               lr=s.get("lr")) for s in values["stages"])
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> "ModelSpec":
        return cls.from_config(json.loads(text))

    def to_config(self) -> dict[str, Any]:
        """The entry as plain JSON-able values (the shape config.yaml uses)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @property
    def is_lora(self) -> bool:
        return self.kind in LORA_KINDS

    @property
    def builds_merged(self) -> bool:
        """Whether the workflow builds merged/ folders for this LoRA model (see `merge`)."""
        return self.merge if self.merge is not None else self.gpu_count > 0

    @property
    def gpu_count(self) -> int:
        """GPUs one job of the model asks for: `gpu`, or the count at the end of `gres` (gpu:h100:2)."""
        resources = self.resources or {}
        gres = resources.get("gres") or ""
        count = gres.rsplit(":", 1)[-1] if gres.count(":") >= 1 else ""
        return int(resources.get("gpu") or 0) or (int(count) if count.isdigit() else 1 if gres else 0)

    @property
    def selects_best_epoch(self) -> bool:
        """select_epoch: best: keep the epoch that scored best on the held-out fold (an optimistic CV)."""
        return self.select_epoch == "best"

    @property
    def prediction_batch_size(self) -> int:
        return self.predict_batch_size or 2 * self.batch_size

    @property
    def training_stages(self) -> tuple[StageSpec, ...]:
        """The configured stages; without `stages`, one stage of `epochs` on the official rows."""
        return self.stages or (StageSpec(epochs=self.epochs),)

    def lora_settings(self) -> dict[str, Any] | None:
        """{r, alpha, dropout, target_modules} for modeling.load_classifier; None for full fine-tunes."""
        if not self.is_lora:
            return None
        target = list(self.target_modules) if isinstance(self.target_modules, tuple) else self.target_modules
        return {"r": self.r, "alpha": self.alpha, "dropout": self.dropout, "target_modules": target}

    def require_lr(self) -> float:
        if self.lr is None:
            raise OoflineError("model config: key 'lr' is required to train")
        return float(self.lr)


def config_defaults() -> dict[str, Any]:
    """Defaults merged into every model entry of the config (fields whose default is not None)."""
    defaults: dict[str, Any] = {}
    for spec_field in dataclasses.fields(ModelSpec):
        if spec_field.default is not dataclasses.MISSING and spec_field.default is not None:
            defaults[spec_field.name] = spec_field.default
        elif spec_field.default_factory is not dataclasses.MISSING:
            value = spec_field.default_factory()
            if value:  # an empty mapping is the same as the key left out
                defaults[spec_field.name] = value
    return defaults
