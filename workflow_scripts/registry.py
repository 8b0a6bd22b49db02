"""The registry of past submissions: freeze one as a record, and verify a record by rebuilding it.

A record (`submissions/{name}.yaml`) holds the complete config that built the submission and its
manifest (sha256 of every input, artifact and output). `verify` rebuilds the submission from that
config in a scratch folder with the same relative layout and compares every recorded sha256. Every
submission shape freezes the same way (classification, retrieval, answers: `rule_params.SUBMISSION_SHAPES`), and
a record says which competition it belongs to (`competition`, else the output folder), so a config's `all`
verifies only its own competition's records.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import yaml

from workflow_scripts.errors import OoflineError, run_cli
from workflow_scripts.io import atomic_path, read_json
from workflow_scripts.submission import compare_manifests


# config values that name a user's file or folder (`*`: any key): a record pins the relative ones the workflow does
# not build (outside output_dir) to absolute paths, so it rebuilds from any scratch folder
FILE_KEYS = (
    ("data", "*"),
    ("models", "*", "source"),
    ("models", "*", "extra_data", "*"),
    ("language_models", "*", "source"),
    ("language_models", "*", "finetune", "data"),
    ("answers", "problems"),
    ("answers", "test_problems"),
    ("retrieval", "*", "files", "*"),
    ("retrieval", "*", "models", "*"),
)


def competition_of(config: dict) -> str:
    """The competition a config's records belong to: `competition`, else its output folder (`output_dir`)."""
    return str(config.get("competition") or config.get("output_dir") or "results")


def _file_values(node, pattern: tuple[str, ...], path: tuple = ()):
    """(key path, value) of every value in `node` at `pattern` (`*` matches any key)."""
    if not pattern:
        yield path, node
        return
    if not isinstance(node, dict):
        return
    keys = list(node) if pattern[0] == "*" else [pattern[0]] if pattern[0] in node else []
    for key in keys:
        yield from _file_values(node[key], pattern[1:], path + (key,))


def pin_user_files(config: dict, workdir: Path) -> dict:
    """`config` with every relative path of FILE_KEYS that exists in `workdir` and lies outside its output folder
    made absolute; paths the workflow builds (under output_dir) stay relative, so the rebuild makes them."""
    config = json.loads(json.dumps(config))
    output_dir = (workdir / config.get("output_dir", "results")).resolve()
    for pattern in FILE_KEYS:
        for path, value in list(_file_values(config, pattern)):
            if not isinstance(value, str) or not value or Path(value).is_absolute():
                continue
            resolved = (workdir / value).resolve()
            if not resolved.exists() or resolved == output_dir or output_dir in resolved.parents:
                continue
            parent = config
            for key in path[:-1]:
                parent = parent[key]
            parent[path[-1]] = str(resolved)
    return config


def freeze(name: str, submission: str, config: dict, manifest: dict, workdir: Path | None = None,
           shape: str | None = None) -> dict:
    """A record: what to rebuild (config + submission name), what it must hash to (manifest), the submission's
    shape (classification, retrieval, answers) and the competition it belongs to.

    Competition files the workflow does not build are pinned to absolute paths, so the record
    rebuilds from any scratch folder; files it builds (the demo's) stay relative.
    """
    if "hashed" not in manifest:
        raise OoflineError(f"record {name}: the manifest has no 'hashed' section")
    config = pin_user_files(config, workdir or Path.cwd())
    record = {"name": name, "submission": submission, "competition": competition_of(config), "config": config,
              "manifest": manifest}
    if shape:
        record["shape"] = shape
    return record


def record_competition(path: str | Path) -> str:
    """The competition a record file belongs to: its `competition` line (read without parsing the manifest), or
    for a record frozen before records said so, the competition of its frozen config."""
    with open(path) as handle:
        for line in handle:
            if line.startswith("competition: "):
                return str(yaml.safe_load(line)["competition"])
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    record = yaml.load(Path(path).read_text(), Loader=loader) or {}
    return competition_of(record.get("config") or {})


