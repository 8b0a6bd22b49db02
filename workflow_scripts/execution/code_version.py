"""A digest of a step's code, so that editing a step reruns it.

Snakemake reruns a job when its rule's text changes, not when a module its command imports changes.
Every rule therefore passes `code=code_digest("<step module>")` as a param: the digest covers that module
and every workflow_scripts module it imports, directly or through others, as parsed syntax, so comments
and formatting do not count but any change to what runs does.

    python -m workflow_scripts.execution.code_version retrieval.mining   # the digest and the modules it covers
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
PACKAGE_DIR = Path(__file__).resolve().parent.parent


def module_file(module: str, package_dir: Path) -> Path | None:
    """The file of a dotted module name relative to the package (`retrieval.mining`), or None."""
    base = package_dir.joinpath(*module.split(".")) if module else package_dir
    for candidate in (base.with_suffix(".py") if module else None, base / "__init__.py"):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def imported_modules(tree: ast.AST, current: str, package_dir: Path, package: str = PACKAGE) -> set[str]:
    """Dotted names (relative to the package) of the package modules that `tree` imports.

    `current` is the importing module's dotted name, so relative imports resolve from its subpackage;
    `from a import b` counts `a.b` when it is a module, else `a` (a name defined in `a`).
    """
    names: set[str] = set()
    current_parts = current.split(".")
    is_package = module_file(current, package_dir) == package_dir.joinpath(*current_parts) / "__init__.py"
    parent_parts = current_parts if is_package else current_parts[:-1]

    def add(target_parts: list[str], imported: list[str]) -> None:
        target = ".".join(target_parts)
        if target and module_file(target, package_dir):
            names.add(target)
        for name in imported:
            submodule = ".".join(target_parts + [name])
            if module_file(submodule, package_dir):
                names.add(submodule)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == package and len(parts) > 1:
                    for depth in range(2, len(parts) + 1):  # importing a.b.c also runs a and a.b
                        add(parts[1:depth], [])
        elif isinstance(node, ast.ImportFrom):
            module_parts = node.module.split(".") if node.module else []
            imported = [alias.name for alias in node.names]
            if node.level == 0 and module_parts and module_parts[0] == package:
                add(module_parts[1:], imported)
            elif node.level > 0:
                base = parent_parts[: len(parent_parts) - (node.level - 1)] if node.level > 1 else parent_parts
                add(base + module_parts, imported)
    names.discard(current)
    return names


def _parsed(module: str, package_dir: Path) -> tuple[str, frozenset[str]]:
    path = module_file(module, package_dir)
    return _parse_source(path.read_text(), module, str(package_dir))


@lru_cache(maxsize=None)  # keyed on the text: every rule's digest reads the shared modules again
def _parse_source(source: str, module: str, package_dir: str) -> tuple[str, frozenset[str]]:
    tree = ast.parse(source, filename=module)
    return ast.dump(tree), frozenset(imported_modules(tree, module, Path(package_dir)))


def module_closure(module: str, package_dir: Path = PACKAGE_DIR) -> list[str]:
    """`module` (dotted, relative to the package) and every package module it imports, transitively, sorted."""
    if not module or module_file(module, package_dir) is None:
        raise OoflineError(f"code_version: no module {module!r} in {package_dir}")
    seen, pending = set(), [module]
    while pending:
        name = pending.pop()
        if name in seen or module_file(name, package_dir) is None:
            continue
        seen.add(name)
        pending.extend(_parsed(name, package_dir)[1] - seen)
    return sorted(seen)


def code_digest(module: str, package_dir: Path = PACKAGE_DIR) -> str:
    """Short sha256 of the parsed syntax of `module` and its package imports (subpackages included)."""
    digest = hashlib.sha256()
    for name in module_closure(module, package_dir):
        digest.update(name.encode() + b"\0" + _parsed(name, package_dir)[0].encode() + b"\0")
    return digest.hexdigest()[:16]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("module", help="a step module, dotted below workflow_scripts: train, retrieval.mining")
    args = parser.parse_args(argv)
    print(code_digest(args.module))
    print("covers: " + " ".join(module_closure(args.module)))


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
