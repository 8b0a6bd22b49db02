"""Load and validate competition files; render model text from columns with the config's template.

Every check runs before training starts and names the file and column at fault.
"""
from __future__ import annotations

import argparse
import json
import string
from pathlib import Path
from typing import Any, Sequence

import polars as pl

from workflow_scripts.errors import OoflineError, run_cli
from workflow_scripts.io import read_table, write_parquet
from workflow_scripts.labels import LabelSpec, build_label_spec


def template_columns(template: str) -> list[str]:
    """The column names a text template refers to, in order of first use."""
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
    except ValueError as error:
        raise OoflineError(f"task.text_template is not a valid template ({error}): {template!r}") from error
    if not fields:
        raise OoflineError("task.text_template names no column (expected e.g. '{text}')")
    if any(field == "" or field.isdigit() for field in fields):
        raise OoflineError("task.text_template: use named columns like '{text}', not '{}' or '{0}'")
    return list(dict.fromkeys(fields))


def render_texts(frame: pl.DataFrame, template: str, source: str) -> pl.Series:
    """Build one model input string per row; nulls render as empty strings."""
    columns = template_columns(template)
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise OoflineError(f"{source}: column(s) {missing} used by task.text_template are missing (have {frame.columns})")
    literal_parts, expressions = [], []
    for literal, field, _, _ in string.Formatter().parse(template):
        literal_parts.append(pl.lit(literal))
        if field is not None:
            literal_parts.append(pl.col(field).cast(pl.String).fill_null(""))
    expressions = pl.concat_str(literal_parts)
    return frame.select(expressions.alias("text"))["text"]


def with_label_from_template(frame: pl.DataFrame, task: dict[str, Any], source: str) -> pl.DataFrame:
    """Build the label column from other columns (MAP: `{Category}:{Misconception}`); blanks render as NA."""
    columns = template_columns(task["label_template"])
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise OoflineError(f"{source}: column(s) {missing} used by task.label_template are missing")
    filled = frame.with_columns(
        pl.col(c).cast(pl.String).fill_null("NA").replace("", "NA").alias(c) for c in columns)
    return frame.with_columns(render_texts(filled, task["label_template"], source).alias(task["label_column"]))


def validate_ids(frame: pl.DataFrame, id_column: str, source: str) -> pl.Series:
    if id_column not in frame.columns:
        raise OoflineError(f"{source}: id column {id_column!r} (task.id_column) is missing (have {frame.columns})")
    ids = frame[id_column].cast(pl.String)
    if ids.null_count():
        raise OoflineError(f"{source}: column {id_column!r} has {ids.null_count()} empty ids")
    duplicated = ids.filter(ids.is_duplicated()).unique().sort().to_list()
    if duplicated:
        raise OoflineError(f"{source}: column {id_column!r} has duplicate ids, e.g. {duplicated[:5]}")
    return ids


def clean_frame(frame: pl.DataFrame, task: dict[str, Any], source: str) -> pl.DataFrame:
    """`id`, the rendered `text`, then every other column as given (labels, groups, raw text).

    The one reading of a competition file's rows: the workflow's train and test, and a Kaggle package's
    hidden test, go through it."""
    id_column = task.get("id_column", "id")
    template = task.get("text_template", "{text}")
    if frame.height == 0:
        # caught here, not as a tokenizer traceback in the first prediction hours later
        raise OoflineError(f"{source}: the file has a header but no rows")
    if "fold" in frame.columns:
        # folds are oofline's (folds.parquet); a data column of that name would shadow them downstream
        raise OoflineError(f"{source}: column 'fold' is reserved for oofline's folds (rename it; "
                           "for predefined groups use folds.group_column)")
    ids = validate_ids(frame, id_column, source)
    texts = render_texts(frame, template, source)
    # a row is empty when every column the template uses is blank, whatever fixed words it adds
    blank = pl.all_horizontal(
        pl.col(c).cast(pl.String).fill_null("").str.strip_chars().str.len_chars() == 0
        for c in template_columns(template))
    empty = ids.filter(frame.select(blank).to_series()).to_list()
    if empty:
        raise OoflineError(f"{source}: {len(empty)} rows have empty text in the columns of task.text_template "
                           f"{template_columns(template)}, e.g. ids {empty[:5]}")
    others = [c for c in frame.columns if c not in (id_column, "id", "text")]
    return pl.DataFrame({"id": ids, "text": texts}).hstack(frame.select(others))


def template_column_types(schema: dict[str, Any], task: dict[str, Any]) -> dict[str, str]:
    """The dtype names (`Int64`, `Float64`, `String`, ...) that training read the text template's columns in, from
    the schema of the clean training data: how a Kaggle package renders them on a hidden test."""
    return {column: str(schema[column]) if column in schema else "String"
            for column in template_columns(task.get("text_template", "{text}"))}


def render_as_trained(values: pl.Series, dtype_name: str) -> pl.Series:
    """Text values (as read, never type-inferred) rendered as a column of `dtype_name` renders them: an integer
    column's `007` is `7`, a float column's `1` is `1.0`; a value that type cannot hold keeps its text (a decimal in
    an integer column stays `1.5`, where a type inferred per file would crash or turn every `1` into `1.0`)."""
    dtype = getattr(pl, dtype_name, None) if dtype_name.isidentifier() else None
    values = values.cast(pl.String)
    if dtype is None or dtype == pl.String:
        return values
    if dtype == pl.Boolean:
        lower = values.str.to_lowercase()
        return pl.Series(values.name, [low if low in ("true", "false") else raw
                                       for raw, low in zip(values.to_list(), lower.to_list())], dtype=pl.String)
    if not (dtype.is_integer() or dtype.is_float()):
        return values
    rendered = values.str.strip_chars().cast(dtype, strict=False).cast(pl.String)
    return rendered.fill_null(values) if values.null_count() < len(values) else values


