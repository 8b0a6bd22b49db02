"""One exception type for errors a user can cause, and the CLI wrapper that prints it."""
from __future__ import annotations

import sys
from typing import Callable, Sequence


class OoflineError(Exception):
    """A problem the user can fix: the message names the key, file or column and what was expected."""


def run_cli(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None) -> int:
    """Run a step's main(); print an OoflineError as one line, without a traceback, and exit 2."""
    try:
        main(argv)
    except OoflineError as error:
        print(f"oofline error: {error}", file=sys.stderr)
        return 2
    return 0
