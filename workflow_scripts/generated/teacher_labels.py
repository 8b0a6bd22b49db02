"""Teacher-made labels that never saw the held-out fold: which teacher models label a model's training rows.

A model trained for fold k is scored on fold k, so every label it learns from must come from a teacher model
that never trained on fold k. A *held-out set* S names what a model was trained without: split `fold2` is the
outer fold model (all folds but 2), `fold0+2` an inner model (all folds but 0 and 2), `full` every row.
A model trained without S learns, from a nested teacher T (`soft_labels.T.nested` / `label_correction.T.nested`,
default true):
- generated rows: labelled by T trained without S (`soft_labels/T/foldS/{dataset}.parquet`);
- official rows of fold i (i not in S), as soft labels or as corrected labels: labelled by T trained without
  S and i (`inner_oof/T/foldS.parquet`, the OOF of T's inner models), so the label of a fold-i row is out of
  fold for the teacher as well.
Teachers are themselves trained this way, so a chain of rounds (CDC: a corrected teacher, a round-1 student
that labels the round-2 student's rows) nests all the way down; each round that labels official rows holds
out one more fold. A teacher with `nested: false` gives today's cheap chain (the mean of its fold models on
generated rows, its OOF on official rows): its students' CV is optimistic and says so (`cv_optimistic`).

Every label file carries `label_source` per row: the teacher model(s) that made it, as `teacher/split`
(comma-separated when several were averaged), so a test (or a user) can check from the files which fold models
a label came from. CLI: `gather` writes a teacher's inner OOF for a held-out set.
"""
from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import polars as pl

from workflow_scripts.errors import OoflineError, run_cli
from workflow_scripts.io import read_table, write_parquet

SPLIT = re.compile(r"^fold(\d+(?:\+\d+)*)$")
SPLIT_PATTERN = r"fold\d+(?:\+\d+)*"  # wildcard constraint of a trained model's split (with `full`)
LABEL_SOURCE = "label_source"
OFFICIAL_ROWS = "official"  # the dataset name of soft labels on the official training rows
DATASET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*-seed\d+$")  # a generated data set, `{generator}-seed{s}`


def held_out_set(split: str) -> tuple[int, ...]:
    """The folds a split was trained without: `fold0+2` -> (0, 2), `full` -> ()."""
    if split == "full":
        return ()
    match = SPLIT.match(split)
    if not match:
        raise OoflineError(f"split {split!r}: expected fold<k>, fold<k>+<j>... or full")
    folds = tuple(int(f) for f in match.group(1).split("+"))
    if list(folds) != sorted(set(folds)):
        raise OoflineError(f"split {split!r}: folds must be distinct and ascending (e.g. fold0+2)")
    return folds


def split_name(folds: Iterable[int]) -> str:
    """The split of a model trained without these folds: (2, 0) -> `fold0+2`, () -> `full`."""
    folds = sorted(set(int(f) for f in folds))
    return "fold" + "+".join(map(str, folds)) if folds else "full"


def saw_fold(label_source: str, fold: int) -> bool:
    """Whether any teacher model named in a `label_source` value (`teacher/split`, comma-separated) trained on
    `fold`."""
    return any(fold not in held_out_set(part.rsplit("/", 1)[1]) for part in label_source.split(","))


@dataclass(frozen=True)
class LabelSource:
    """Labels a model trains on that a teacher made: corrected official labels or a soft-labelled data set."""

    teacher: str
    dataset: str  # OFFICIAL_ROWS or a generated data set name
    section: str  # the config section that sets `nested`: label_correction or soft_labels
    nested: bool
    extra_name: str | None = None  # the model's extra_data key (None for corrected_by)

    @property
    def official(self) -> bool:
        return self.dataset == OFFICIAL_ROWS

    def describe(self) -> str:
        if self.section == "label_correction":
            return f"corrected_by: {self.teacher}"
        rows = "official rows" if self.official else f"generated rows {self.dataset}"
        return f"extra_data.{self.extra_name}: soft labels of {rows} from {self.teacher}"


def teacher_label_file(out_dir: str, path: str) -> tuple[str, str] | None:
    """(teacher, dataset) when `path` is a soft-label file oofline makes (`{out_dir}/soft_labels/T/D.parquet`)."""
    relative = os.path.relpath(os.path.normpath(path), os.path.normpath(out_dir))
    parts = relative.split(os.sep)
    if len(parts) != 3 or parts[0] != "soft_labels" or not parts[2].endswith(".parquet"):
        return None
    dataset = parts[2][: -len(".parquet")]
    if dataset != OFFICIAL_ROWS and not DATASET.match(dataset):
        return None
    return parts[1], dataset


def _nested(config: Mapping[str, Any], section: str, teacher: str) -> bool:
    return bool(((config.get(section) or {}).get(teacher) or {}).get("nested", True))


