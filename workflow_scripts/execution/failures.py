"""After a failed run: the `oofline error:` lines of the steps that failed, with their log paths, as the run's
last output (Snakemake's own report puts them dozens of lines up, after the shell command twice)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

PREFIX = "oofline error: "


def user_errors(log_dir: str | Path, since: float) -> list[tuple[Path, str]]:
    """(log file, its `oofline error:` line) for every step log under log_dir written at or after `since`."""
    found = []
    for log in sorted(Path(log_dir).rglob("*.log")):
        try:
            if log.stat().st_mtime < since:
                continue
            lines = log.read_text(errors="replace").splitlines()
        except OSError:  # removed or unreadable meanwhile: nothing to report from it
            continue
        found += [(log, line) for line in lines if line.startswith(PREFIX)]
    return found


def print_user_errors(log_dir: str | Path, since: float, stream: TextIO = sys.stderr) -> int:
    """Print each user error as `oofline error: ... (log: PATH)`; returns how many."""
    errors = user_errors(log_dir, since)
    for log, line in errors:
        print(f"{line} (log: {log})", file=stream, flush=True)
    return len(errors)
