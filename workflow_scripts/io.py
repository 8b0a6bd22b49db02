"""Small I/O helpers shared by every step: atomic writes, JSON, parquet."""
from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import polars as pl

from workflow_scripts.errors import OoflineError


@contextmanager
def atomic_path(target: str | Path, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto `target` only if the block finishes.

    Works for files and directories, so an output exists only when its step finished. The temporary
    folder `.{name}.{host}.{pid}.{random}` names its owner, so one left by a killed process is removed
    by the next atomic write of the same target. durable: flush every written file to disk before the
    rename and the rename itself after it, so a power loss (not only a kill) never leaves a renamed but
    empty file (checkpoints, trained models).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f"{_temporary_prefix(target)}{socket.gethostname()}.{os.getpid()}.",
                                    dir=target.parent))
    tmp_path = tmp_dir / target.name
    try:
        yield tmp_path
        if durable:
            sync_tree(tmp_path)
        if target.exists() and (target.is_dir() or tmp_path.is_dir()):
            # move the old version aside in one rename (never a half-deleted target); it goes with tmp_dir
            os.replace(target, tmp_dir / f"{target.name}.old")
        os.replace(tmp_path, target)
        if durable:
            _sync(target.parent)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def sync_tree(path: Path) -> None:
    """fsync a file, or every file and folder under a folder (the folder itself included)."""
    if path.is_dir():
        for child in path.rglob("*"):
            _sync(child)
    _sync(path)


def _sync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _temporary_prefix(target: Path) -> str:
    return f".{target.name}."


def remove_stale_temporaries(target: str | Path) -> list[Path]:
    """Delete temporary siblings of `target` whose owning process (on this host) is gone; returns them.

    A folder whose owner is alive, runs on another host, or cannot be read from its name is kept.
    """
    target = Path(target)
    prefix, host = _temporary_prefix(target), socket.gethostname()
    removed = []
    if not target.parent.is_dir():
        return removed
    for sibling in target.parent.iterdir():
        if not sibling.name.startswith(prefix) or sibling.is_symlink() or not sibling.is_dir():
            continue
        # the random part of mkdtemp has no dots, the host may: split from the right
        owner = sibling.name[len(prefix):].rsplit(".", 2)
        if len(owner) != 3 or owner[0] != host or not owner[1].isdigit() or _process_alive(int(owner[1])):
            continue
        shutil.rmtree(sibling, ignore_errors=True)
        removed.append(sibling)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def write_json(payload: Any, path: str | Path) -> None:
    """Write JSON deterministically (sorted keys, fixed indentation), atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def inference_speed_path(output: str | Path) -> Path:
    """Where a step records how fast it predicted `output` (a dot-file beside it: manifests skip it; the
    Kaggle package's runtime plan reads it)."""
    output = Path(output)
    return output.parent / f".{output.name}.speed.json"


def write_inference_speed(output: str | Path, record: dict[str, Any]) -> None:
    """Record how long predicting the test rows took: rows, tokens, seconds, load_seconds, device, threads."""
    write_json(record, inference_speed_path(output))


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.exists():
        raise OoflineError(f"file not found: {path}")
    return json.loads(path.read_text())


def write_parquet(frame: pl.DataFrame, path: str | Path) -> None:
    """Write parquet without statistics that vary between runs, atomically (byte-identical reruns)."""
    with atomic_path(path) as tmp:
        frame.write_parquet(tmp, compression="zstd", statistics=False)


def read_table(path: str | Path, text_columns: Sequence[str] = ("id",)) -> pl.DataFrame:
    """Read a csv, parquet or jsonl file; a missing or unreadable file is an OoflineError naming it.

    `text_columns` (ids) are read as text, verbatim: a csv id `0900000` stays `0900000`, never the integer 900000.
    """
    path = Path(path)
    if not path.exists():
        raise OoflineError(f"file not found: {path}")
    as_text = {column: pl.String for column in dict.fromkeys(text_columns)}
    try:
        if path.suffix == ".parquet":
            frame = pl.read_parquet(path)
        elif path.suffix in {".csv", ".gz", ".bz2"}:
            return pl.read_csv(path, infer_schema_length=10000, schema_overrides=as_text)
        elif path.suffix in {".jsonl", ".ndjson"}:
            frame = pl.read_ndjson(path)
        else:
            raise OoflineError(f"{path}: unsupported file type {path.suffix!r} (expected .csv or .parquet)")
    except OoflineError:
        raise
    except Exception as error:  # polars raises many types; the user needs the file name
        reason = " ".join(str(error).split())  # polars messages span lines; the user gets one
        raise OoflineError(f"cannot read {path}: {reason[:300]}") from error
    # typed formats keep their types; a numeric id column becomes its text (no padding was ever stored)
    return frame.with_columns(pl.col(c).cast(pl.String) for c in as_text
                              if c in frame.columns and frame[c].dtype != pl.String and not frame[c].dtype.is_nested())