def label_sources(config: Mapping[str, Any], model: str) -> list[LabelSource]:
    """The teacher-made labels `model` trains on, in config order (corrected labels first)."""
    entry = config["models"][model]
    out_dir = config.get("output_dir", "results")
    sources = []
    if entry.get("corrected_by"):
        teacher = entry["corrected_by"]
        sources.append(LabelSource(teacher, OFFICIAL_ROWS, "label_correction",
                                   _nested(config, "label_correction", teacher)))
    for name, path in (entry.get("extra_data") or {}).items():
        found = teacher_label_file(out_dir, path)
        if found:
            teacher, dataset = found
            sources.append(LabelSource(teacher, dataset, "soft_labels", _nested(config, "soft_labels", teacher), name))
    return sources


def training_files(config: Mapping[str, Any], model: str, split: str) -> dict[str, str]:
    """What `model` trained without `split`'s folds reads: `train` and `targets` (official rows, corrected or not)
    and `extra_NAME` per extra data set, as configured unless it is a nested teacher's soft labels, which come
    per held-out set. `full` reads the shared files (no CV to keep honest)."""
    held_out = held_out_set(split)
    out_dir = config.get("output_dir", "results")
    files = {"train": f"{out_dir}/data/train.parquet", "targets": f"{out_dir}/targets.parquet"}
    for source in label_sources(config, model):
        per_split = source.nested and held_out
        if source.section == "label_correction":
            stem = f"{out_dir}/label_correction/{source.teacher}" + (f"/{split}" if per_split else "")
            files.update(train=f"{stem}.parquet", targets=f"{stem}.targets.parquet")
        elif per_split:
            files[f"extra_{source.extra_name}"] = f"{out_dir}/soft_labels/{source.teacher}/{split}/{source.dataset}.parquet"
    for name, path in (config["models"][model].get("extra_data") or {}).items():
        files.setdefault(f"extra_{name}", path)
    return {key: files[key] for key in ["train", "targets", *[f"extra_{n}" for n in
                                                               (config["models"][model].get("extra_data") or {})]]}


def generator_of(dataset: str) -> str:
    return dataset.rsplit("-seed", 1)[0]


def optimistic_reasons(config: Mapping[str, Any], model: str, _seen: frozenset = frozenset()) -> list[str]:
    """Why `model`'s fold models may have learnt from labels of the fold they are scored on (empty: they did not).

    Followed through teachers' own labels, so a round-2 student of a cheap round-1 chain is flagged too."""
    if model in _seen or model not in (config.get("models") or {}):
        return []
    reasons = []
    for source in label_sources(config, model):
        teacher = source.teacher
        if not source.nested:
            made_by = ("the teacher's out-of-fold predictions, made by fold models that trained on the held-out fold"
                       if source.official else "the mean of every fold model of the teacher, held-out fold included")
            reasons.append(f"{source.describe()} is not nested ({source.section}.{teacher}.nested: false): {made_by}")
        elif ((config["models"].get(teacher) or {}).get("select_epoch")) == "best":
            reasons.append(f"{source.describe()}: {teacher} picks its epochs on the held-out fold (select_epoch: best)")
        generator = (config.get("generators") or {}).get(generator_of(source.dataset))
        if not source.official and generator is not None and not (source.nested and generator.get("nested")):
            reasons.append(f"{source.describe()}: the generator {generator_of(source.dataset)} drew its few-shot "
                           "examples from every official row, held-out fold included (generators."
                           f"{generator_of(source.dataset)}.nested: false)")
        reasons += [f"teacher {teacher}: {reason}" for reason in
                    optimistic_reasons(config, teacher, _seen | {model})]
    return list(dict.fromkeys(reasons))


def _extra_folds(config: Mapping[str, Any], model: str, path: tuple[str, ...]) -> int:
    """How many folds beyond its own held-out set the deepest inner teacher of `model` holds out."""
    deepest = 0
    for source in label_sources(config, model):
        if source.teacher in path or source.teacher not in config["models"]:
            continue  # reported by chain_problems
        below = _extra_folds(config, source.teacher, path + (source.teacher,))
        deepest = max(deepest, below + (1 if source.nested and source.official else 0))
    return deepest


