"""The registry of past submissions: freeze one as a record, and verify a record by rebuilding it.

A record (`submissions/{name}.yaml`) holds the complete config that built the submission and its
manifest (sha256 of every input, artifact and output). `verify` rebuilds the submission from that
config in a scratch folder with the same relative layout and compares every recorded sha256.
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


def freeze(name: str, submission: str, config: dict, manifest: dict, workdir: Path | None = None) -> dict:
    """A record: what to rebuild (config + submission name) and what it must hash to (manifest).

    Competition files the workflow does not build are pinned to absolute paths, so the record
    rebuilds from any scratch folder; files it builds (the demo's) stay relative.
    """
    if "hashed" not in manifest:
        raise OoflineError(f"record {name}: the manifest has no 'hashed' section")
    workdir = workdir or Path.cwd()
    config = json.loads(json.dumps(config))
    if "demo" not in config:
        for key, path in (config.get("data") or {}).items():
            if path and not Path(path).is_absolute():
                config["data"][key] = str((workdir / path).resolve())
    return {"name": name, "submission": submission, "config": config, "manifest": manifest}


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
        record = freeze(args.name, args.submission, json.loads(args.config), read_json(args.manifest))
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
