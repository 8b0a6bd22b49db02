"""Small I/O helpers shared by every step: atomic writes, JSON, parquet."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import polars as pl

from workflow_scripts.errors import OoflineError


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto `target` only if the block finishes.

    Works for files and directories, so an output exists only when its step finished.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    tmp_path = tmp_dir / target.name
    try:
        yield tmp_path
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        os.replace(tmp_path, target)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def write_json(payload: Any, path: str | Path) -> None:
    """Write JSON deterministically (sorted keys, fixed indentation), atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.exists():
        raise OoflineError(f"file not found: {path}")
    return json.loads(path.read_text())


def write_parquet(frame: pl.DataFrame, path: str | Path) -> None:
    """Write parquet without statistics that vary between runs, atomically (byte-identical reruns)."""
    with atomic_path(path) as tmp:
        frame.write_parquet(tmp, compression="zstd", statistics=False)


def read_table(path: str | Path) -> pl.DataFrame:
    """Read a csv or parquet file; a missing or unreadable file is an OoflineError naming it."""
    path = Path(path)
    if not path.exists():
        raise OoflineError(f"file not found: {path}")
    try:
        if path.suffix == ".parquet":
            return pl.read_parquet(path)
        if path.suffix in {".csv", ".gz", ".bz2"}:
            return pl.read_csv(path, infer_schema_length=10000)
        if path.suffix in {".jsonl", ".ndjson"}:
            return pl.read_ndjson(path)
    except Exception as error:  # polars raises many types; the user needs the file name
        raise OoflineError(f"cannot read {path}: {error}") from error
    raise OoflineError(f"{path}: unsupported file type {path.suffix!r} (expected .csv or .parquet)")