def chain_problems(config: Mapping[str, Any]) -> list[str]:
    """Config errors of teacher chains: unknown or circular teachers, nested teachers that are not fine-tunes or
    pick their epochs on held-out folds, and chains that would hold out every fold."""
    models = config.get("models") or {}
    n_folds = (config.get("folds") or {}).get("n_folds", 5)
    problems = []

    def cycle(model: str, path: tuple[str, ...]) -> tuple[str, ...] | None:
        for source in label_sources(config, model):
            if source.teacher in path:
                return path + (source.teacher,)
            if source.teacher in models:
                found = cycle(source.teacher, path + (source.teacher,))
                if found:
                    return found
        return None

    for name in models:
        for source in label_sources(config, name):
            key = f"models.{name}.corrected_by" if source.extra_name is None else f"models.{name}.extra_data.{source.extra_name}"
            teacher = models.get(source.teacher)
            if teacher is None:
                problems.append(f"config: {key}: teacher {source.teacher!r} is not a model (have {sorted(models)})")
                continue
            if source.nested and teacher["kind"] in ("tfidf_linear", "embedding_head"):
                problems.append(f"config: {key}: nested labels from {source.teacher} need a fine-tune teacher "
                                f"({teacher['kind']} has no inner fold models); set {source.section}."
                                f"{source.teacher}.nested: false")
            if source.nested and teacher.get("select_epoch") == "best":
                problems.append(f"config: {key}: {source.teacher} picks its epochs on the held-out fold "
                                f"(select_epoch: best), so labels it makes for a student of that fold are not "
                                f"nested; use select_epoch: last on the teacher or set {source.section}."
                                f"{source.teacher}.nested: false")
        found = cycle(name, (name,))
        if found:
            problems.append(f"config: models.{name}: teacher labels go round in a circle ({' -> '.join(found)})")
            break
    if problems:
        return problems
    for name in models:
        held_out = 1 + _extra_folds(config, name, (name,))
        if held_out > n_folds - 1:
            nested = sorted({f"{s.section}.{s.teacher}.nested" for s in label_sources(config, name)
                             if s.nested and s.official})
            hint = ", ".join(nested) or "the nested teachers' nested"
            problems.append(
                f"config: models.{name}: its nested teacher labels need inner teacher models trained without "
                f"{held_out} folds, but folds.n_folds is {n_folds} (nothing left to train on); use folds.n_folds: "
                f"{held_out + 1} or more, or set {hint}: false (a cheaper chain, flagged cv_optimistic)")
    return problems


# ---- the inner OOF: official rows of every fold outside S, each predicted by the teacher trained without S and it


def inner_oof_files(teacher: str, split: str, n_folds: int) -> dict[int, str]:
    """{fold i: the prediction file of `teacher` trained without S and i on fold i's rows} for a held-out set S."""
    held_out = held_out_set(split)
    return {i: f"predictions/{teacher}/{split_name(held_out + (i,))}/on-fold{i}.parquet"
            for i in range(n_folds) if i not in held_out}


def gather_inner_oof(parts: Mapping[int, pl.DataFrame], folds: pl.DataFrame, teacher: str,
                     held_out: Sequence[int]) -> pl.DataFrame:
    """One row per official row outside the held-out folds, in the folds file's order: `id`, `fold`,
    `label_source` (the inner model that predicted it) and the probability columns."""
    expected = folds.filter(~pl.col("fold").is_in(list(held_out)))
    frames = []
    for fold, frame in sorted(parts.items()):
        ids = set(expected.filter(pl.col("fold") == fold)["id"].cast(pl.String).to_list())
        got = set(frame["id"].cast(pl.String).to_list())
        if ids != got:
            raise OoflineError(f"{teacher}: its predictions of fold {fold} hold {len(got)} rows, the fold has {len(ids)}")
        source = f"{teacher}/{split_name(tuple(held_out) + (fold,))}"
        frames.append(frame.drop("fold", strict=False).with_columns(pl.col("id").cast(pl.String),
                                                                     pl.lit(source).alias(LABEL_SOURCE)))
    if set(parts) != set(expected["fold"].unique().to_list()):
        raise OoflineError(f"{teacher}: inner predictions for folds {sorted(parts)}, expected "
                           f"{sorted(set(expected['fold'].to_list()))}")
    gathered = pl.concat(frames)
    keyed = expected.select(pl.col("id").cast(pl.String).alias("_key"), "fold")
    ordered = keyed.join(gathered.rename({"id": "_key"}), on="_key", how="left", maintain_order="left")
    probability_columns = [c for c in gathered.columns if c not in ("id", LABEL_SOURCE)]
    return (expected.select("id").hstack(ordered.select("fold", LABEL_SOURCE, *probability_columns)))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Gather a teacher's inner OOF for a held-out set of folds.")
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--split", required=True, help="the student's held-out set, e.g. fold0 or fold0+2")
    parser.add_argument("--folds", required=True)
    parser.add_argument("--parts", nargs="+", required=True, metavar="FOLD=PATH",
                        help="fold i = the teacher trained without the held-out set and i, predicting fold i")
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    parts = {}
    for item in args.parts:
        fold, _, path = item.partition("=")
        parts[int(fold)] = read_table(path)
    frame = gather_inner_oof(parts, read_table(args.folds), args.teacher, held_out_set(args.split))
    write_parquet(frame, args.output)
    print(f"inner OOF of {args.teacher} without {args.split}: {frame.height} rows from "
          f"{', '.join(sorted(set(frame[LABEL_SOURCE].to_list())))}", flush=True)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
