"""The label layout of a task: which probability columns a model outputs and how heads group them.

Every prediction file (OOF, test, ensemble) has `id` (and `fold` for OOF) plus one float column per
entry of `LabelSpec.probability_columns`, in that order:
- multiclass: one column per class, named by the class;
- multilabel: one column per label (probability that the label is on);
- multihead: a binary head is one column named by the head; a multiclass head is one column per
  class named `{head}={class}`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from workflow_scripts.errors import OoflineError

RESERVED_COLUMNS = {"id", "fold"}


@dataclass(frozen=True)
class Head:
    """One output head: `binary` (one column) or `multiclass` (softmax over `classes`)."""

    name: str
    type: str  # "binary" | "multiclass"
    source_column: str  # column in the training data holding this head's label
    classes: tuple[str, ...] = ()  # multiclass only, sorted

    def columns(self, task: str) -> list[str]:
        if self.type == "binary":
            return [self.name]
        if task == "multiclass":
            return list(self.classes)
        return [f"{self.name}={label}" for label in self.classes]


@dataclass(frozen=True)
class LabelSpec:
    task: str  # multiclass | multilabel | multihead
    heads: tuple[Head, ...] = field(default_factory=tuple)

    @property
    def probability_columns(self) -> list[str]:
        return [column for head in self.heads for column in head.columns(self.task)]

    def head_slices(self) -> list[tuple[Head, slice]]:
        """Each head with the slice of probability columns it owns."""
        slices, start = [], 0
        for head in self.heads:
            width = len(head.columns(self.task))
            slices.append((head, slice(start, start + width)))
            start += width
        return slices

    @property
    def binary_columns(self) -> list[str]:
        return [head.name for head in self.heads if head.type == "binary"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "heads": [
                {"name": h.name, "type": h.type, "source_column": h.source_column, "classes": list(h.classes)}
                for h in self.heads
            ],
            "probability_columns": self.probability_columns,
        }

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> "LabelSpec":
        heads = tuple(
            Head(h["name"], h["type"], h["source_column"], tuple(h.get("classes", ()))) for h in payload["heads"]
        )
        return cls(payload["task"], heads)

    def save(self, path: str | Path) -> None:
        from workflow_scripts.io import write_json

        write_json(self.to_dict(), path)

    @classmethod
    def load(cls, path: str | Path) -> "LabelSpec":
        path = Path(path)
        if not path.exists():
            raise OoflineError(f"label spec not found: {path}")
        return cls.from_dict(json.loads(path.read_text()))

    def targets(self, frame: pl.DataFrame, source: str = "training data") -> np.ndarray:
        """Hard targets as (n_rows, n_columns) float32: one-hot per multiclass head, 0/1 per binary head."""
        blocks = []
        for head, _ in self.head_slices():
            if head.source_column not in frame.columns:
                raise OoflineError(f"{source}: label column {head.source_column!r} is missing")
            values = frame[head.source_column]
            if values.null_count():
                raise OoflineError(f"{source}: column {head.source_column!r} has {values.null_count()} missing labels")
            if head.type == "binary":
                numeric = values.cast(pl.Float32, strict=False)
                if numeric.null_count() or not numeric.is_in([0.0, 1.0]).all():
                    raise OoflineError(f"{source}: binary column {head.source_column!r} must hold only 0 and 1")
                blocks.append(numeric.to_numpy().reshape(-1, 1))
            else:
                as_text = values.cast(pl.String)
                index = {label: i for i, label in enumerate(head.classes)}
                unknown = sorted(set(as_text.unique().to_list()) - index.keys())
                if unknown:
                    raise OoflineError(
                        f"{source}: column {head.source_column!r} has labels never seen in training: {unknown[:5]}"
                    )
                one_hot = np.zeros((frame.height, len(head.classes)), dtype=np.float32)
                one_hot[np.arange(frame.height), [index[v] for v in as_text.to_list()]] = 1.0
                blocks.append(one_hot)
        return np.concatenate(blocks, axis=1).astype(np.float32)


def expand_label_columns(label_columns: str | list[str], train: pl.DataFrame) -> list[str]:
    """task.label_columns as a list: a glob string (`"lab_*"`) matches training columns, in file order."""
    if not isinstance(label_columns, str):
        return list(label_columns)
    from fnmatch import fnmatchcase

    matched = [column for column in train.columns if fnmatchcase(column, label_columns)]
    if not matched:
        raise OoflineError(f"task.label_columns: the pattern {label_columns!r} matches no training column "
                           f"(have {train.columns[:10]})")
    return matched


def label_column_keys(task_config: dict[str, Any]) -> dict[str, str]:
    """{label column: the config key that names it}, e.g. {'topic': 'task.label_column'}."""
    task = task_config.get("type")
    if task == "multiclass":
        return {task_config["label_column"]: "task.label_column"}
    if task == "multilabel":
        columns = task_config["label_columns"]
        if isinstance(columns, str):  # a glob: expand_label_columns names the pattern when it matches nothing
            return {}
        return {column: f"task.label_columns[{i}]" for i, column in enumerate(columns)}
    if task == "multihead":
        return {h.get("column", h["name"]): f"task.heads[{i}]." + ("column" if "column" in h else "name")
                for i, h in enumerate(task_config["heads"])}
    return {}


def build_label_spec(task_config: dict[str, Any], train: pl.DataFrame, source: str = "training data") -> LabelSpec:
    """Derive the label layout from the task config and the training labels (classes sorted as strings)."""
    task = task_config["type"]
    for column, key in label_column_keys(task_config).items():
        if column not in train.columns:
            raise OoflineError(f"{source}: label column {column!r} (config {key}) is missing (have {train.columns[:10]})")

    def classes_of(column: str) -> tuple[str, ...]:
        return tuple(sorted(train[column].drop_nulls().cast(pl.String).unique().to_list()))

    if task == "multiclass":
        column = task_config["label_column"]
        heads = (Head(column, "multiclass", column, classes_of(column)),)
    elif task == "multilabel":
        heads = tuple(Head(column, "binary", column) for column in expand_label_columns(task_config["label_columns"], train))
    elif task == "multihead":
        heads = tuple(
            Head(h["name"], h["type"], h.get("column", h["name"]),
                 classes_of(h.get("column", h["name"])) if h["type"] == "multiclass" else ())
            for h in task_config["heads"]
        )
    else:
        raise OoflineError(f"task.type {task!r} has no label columns (expected multiclass, multilabel or multihead)")
    spec = LabelSpec(task, heads)
    clash = RESERVED_COLUMNS & set(spec.probability_columns)
    if clash:
        raise OoflineError(f"label names {sorted(clash)} clash with reserved prediction columns id/fold")
    if len(set(spec.probability_columns)) != len(spec.probability_columns):
        raise OoflineError("task: two heads or classes produce the same probability column name")
    return spec


def aligned_probabilities(frame: pl.DataFrame, spec: LabelSpec, ids: pl.Series, source: str) -> np.ndarray:
    """A prediction frame's probability columns in the order of `ids`: (len(ids), n_columns) float64.

    Every id needs exactly one row and every value must lie in [0, 1]; errors name `source` and the column.
    """
    columns = spec.probability_columns
    missing = [c for c in ["id", *columns] if c not in frame.columns]
    if missing:
        raise OoflineError(f"{source}: missing column(s) {missing[:5]} (expected id and the label spec's probability columns)")
    if frame["id"].is_duplicated().any():
        raise OoflineError(f"{source}: column 'id' has duplicates, e.g. {frame.filter(pl.col('id').is_duplicated())['id'][0]!r}")
    aligned = pl.DataFrame({"id": ids}).join(
        frame.select(["id", *columns]).with_columns(pl.col("id").cast(ids.dtype)), on="id", how="left")
    absent = aligned.filter(pl.any_horizontal(pl.col(columns).is_null()))
    if absent.height:
        raise OoflineError(f"{source}: no prediction for {absent.height} id(s), e.g. {absent['id'][0]!r}")
    values = aligned.select(columns).to_numpy().astype(np.float64)
    bad = ~np.isfinite(values).all(axis=0) | (np.nan_to_num(values) < 0).any(axis=0) | (np.nan_to_num(values) > 1).any(axis=0)
    if bad.any():
        raise OoflineError(f"{source}: probability column {columns[int(np.argmax(bad))]!r} must be within [0, 1]")
    return values
