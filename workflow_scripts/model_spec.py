"""A model's config entry as a frozen, typed spec of its kind: the one place that holds the defaults.

Each kind has its own keys and no others (`SPEC_BY_KIND`):

    ModelSpec                      kind, seed, folds, resources           every kind
    +- TfidfLinearSpec             TF-IDF n-grams, C, max_iter            tfidf_linear
    +- TransformerSpec             source, precision, max_length, ...     kinds that load a transformer
       +- EmbeddingHeadSpec        pooling, embed_batch_size, C, ...      embedding_head
       +- FineTuneSpec             lr, epochs, batch_size, stages, ...    encoder_full
          +- LoraSpec              quantization, r, alpha, dropout, ...   encoder_lora, decoder_lora

Every field says who reads it, which is what decides when a change of it reruns a job:
- `steps`: the steps whose output it changes (train, predict, merge, embed, fit). A rule hands a step
  those fields only (`step_config`), as a param, so changing one reruns exactly those steps' jobs.
- no steps: the rules alone read it (which jobs and inputs exist: folds, train_full, merge, ...);
  `export` marks those that only add artifacts no prediction reads (merge, train_full).
- `run`: how a job runs, not what it makes (resources, log and checkpoint frequency, inference batch
  sizes, gradient checkpointing). Rules hand these to steps through `resources:` (`run_settings`), which
  Snakemake does not track, so changing one reruns nothing.

`config_check` merges `config_defaults(kind)` into every model entry, steps build a spec from
`--model-config` (+ `--run-settings`) and read attributes. Every key of the schema's `model` object is a
field of some kind (tests/test_model_spec.py checks both ways).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

from workflow_scripts.errors import OoflineError

LORA_KINDS = ("decoder_lora", "encoder_lora")
OFFICIAL = "official"  # the competition's own training rows, as a stage's data name

# the steps that read a model's settings (one or more rules each)
TRAIN, PREDICT, MERGE, EMBED, FIT = "train", "predict", "merge", "embed", "fit"
STEPS = (TRAIN, PREDICT, MERGE, EMBED, FIT)


def setting(default: Any = None, *, steps: tuple[str, ...] = (), run: bool = False, export: bool = False,
            factory=None) -> Any:
    """A spec field: read by `steps` (a change reruns them), by the rules only (no steps), or a run setting.
    export: it only adds artifacts that no prediction reads (merged/ copies, the full-data model)."""
    metadata = {"steps": steps, "run": run, "export": export}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class StageSpec:
    """One training stage: epochs over the named data sets, optionally at its own learning rate."""

    epochs: int
    data: tuple[str, ...] = (OFFICIAL,)
    lr: float | None = None


@dataclass(frozen=True)
class ModelSpec:
    """The keys every kind has. `ModelSpec.from_config` builds the spec of the entry's kind."""

    kind: str = field(metadata={"steps": STEPS, "run": False, "export": False})
    seed: int = setting(42, steps=(TRAIN, FIT))
    folds: tuple[int, ...] | None = setting(None)  # which fold jobs exist
    # gpu, mem_mb, runtime, threads and the Slurm keys: where and how long a job runs
    resources: Mapping[str, Any] = setting(factory=lambda: {"gpu": 0, "mem_mb": 4000, "runtime": 60}, run=True)

    is_lora: ClassVar[bool] = False
    builds_merged: ClassVar[bool] = False  # LoraSpec: merged/ export folders
    selects_best_epoch: ClassVar[bool] = False  # FineTuneSpec: select_epoch: best

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """The config keys of this kind."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_config(cls, entry: Mapping[str, Any] | "ModelSpec") -> "ModelSpec":
        """The spec of the entry's kind (defaults fill what it leaves out); a key the kind has not is an error."""
        if isinstance(entry, ModelSpec):
            return entry
        if "kind" not in entry:
            raise OoflineError("model config: key 'kind' is missing")
        spec_class = SPEC_BY_KIND.get(entry["kind"])
        if spec_class is None:
            raise OoflineError(f"model config: kind {entry['kind']!r} is not one of {', '.join(SPEC_BY_KIND)}")
        unknown = sorted(set(entry) - set(spec_class.keys()))
        if unknown:
            raise OoflineError(f"model config: {unknown_key_problem(entry['kind'], unknown[0])}")
        values = dict(entry)
        if isinstance(values.get("target_modules"), list):
            values["target_modules"] = tuple(values["target_modules"])
        for key in ("folds", "word_ngrams", "char_ngrams"):
            if values.get(key) is not None:
                values[key] = tuple(int(v) for v in values[key])
        if values.get("stages") is not None:
            values["stages"] = tuple(StageSpec(epochs=int(s["epochs"]), data=tuple(s.get("data", [OFFICIAL])),
                                               lr=s.get("lr")) for s in values["stages"])
        return spec_class(**values)

    @classmethod
    def from_json(cls, text: str, run_settings: str | None = None) -> "ModelSpec":
        """From a step's --model-config and (optional) --run-settings JSON."""
        return cls.from_config({**json.loads(text), **json.loads(run_settings or "{}")})

    def to_config(self) -> dict[str, Any]:
        """The entry as plain JSON-able values (the shape config.yaml uses)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def step_config(self, step: str) -> dict[str, Any]:
        """The settings `step` reads: what its output depends on (a rule's --model-config param)."""
        config = self.to_config()
        return {f.name: config[f.name] for f in dataclasses.fields(self) if step in f.metadata["steps"]}

    def run_settings(self) -> dict[str, Any]:
        """How a job runs, not what it makes (a step's --run-settings; resources reach the rule itself)."""
        config = self.to_config()
        return {f.name: config[f.name] for f in dataclasses.fields(self)
                if f.metadata["run"] and f.name != "resources" and config[f.name] is not None}

    def prediction_config(self) -> dict[str, Any]:
        """What the model's predictions depend on: every setting but run settings and export-only keys
        (a submission's manifest hashes it)."""
        config = self.to_config()
        return {f.name: config[f.name] for f in dataclasses.fields(self)
                if not (f.metadata["run"] or f.metadata["export"])}

    @property
    def gpu_count(self) -> int:
        """GPUs one job of the model asks for: `gpu`, or the count at the end of `gres` (gpu:h100:2)."""
        resources = self.resources or {}
        gres = resources.get("gres") or ""
        count = gres.rsplit(":", 1)[-1] if gres.count(":") >= 1 else ""
        return int(resources.get("gpu") or 0) or (int(count) if count.isdigit() else 1 if gres else 0)

    def lora_settings(self) -> dict[str, Any] | None:
        """{r, alpha, dropout, target_modules} for modeling.load_classifier; None for full fine-tunes."""
        return None


@dataclass(frozen=True)
class TfidfLinearSpec(ModelSpec):
    """`tfidf_linear`: TF-IDF n-grams (word and/or character; null turns one off), a logistic regression per fold."""

    word_ngrams: tuple[int, int] | None = setting((1, 2), steps=(FIT,))
    char_ngrams: tuple[int, int] | None = setting(None, steps=(FIT,))
    min_df: int = setting(1, steps=(FIT,))
    max_features: int | None = setting(None, steps=(FIT,))
    sublinear_tf: bool = setting(True, steps=(FIT,))
    C: float = setting(4.0, steps=(FIT,))
    max_iter: int = setting(1000, steps=(FIT,))


@dataclass(frozen=True)
class TransformerSpec(ModelSpec):
    """The keys of every kind that loads a transformer model from `source`."""

    # steps get the materialised base as --base; the rules resolve `source`
    source: str | None = setting(None)
    trust_remote_code: bool = setting(False, steps=(TRAIN, PREDICT, MERGE, EMBED))
    # auto: bf16 on a GPU with native bf16 (fp16 on an older one: a T4 only emulates it), fp32 on the CPU
    precision: str = setting("auto", steps=(TRAIN, PREDICT, MERGE, EMBED))
    # None: transformers chooses (sdpa where the family has it, else eager: DeBERTa-v2/v3, Gemma-2); left out of
    # the merged defaults. config_check rejects a kernel the model's family cannot use.
    attn_implementation: str | None = setting(None, steps=(TRAIN, PREDICT, EMBED))
    max_length: int = setting(256, steps=(TRAIN, PREDICT, EMBED))


@dataclass(frozen=True)
class EmbeddingHeadSpec(TransformerSpec):
    """`embedding_head`: frozen pooled embeddings computed once, a logistic regression per fold."""

    pooling: str = setting("mean", steps=(EMBED,))
    # rows per forward pass: padding differs, the embeddings only at float rounding (docs/reruns.md)
    embed_batch_size: int = setting(64, run=True)
    C: float = setting(1.0, steps=(FIT,))
    max_iter: int = setting(1000, steps=(FIT,))


@dataclass(frozen=True)
class FineTuneSpec(TransformerSpec):
    """`encoder_full`: every weight trains, per fold (and on every row with train_full)."""

    lr: float | None = setting(steps=(TRAIN,))  # no sensible default: training without one is an error
    scheduler: str = setting("linear", steps=(TRAIN,))
    warmup_ratio: float = setting(0.0, steps=(TRAIN,))
    weight_decay: float = setting(0.0, steps=(TRAIN,))
    label_smoothing: float = setting(0.0, steps=(TRAIN,))
    max_grad_norm: float = setting(1.0, steps=(TRAIN,))
    epochs: int = setting(1, steps=(TRAIN,))
    # None is `last`: left out of the merged defaults, so a config that does not set it plans the same jobs
    select_epoch: str | None = setting(steps=(TRAIN,))
    batch_size: int = setting(16, steps=(TRAIN,))
    grad_accum: int = setting(1, steps=(TRAIN,))
    stages: tuple[StageSpec, ...] | None = setting(steps=(TRAIN,))
    # None: twice batch_size (no gradients, so twice fits); batches differ in padding only (docs/reruns.md)
    predict_batch_size: int | None = setting(run=True)
    log_every: int = setting(10, run=True)
    checkpoint_every: int = setting(50, run=True)
    # on: recomputing activations in the backward costs ~20-30% compute but is what lets a 7-14B
    # decoder train on long rows in one GPU's memory; the gradients are the same to rounding
    # (tests/test_device_training.py), so it is a run setting
    gradient_checkpointing: bool = setting(True, run=True)
    train_full: bool = setting(False, export=True)  # test_predictions: full is what makes predictions read it
    test_predictions: str = setting("folds")  # folds: the fold models' mean; full: the full-data model's
    corrected_by: str | None = setting(None)  # the rules read label_correction/NAME instead of the labels
    extra_data: Mapping[str, str] = setting(factory=dict)  # the rules hand the files as --extra NAME=PATH

    quantization: ClassVar[str] = "none"  # every weight of a full fine-tune trains

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

    def run_settings(self) -> dict[str, Any]:
        # predict reads the resolved size: its --model-config has no batch_size
        return {**super().run_settings(), "predict_batch_size": self.prediction_batch_size}

    def require_lr(self) -> float:
        if self.lr is None:
            raise OoflineError("model config: key 'lr' is required to train")
        return float(self.lr)


@dataclass(frozen=True)
class LoraSpec(FineTuneSpec):
    """`encoder_lora`, `decoder_lora`: LoRA (QLoRA with quantization) adapters on a frozen base."""

    quantization: str = setting("none", steps=(TRAIN, PREDICT, MERGE))
    r: int = setting(8, steps=(TRAIN,))
    alpha: float = setting(16, steps=(TRAIN,))
    dropout: float = setting(0.05, steps=(TRAIN,))
    target_modules: str | tuple[str, ...] = setting("all-linear", steps=(TRAIN,))
    # None: a merged/ copy for GPU models only; on the CPU prediction reads base + adapter anyway, so a
    # merged copy is only an export that costs a job per fold (`merge: true` asks for it)
    merge: bool | None = setting(None, export=True)

    is_lora: ClassVar[bool] = True

    @property
    def builds_merged(self) -> bool:
        """Whether the workflow builds merged/ folders for this LoRA model (see `merge`)."""
        return self.merge if self.merge is not None else self.gpu_count > 0

    def lora_settings(self) -> dict[str, Any]:
        target = list(self.target_modules) if isinstance(self.target_modules, tuple) else self.target_modules
        return {"r": self.r, "alpha": self.alpha, "dropout": self.dropout, "target_modules": target}


SPEC_BY_KIND: dict[str, type[ModelSpec]] = {
    "tfidf_linear": TfidfLinearSpec, "embedding_head": EmbeddingHeadSpec, "encoder_full": FineTuneSpec,
    "encoder_lora": LoraSpec, "decoder_lora": LoraSpec,
}


def kind_keys(kind: str) -> tuple[str, ...]:
    """The config keys a model of `kind` has (none for an unknown kind: the schema reports that)."""
    spec_class = SPEC_BY_KIND.get(kind)
    return spec_class.keys() if spec_class else ()


def unknown_key_problem(kind: str, key: str) -> str:
    """The one line for a key that a kind has not: `tfidf_linear models have no r (a key of ...)`."""
    owners = [k for k, spec_class in SPEC_BY_KIND.items() if key in spec_class.keys()]
    if owners:
        return f"{kind} models have no {key} (a key of {', '.join(owners)})"
    return f"unknown key {key!r} ({kind} models have {', '.join(sorted(kind_keys(kind)))})"


def config_defaults(kind: str) -> dict[str, Any]:
    """Defaults merged into every model entry of that kind (fields whose default is not None), JSON-shaped."""
    defaults: dict[str, Any] = {}
    for spec_field in dataclasses.fields(SPEC_BY_KIND[kind]):
        if spec_field.default is not dataclasses.MISSING and spec_field.default is not None:
            defaults[spec_field.name] = spec_field.default
        elif spec_field.default_factory is not dataclasses.MISSING:
            value = spec_field.default_factory()
            if value:  # an empty mapping is the same as the key left out
                defaults[spec_field.name] = value
    return json.loads(json.dumps(defaults))