def records_by_competition(folder: str | Path, competition: str) -> tuple[list[str], dict[str, str]]:
    """(names of the records in `folder` frozen from `competition`, {name: competition} of the others)."""
    folder = Path(folder)
    own, others = [], {}
    for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
        theirs = record_competition(path)
        if theirs == competition:
            own.append(path.stem)
        else:
            others[path.stem] = theirs
    return own, others


def load_record(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise OoflineError(f"submission record not found: {path}")
    record = yaml.safe_load(path.read_text())
    missing = [key for key in ("submission", "config", "manifest") if key not in (record or {})]
    if missing:
        raise OoflineError(f"{path}: not a submission record (missing {missing})")
    return record


def rebuild(record: dict, snakefile: str | Path, scratch: Path, cores: int, extra_config: dict | None = None,
            extra_targets: Sequence[str] = ()) -> dict:
    """Rebuild the record's submission in `scratch` from its frozen config; return the new manifest.

    `extra_config` adds keys that do not change the submission (a Kaggle package's settings) and
    `extra_targets` more files to build there (the package)."""
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    config = dict(record["config"], **(extra_config or {}))
    config["register"] = {}  # the scratch build must not write records of its own
    (scratch / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=True))
    output_dir = config.get("output_dir", "results")
    manifest_path = f"{output_dir}/submissions/{record['submission']}/manifest.json"
    # the target goes before --configfile, which would otherwise read it as a second config file
    command = [sys.executable, "-m", "snakemake", manifest_path, *extra_targets, "-s", str(Path(snakefile).resolve()),
               "--directory", str(scratch), "--cores", str(cores), "--configfile", str(scratch / "config.yaml")]
    print("rebuilding: " + " ".join(command), flush=True)
    result = subprocess.run(command, text=True, stdout=sys.stdout, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise OoflineError(f"rebuilding {record['submission']} in {scratch} failed (exit {result.returncode}); see the log")
    return read_json(scratch / manifest_path)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    freeze_parser = commands.add_parser("freeze", help="write a record for a built submission")
    freeze_parser.add_argument("--name", required=True)
    freeze_parser.add_argument("--submission", required=True)
    freeze_parser.add_argument("--config", required=True, help="the complete config as JSON")
    freeze_parser.add_argument("--shape", default=None, help="classification, retrieval or answers")
    freeze_parser.add_argument("--manifest", required=True)
    freeze_parser.add_argument("--out", required=True)
    verify_parser = commands.add_parser("verify", help="rebuild a record in a scratch folder and compare hashes")
    verify_parser.add_argument("--record", required=True)
    verify_parser.add_argument("--snakefile", required=True)
    verify_parser.add_argument("--scratch", required=True)
    verify_parser.add_argument("--cores", type=int, default=1)
    verify_parser.add_argument("--keep-scratch", action="store_true")
    verify_parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.command == "freeze":
        record = freeze(args.name, args.submission, json.loads(args.config), read_json(args.manifest),
                        shape=args.shape)
        with atomic_path(args.out) as tmp:
            tmp.write_text(yaml.safe_dump(record, sort_keys=True))
        print(f"froze {args.submission} as {args.out}", flush=True)
        return
    record = load_record(args.record)
    scratch = Path(args.scratch)
    rebuilt = rebuild(record, args.snakefile, scratch, args.cores)
    differing = compare_manifests(record["manifest"], rebuilt)
    if differing:
        raise OoflineError(f"{args.record}: the rebuilt submission differs in {len(differing)} file(s):\n  "
                           + "\n  ".join(differing))
    files = sum(len(record["manifest"]["hashed"].get(section, {})) for section in ("inputs", "artifacts", "outputs"))
    with atomic_path(args.out) as tmp:
        tmp.write_text(f"{record['name']}: {files} files byte-identical after a rebuild from the frozen config\n")
    if not args.keep_scratch:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"verified {args.record}: {files} files identical", flush=True)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
