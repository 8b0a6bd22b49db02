"""Raw competition files -> task rows, by a function of the user's (`data.prepare`, a retrieval pipeline's `prepare`).

`prepare: prepare/eedi.py:queries_from_wide` names a Python file and a function in it, called once per file as
`function(frame, split) -> polars.DataFrame` with `split` one of train, test (and corpus for a retrieval
pipeline). The step reads each raw file, calls the function and checks the columns the task needs before
anything else runs: a function that raises, returns something that is not a frame, or lacks a column is one
`oofline error:` line naming the function and the column.

The file is found relative to the working directory, else relative to the oofline checkout (where the recipes'
own functions live, `prepare/`). Its digest (`source_digest`: the parsed code, so a comment or a blank line
reruns nothing) is a rule param, so an edit reruns what follows, and it is part of the submission's manifest;
a Kaggle package ships the file and its notebook runs the same function on the raw hidden test.

A csv reaches the function with every column as text (`read_raw`), so a hidden test whose rows would infer
other types is read as the public one was; parquet and jsonl keep their types.

    python -m workflow_scripts.prepare --function prepare/eedi.py:queries_from_wide \
        --split train data/eedi/train.csv results/eedi/prepared/train.parquet --require train id,query,positive_ids
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import importlib.util
import io
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import polars as pl

from workflow_scripts.errors import OoflineError, run_cli
from workflow_scripts.io import write_parquet

CHECKOUT = Path(__file__).resolve().parent.parent


def parse_reference(reference: str, where: str = "data.prepare") -> tuple[str, str]:
    """'prepare/eedi.py:queries_from_wide' -> ('prepare/eedi.py', 'queries_from_wide')."""
    path, _, name = str(reference).rpartition(":")
    if not path.endswith(".py") or not name.isidentifier():
        raise OoflineError(f"config: {where}: {reference!r} is not FILE.py:FUNCTION (e.g. prepare/eedi.py:queries_from_wide)")
    return path, name


def resolve_file(path: str, base_dir: str | Path = ".", where: str = "data.prepare") -> Path:
    """The function's file: as given when absolute, else under `base_dir` (the working directory), else under
    the oofline checkout."""
    candidates = [Path(path)] if Path(path).is_absolute() else [Path(base_dir) / path, CHECKOUT / path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise OoflineError(f"config: {where}: {path} is not a file (looked in {', '.join(str(c.parent) for c in candidates)})")


def source_digest(path: str | Path) -> str:
    """sha256 of the file's parsed code (comments and layout left out); of its bytes when it does not parse."""
    source = Path(path).read_bytes()
    try:
        text = ast.dump(ast.parse(source), include_attributes=False)
    except SyntaxError:
        return hashlib.sha256(source).hexdigest()
    return hashlib.sha256(text.encode()).hexdigest()


def reference_digest(reference: str | None, base_dir: str | Path = ".", where: str = "data.prepare") -> str | None:
    """The digest a rule takes as its param (None without a prepare function)."""
    if not reference:
        return None
    path, _ = parse_reference(reference, where)
    return source_digest(resolve_file(path, base_dir, where))[:16]


def load_function(path: str | Path, name: str, reference: str) -> Callable[[pl.DataFrame, str], Any]:
    """Import `path` as a module of its own (it may import its neighbours) and return its function `name`."""
    path = Path(path).resolve()
    module_name = f"oofline_prepare_{hashlib.sha256(str(path).encode()).hexdigest()[:12]}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise OoflineError(f"prepare {reference}: cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    except Exception as error:  # the user's module: any error, one line
        raise OoflineError(f"prepare {reference}: importing {path.name} raised {type(error).__name__}: "
                           f"{_one_line(error)}") from error
    finally:
        sys.path.remove(str(path.parent))
    function = getattr(module, name, None)
    if not callable(function):
        raise OoflineError(f"prepare {reference}: {path.name} has no function {name!r}")
    return function


def read_raw(path: str | Path) -> pl.DataFrame:
    """A raw competition file as the function receives it: a csv with every column as text; parquet and jsonl typed."""
    from workflow_scripts.io import read_table

    path = Path(path)
    if path.suffix in {".csv", ".gz", ".bz2"}:
        if not path.exists():
            raise OoflineError(f"file not found: {path}")
        try:
            return pl.read_csv(path, infer_schema=False)
        except Exception as error:  # polars raises many types; the user needs the file name
            raise OoflineError(f"cannot read {path}: {_one_line(error)[:300]}") from error
    return read_table(path, ())


