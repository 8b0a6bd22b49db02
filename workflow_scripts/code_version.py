"""A digest of a step's code, so that editing a step reruns it.

Snakemake reruns a job when its rule's text changes, not when a module its command imports changes.
Every rule therefore passes `code=code_digest("<step module>")` as a param: the digest covers that module
and every workflow_scripts module it imports, directly or through others, as parsed syntax, so comments
and formatting do not count but any change to what runs does.

    python -m workflow_scripts.code_version train     # the digest and the modules it covers
"""
from __future__ import annotations

import argparse
import ast
import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Sequence

from workflow_scripts.errors import OoflineError, run_cli

PACKAGE = "workflow_scripts"
PACKAGE_DIR = Path(__file__).resolve().parent


def imported_modules(tree: ast.AST, package: str = PACKAGE) -> set[str]:
    """Names of the package's modules that `tree` imports (absolute or relative, at any depth)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == package and len(parts) > 1:
                    names.add(parts[1])
        elif isinstance(node, ast.ImportFrom):
            parts = (node.module or "").split(".") if node.module else []
            if node.level == 0 and parts and parts[0] == package:
                names.update([parts[1]] if len(parts) > 1 else [alias.name for alias in node.names])
            elif node.level == 1:
                names.update([parts[0]] if parts else [alias.name for alias in node.names])
    return names


def _parsed(path: Path) -> tuple[str, frozenset[str]]:
    return _parse_source(path.read_text(), str(path))


@lru_cache(maxsize=None)  # keyed on the text: every rule's digest reads the shared modules again
def _parse_source(source: str, filename: str) -> tuple[str, frozenset[str]]:
    tree = ast.parse(source, filename=filename)
    return ast.dump(tree), frozenset(imported_modules(tree))


def module_closure(module: str, package_dir: Path = PACKAGE_DIR) -> list[str]:
    """`module` and every package module it imports, transitively, sorted."""
    if not (package_dir / f"{module}.py").is_file():
        raise OoflineError(f"code_version: no module {module!r} in {package_dir}")
    seen, pending = set(), [module]
    while pending:
        name = pending.pop()
        path = package_dir / f"{name}.py"
        if name in seen or not path.is_file():  # a subpackage or a name imported from __init__
            continue
        seen.add(name)
        pending.extend(_parsed(path)[1] - seen)
    return sorted(seen)


def code_digest(module: str, package_dir: Path = PACKAGE_DIR) -> str:
    """Short sha256 of the parsed syntax of `module` and its package imports."""
    digest = hashlib.sha256()
    for name in module_closure(module, package_dir):
        digest.update(name.encode() + b"\0" + _parsed(package_dir / f"{name}.py")[0].encode() + b"\0")
    return digest.hexdigest()[:16]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("module", help="a step module, e.g. train")
    args = parser.parse_args(argv)
    print(code_digest(args.module))
    print("covers: " + " ".join(module_closure(args.module)))


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