def read_rows_as_trained(path: str | Path, task: dict[str, Any], column_types: dict[str, str]
                         ) -> tuple[pl.DataFrame, list[str]]:
    """(`id` and rendered `text` of every row of a hidden test, in file order; the ids of its blank rows).

    Never stops on a row: every column is read as text (no type inferred per file, so a decimal after row 10,000
    cannot crash the read and an early one cannot turn `1` into `1.0`), the template's columns are rendered as
    training rendered them (`column_types`, from `template_column_types`), a row whose template columns are all
    blank is kept (its text is the template's fixed words) and listed, ids are kept verbatim (an empty one as '').
    Only a missing id or template column, or an unreadable file, is an OoflineError."""
    from workflow_scripts.io import read_table

    id_column = task.get("id_column", "id")
    template = task.get("text_template", "{text}")
    path = Path(path)
    if path.suffix in {".csv", ".gz", ".bz2"}:
        if not path.exists():
            raise OoflineError(f"file not found: {path}")
        try:
            frame = pl.read_csv(path, infer_schema=False)
        except Exception as error:  # polars raises many types; the user needs the file name
            raise OoflineError(f"cannot read {path}: {' '.join(str(error).split())[:300]}") from error
    else:
        frame = read_table(path, ("id", id_column))
    return frame_rows_as_trained(frame, str(path), task, column_types)


def frame_rows_as_trained(frame: pl.DataFrame, source: str, task: dict[str, Any], column_types: dict[str, str]
                          ) -> tuple[pl.DataFrame, list[str]]:
    """read_rows_as_trained on rows already read (a shipped prepare function's output): the same rendering."""
    id_column = task.get("id_column", "id")
    template = task.get("text_template", "{text}")
    if id_column not in frame.columns:
        raise OoflineError(f"{source}: id column {id_column!r} (task.id_column) is missing (have {frame.columns})")
    columns = template_columns(template)
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise OoflineError(f"{source}: column(s) {missing} used by task.text_template are missing (have {frame.columns})")
    frame = frame.with_columns(render_as_trained(frame[column], column_types.get(column, "String")).alias(column)
                               for column in columns)
    ids = frame[id_column].cast(pl.String).fill_null("")
    blank = frame.select(pl.all_horizontal(pl.col(c).fill_null("").str.strip_chars().str.len_chars() == 0
                                           for c in columns)).to_series()
    texts = render_texts(frame, template, source)
    return pl.DataFrame({"id": ids, "text": texts}), ids.filter(blank).to_list()


def prepare_frames(train: pl.DataFrame, test: pl.DataFrame | None, task: dict[str, Any],
                   train_source: str = "train", test_source: str = "test"):
    """Validate raw competition frames and return (train, test, spec, targets).

    train: `id`, `text` and the label columns; test: `id`, `text`; targets: `id` + one float column per
    probability column of `spec` (one-hot / 0-1), the hard labels every scorer compares against.
    """
    if task.get("label_template"):
        train = with_label_from_template(train, task, train_source)
    spec = build_label_spec(task, train, train_source) if task["type"] != "generative" else None
    label_columns = [head.source_column for head in spec.heads] if spec else []
    clean_train = clean_frame(train, task, train_source)
    targets = None
    if spec is not None:
        matrix = spec.targets(clean_train, train_source)
        for head, columns in spec.head_slices():
            # a label that never varies in the whole training file is a data bug, not a rare class
            if head.type == "binary" and clean_train.height > 1 and len(set(matrix[:, columns].ravel().tolist())) == 1:
                raise OoflineError(f"{train_source}: binary column {head.source_column!r} is always "
                                   f"{matrix[0, columns][0]:g}: there is nothing to learn (check how the label was built)")
        targets = pl.DataFrame({"id": clean_train["id"]}).hstack(
            pl.DataFrame(matrix, schema=spec.probability_columns))
    clean_test = None
    if test is not None:
        clean_test = clean_frame(test, task, test_source)
        present = [c for c in label_columns if c in test.columns]
        if spec is not None and present:
            # a labelled test file must not hold classes the models can never predict
            spec.targets(test.select(present), test_source)
        overlap = set(clean_test["id"].to_list()) & set(clean_train["id"].to_list())
        if overlap:
            raise OoflineError(f"{test_source}: {len(overlap)} ids also appear in {train_source}, e.g. {sorted(overlap)[:5]}")
    return clean_train, clean_test, spec, targets


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Validate competition files and write clean train/test data.")
    parser.add_argument("--train", required=True)
    parser.add_argument("--test")
    parser.add_argument("--task", required=True, help="the config's task section as JSON")
    parser.add_argument("--train-out", required=True)
    parser.add_argument("--test-out")
    parser.add_argument("--labels-out", required=True)
    parser.add_argument("--targets-out", required=True)
    args = parser.parse_args(argv)
    task = json.loads(args.task)
    ids = ("id", task.get("id_column", "id"))  # read as text, verbatim
    train = read_table(args.train, ids)
    test = read_table(args.test, ids) if args.test else None
    clean_train, clean_test, spec, targets = prepare_frames(train, test, task, args.train, args.test or "test")
    write_parquet(clean_train, args.train_out)
    if args.test_out and clean_test is not None:
        write_parquet(clean_test, args.test_out)
    spec.save(args.labels_out)
    write_parquet(targets, args.targets_out)
    print(f"train: {clean_train.height} rows, {len(spec.probability_columns)} probability columns; "
          f"test: {0 if clean_test is None else clean_test.height} rows", flush=True)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