def apply(function: Callable, frame: pl.DataFrame, split: str, required: Sequence[str], reference: str,
          source: str) -> pl.DataFrame:
    """The function's rows for one file, checked: a frame (pandas is converted) holding every `required` column,
    as it would be after a parquet round trip (what the next step reads)."""
    try:
        rows = function(frame, split)
    except OoflineError as error:
        raise OoflineError(f"prepare {reference}: on {source} ({split}): {error}") from error
    except Exception as error:  # the user's code: any error, one line naming it
        raise OoflineError(f"prepare {reference}: on {source} ({split}) it raised {type(error).__name__}: "
                           f"{_one_line(error)}") from error
    if not isinstance(rows, pl.DataFrame) and type(rows).__module__.startswith("pandas"):
        rows = pl.from_pandas(rows)
    if not isinstance(rows, pl.DataFrame):
        raise OoflineError(f"prepare {reference}: on {source} ({split}) it returned {type(rows).__name__}, not a "
                           "polars (or pandas) DataFrame")
    missing = [column for column in required if column not in rows.columns]
    if missing:
        raise OoflineError(f"prepare {reference}: on {source} ({split}) its rows lack column {missing[0]!r}"
                           + (f" (and {missing[1:]})" if missing[1:] else "")
                           + f"; the task needs {list(required)}, it returned {rows.columns}")
    if rows.height == 0:
        raise OoflineError(f"prepare {reference}: on {source} ({split}) it returned no rows")
    buffer = io.BytesIO()
    rows.write_parquet(buffer)
    buffer.seek(0)
    return pl.read_parquet(buffer)


def prepare_file(reference: str, raw_path: str | Path, split: str, required: Sequence[str],
                 base_dir: str | Path = ".", function: Callable | None = None) -> pl.DataFrame:
    """Read one raw file and return its task rows (the step and a package's notebook both call this)."""
    if function is None:
        path, name = parse_reference(reference)
        function = load_function(resolve_file(path, base_dir), name, reference)
    return apply(function, read_raw(raw_path), split, required, reference, str(raw_path))


def classification_required(task: Mapping[str, Any], split: str) -> list[str]:
    """The columns a classification task reads from a prepared file: the id column, the text template's columns
    and, for train, the label columns (or the label template's)."""
    from workflow_scripts.data import template_columns

    columns = [task.get("id_column", "id"), *template_columns(task.get("text_template", "{text}"))]
    if split == "train" and task.get("type") != "generative":
        if task.get("label_template"):
            columns += template_columns(task["label_template"])
        elif task.get("label_column"):
            columns.append(task["label_column"])
        columns += list(task.get("label_columns") or [])
        columns += [head.get("column", head["name"]) for head in task.get("heads") or []]
    return list(dict.fromkeys(columns))


# a retrieval pipeline's prepared files: what retrieval.data validates
RETRIEVAL_REQUIRED = {"train": ["id", "query", "positive_ids"], "test": ["id", "query"], "corpus": ["id", "text"]}


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or repr(error)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--function", required=True, help="FILE.py:FUNCTION")
    parser.add_argument("--split", nargs=3, action="append", required=True, metavar=("SPLIT", "RAW", "OUT"),
                        help="a raw file and where its rows go; repeat per file")
    parser.add_argument("--require", nargs=2, action="append", default=[], metavar=("SPLIT", "COLUMNS"),
                        help="comma-separated columns the rows of SPLIT must have")
    args = parser.parse_args(argv)
    required = {split: [c for c in columns.split(",") if c] for split, columns in args.require}
    path, name = parse_reference(args.function)
    function = load_function(resolve_file(path), name, args.function)
    prepared = []
    for split, raw, _ in args.split:  # every file checked before any is written
        prepared.append(prepare_file(args.function, raw, split, required.get(split, []), function=function))
    for (split, raw, out), rows in zip(args.split, prepared):
        write_parquet(rows, out)
        print(f"prepare {args.function}: {raw} ({split}) -> {rows.height} rows, columns {rows.columns} -> {out}",
              flush=True)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
