"""Build submission.csv from test predictions in the competition's format, plus a reproducibility manifest.

Formats:
- `top_k`: multiclass; one column with the k most probable class names, space-joined (MAP@k);
- `argmax`: one column per head: the most probable class (multiclass heads) or 0/1 (binary heads, thresholded);
- `labels`: multilabel/multihead; one 0/1 column per binary label (multiclass heads as in `argmax`);
- `joined`: multilabel; one column with the positive labels, space-joined.
With a sample submission, the ids must match it exactly and rows and columns follow its order.

manifest.json keeps everything that determined the file under `hashed` (config slice, code version, sha256 of
inputs/artifacts/outputs, package versions, container, base models, OOF scores) and its digest in
`manifest_sha256`; a timestamp, when asked for, sits outside as `built_at`.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import polars as pl

from workflow_scripts import metrics
from workflow_scripts.errors import OoflineError, run_cli
from workflow_scripts.io import atomic_path, read_json, read_table, write_json
from workflow_scripts.labels import LabelSpec

FORMATS = ("top_k", "argmax", "labels", "joined")
PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "tokenizers", "safetensors",
            "sentence-transformers", "FlagEmbedding", "snakemake", "polars", "pyarrow", "numpy", "scipy",
            "scikit-learn")


# ---------------------------------------------------------------------------------------------- submission

def load_thresholds(path: str | Path | None) -> dict[str, float] | None:
    """Thresholds from a thresholds.py output (its `thresholds` key) or a plain {column: threshold} JSON."""
    if not path:
        return None
    payload = read_json(path)
    thresholds = payload.get("thresholds", payload) if isinstance(payload, dict) else None
    if not isinstance(thresholds, dict) or not all(isinstance(v, (int, float)) for v in thresholds.values()):
        raise OoflineError(f"{path}: expected a JSON object column -> threshold (or a thresholds step output)")
    return {str(k): float(v) for k, v in thresholds.items()}


def default_prediction_columns(spec: LabelSpec, fmt: str) -> list[str]:
    if fmt == "joined":
        return ["labels"]
    if fmt == "top_k":
        return [spec.heads[0].source_column]
    return [head.source_column for head in spec.heads]


def format_predictions(spec: LabelSpec, probs: np.ndarray, fmt: str, prediction_columns: Sequence[str] | None = None,
                       top_k: int = 3, thresholds: dict[str, float] | None = None, separator: str = " "
                       ) -> pl.DataFrame:
    """The prediction columns of a submission (no id). probs: (n_rows, n_columns) in spec column order."""
    if fmt not in FORMATS:
        raise OoflineError(f"submission format {fmt!r} is unknown (expected one of {', '.join(FORMATS)})")
    if fmt == "top_k" and spec.task != "multiclass":
        raise OoflineError(f"submission format 'top_k' needs a multiclass task, but the task is {spec.task}")
    if fmt == "joined" and spec.task != "multilabel":
        raise OoflineError(f"submission format 'joined' needs a multilabel task, but the task is {spec.task}")
    if fmt == "labels" and spec.task == "multiclass":
        raise OoflineError("submission format 'labels' needs a multilabel or multihead task (use top_k or argmax)")
    names = list(prediction_columns) if prediction_columns else default_prediction_columns(spec, fmt)
    expected = len(default_prediction_columns(spec, fmt))
    if len(names) != expected:
        raise OoflineError(f"submission prediction columns: {len(names)} given ({names}) but format {fmt!r} "
                           f"for this task writes {expected}")
    if fmt == "top_k":
        classes = np.array(spec.heads[0].classes, dtype=object)
        top = metrics.top_k_indices(probs, top_k)
        return pl.DataFrame({names[0]: [separator.join(row) for row in classes[top].tolist()]}, schema={names[0]: pl.String})
    predicted = metrics.hard_predictions(spec, probs, thresholds)
    if fmt == "joined":
        labels = np.array(spec.binary_columns, dtype=object)
        return pl.DataFrame({names[0]: [separator.join(labels[row.astype(bool)]) for row in predicted]},
                            schema={names[0]: pl.String})
    columns = {}
    for name, (head, block) in zip(names, spec.head_slices()):
        if head.type == "binary":
            columns[name] = pl.Series(name, predicted[:, block][:, 0].astype(np.int64))
        else:
            classes = np.array(head.classes, dtype=object)
            columns[name] = pl.Series(name, classes[probs[:, block].argmax(axis=1)].tolist(), dtype=pl.String)
    return pl.DataFrame(columns)


def read_sample_submission(path: str | Path) -> pl.DataFrame:
    """The sample submission with every column read as text (ids keep their exact spelling)."""
    path = Path(path)
    if not path.exists():
        raise OoflineError(f"sample submission not found: {path}")
    try:
        return pl.read_csv(path, infer_schema=False)
    except Exception as error:  # polars raises several types for malformed csv
        raise OoflineError(f"cannot read sample submission {path}: {error}") from error


def build_submission(spec: LabelSpec, test: pl.DataFrame, fmt: str, id_column: str = "id",
                     prediction_columns: Sequence[str] | None = None, top_k: int = 3,
                     thresholds: dict[str, float] | None = None, separator: str = " ",
                     sample: pl.DataFrame | None = None) -> pl.DataFrame:
    """submission rows: id column + prediction columns; with `sample`, same ids, rows and columns in its order."""
    probs = test.select(spec.probability_columns).to_numpy()
    body = format_predictions(spec, probs, fmt, prediction_columns, top_k, thresholds, separator)
    if id_column in body.columns:
        raise OoflineError(f"submission id column {id_column!r} is also a prediction column name")
    frame = pl.DataFrame({id_column: test["id"].cast(pl.String)}).hstack(body)
    if sample is None:
        return frame
    if id_column not in sample.columns:
        raise OoflineError(f"sample submission has no id column {id_column!r} (its columns: {sample.columns})")
    if set(sample.columns) != set(frame.columns):
        raise OoflineError(f"submission columns {frame.columns} differ from the sample submission's {sample.columns}")
    sample_ids = sample[id_column]
    if sample_ids.n_unique() != sample.height:
        raise OoflineError(f"sample submission: column {id_column!r} has duplicate ids")
    ours, theirs = set(frame[id_column].to_list()), set(sample_ids.to_list())
    if ours != theirs:
        missing, extra = sorted(theirs - ours), sorted(ours - theirs)
        raise OoflineError(
            f"submission ids differ from the sample submission's column {id_column!r}: {len(missing)} sample ids "
            f"have no prediction (e.g. {missing[:3]}), {len(extra)} predicted ids are not in the sample (e.g. {extra[:3]})"
        )
    ordered = sample.select(id_column).join(frame, on=id_column, how="left", maintain_order="left")
    return ordered.select(sample.columns)


def check_test_ids(frame: pl.DataFrame, id_column: str, test_ids: Sequence[str], source: str, ordered: bool) -> None:
    """The submission holds each test id exactly once (and, unless a sample submission sets the order, in the
    test file's order); else an OoflineError naming the test file."""
    ids, test_ids = frame[id_column].to_list(), list(test_ids)
    if len(ids) != len(test_ids):
        raise OoflineError(f"submission has {len(ids)} rows but {source} has {len(test_ids)} ids (column 'id')")
    ours, theirs = set(ids), set(test_ids)
    if ours != theirs:
        missing, extra = sorted(theirs - ours), sorted(ours - theirs)
        raise OoflineError(f"submission ids differ from {source} column 'id': {len(missing)} test ids have no row "
                           f"(e.g. {missing[:3]}), {len(extra)} rows are not test ids (e.g. {extra[:3]})")
    if ordered and ids != test_ids:
        position = next(i for i, (a, b) in enumerate(zip(ids, test_ids)) if a != b)
        raise OoflineError(f"submission row {position + 1} is id {ids[position]!r} but {source} has {test_ids[position]!r} "
                           "there (rows must follow the test file's order)")


def write_csv(frame: pl.DataFrame, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        frame.write_csv(tmp, line_terminator="\n")


# ---------------------------------------------------------------------------------------------- manifest

def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _display_path(path: Path) -> str:
    """A path relative to the working directory when inside it, so a rebuild elsewhere records the same name."""
    relative = os.path.relpath(path.resolve(), Path.cwd().resolve())
    return Path(relative).as_posix() if not relative.startswith("..") else path.as_posix()


def hash_paths(paths: Sequence[str | Path]) -> dict[str, str]:
    """sha256 of each file; a directory expands to its files (sorted, dot-files skipped), one entry each."""
    hashes: dict[str, str] = {}
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise OoflineError(f"manifest: input or artifact not found: {path}")
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file()
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            for file in files:
                hashes[_display_path(file)] = sha256_file(file)
        else:
            hashes[_display_path(path)] = sha256_file(path)
    return dict(sorted(hashes.items()))


def canonical_sha256(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def code_version(repo: str | Path | None = None) -> dict:
    """Git commit of the oofline checkout and whether tracked or untracked source files differ from it."""
    repo = Path(repo) if repo else Path(__file__).resolve().parents[1]

    def git(*args: str) -> str | None:
        try:
            result = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return result.stdout.strip() if result.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain")
    return {"git_commit": commit, "git_dirty": bool(status) if status is not None else None}


def package_versions(packages: Sequence[str] = PACKAGES) -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def summarise_scores(paths: Sequence[str | Path]) -> dict[str, dict]:
    """The headline numbers of score/threshold JSONs: metric, score, in-/out-of-sample, fold mean."""
    keys = ("metric", "score", "in_sample_score", "out_of_sample_score", "fold_mean", "fold_std", "prior_score",
            "oof_score_before", "oof_score_after", "oof_score_after_nested")
    summary = {}
    for path in paths:
        payload = read_json(path)
        summary[_display_path(Path(path))] = {k: payload[k] for k in keys if k in payload}
        if isinstance(payload.get("plain"), dict) and "score" in payload["plain"]:
            # select_epoch: best: the CV without the epoch choice, what the source's own row is measured by
            summary[_display_path(Path(path))]["plain_score"] = payload["plain"]["score"]
    return summary


def build_manifest(config_slice: dict, inputs: Sequence[str | Path], artifacts: Sequence[str | Path],
                   outputs: Sequence[str | Path], score_files: Sequence[str | Path] = (), container: str | None = None,
                   base_models: Sequence[str] = (), name: str = "", built_at: str | None = None) -> dict:
    """The manifest dict; everything under `hashed` is free of timestamps and absolute paths inside cwd."""
    hashed = {
        "submission": name,
        "config": config_slice,
        "config_sha256": canonical_sha256(config_slice),
        "code": code_version(),
        "inputs": hash_paths(inputs),
        "artifacts": hash_paths(artifacts),
        "outputs": hash_paths(outputs),
        "packages": package_versions(),
        "container": container,
        "base_models": sorted(base_models),
        "oof_scores": summarise_scores(score_files),
    }
    manifest = {"hashed": hashed, "manifest_sha256": canonical_sha256(hashed)}
    if built_at:
        manifest["built_at"] = built_at
    return manifest


def compare_manifests(a: dict, b: dict) -> list[str]:
    """Files (and the config slice) whose sha256 differs between two manifests, or that only one records."""
    differing = []
    if a["hashed"]["config_sha256"] != b["hashed"]["config_sha256"]:
        differing.append("config (the frozen config slice differs)")
    for section in ("inputs", "artifacts", "outputs"):
        left, right = a["hashed"].get(section, {}), b["hashed"].get(section, {})
        for path in sorted(set(left) | set(right)):
            if path not in left or path not in right:
                differing.append(f"{path} ({section}: only in {'the first' if path in left else 'the second'} manifest)")
            elif left[path] != right[path]:
                differing.append(f"{path} ({section}: sha256 differs)")
    return differing


# ---------------------------------------------------------------------------------------------- CLI

def _config_option(value: str | None) -> dict:
    if not value:
        return {}
    if value.lstrip().startswith("{"):
        try:
            payload = json.loads(value)
        except json.JSONDecodeError as error:
            raise OoflineError(f"--config-slice: not valid JSON ({error})") from error
    else:
        payload = read_json(value)
    if not isinstance(payload, dict):
        raise OoflineError("--config-slice: expected a JSON object")
    return payload


def verify_main(argv: Sequence[str]) -> None:
    """`submission verify --expected FROZEN --actual REBUILT --out OK`: fail listing every differing file."""
    parser = argparse.ArgumentParser(prog="python -m workflow_scripts.submission verify",
                                     description="compare a rebuilt submission's manifest with the recorded one")
    parser.add_argument("--expected", required=True, help="the recorded manifest.json")
    parser.add_argument("--actual", required=True, help="the rebuilt manifest.json")
    parser.add_argument("--out", required=True, help="written (with the manifest digest) only when all files match")
    args = parser.parse_args(argv)
    expected, actual = read_json(args.expected), read_json(args.actual)
    for path, manifest in ((args.expected, expected), (args.actual, actual)):
        if not isinstance(manifest, dict) or "hashed" not in manifest:
            raise OoflineError(f"{path}: not a submission manifest (no 'hashed' section)")
    differing = compare_manifests(expected, actual)
    if differing:
        raise OoflineError(f"rebuilt submission differs from {args.expected} in {len(differing)} file(s): "
                           + "; ".join(differing))
    with atomic_path(args.out) as tmp:
        tmp.write_text(f"ok {len(actual['hashed'].get('outputs', {}))} outputs, "
                       f"{len(actual['hashed'].get('artifacts', {}))} artifacts, "
                       f"{len(actual['hashed'].get('inputs', {}))} inputs match\n")
    print(f"verify: {args.actual} matches {args.expected}", flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["verify"]:
        return verify_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--test", required=True, help="test predictions parquet: id + probability columns")
    parser.add_argument("--labels", required=True, help="label spec JSON")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--id-column", default="id", help="id column name in submission.csv")
    parser.add_argument("--prediction-columns", nargs="*", default=None, help="prediction column name(s)")
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--separator", default=" ")
    parser.add_argument("--thresholds", default=None, help="thresholds JSON for binary columns (default 0.5)")
    parser.add_argument("--sample-submission", default=None)
    parser.add_argument("--test-data", default=None, help="the validated test file (data/test.parquet): the "
                        "submission's ids, count and order are checked against its `id` column")
    parser.add_argument("--config-slice", default=None, help="JSON object or file: the config that built this")
    parser.add_argument("--inputs", nargs="*", default=[], help="input data files to hash")
    parser.add_argument("--artifacts", nargs="*", default=[], help="upstream artifacts (files or folders) to hash")
    parser.add_argument("--scores", nargs="*", default=[], help="score/threshold JSONs whose OOF scores to record")
    parser.add_argument("--container", default=None)
    parser.add_argument("--base-models", nargs="*", default=[], help="base model ids (name=source@revision)")
    parser.add_argument("--name", default="", help="submission name")
    parser.add_argument("--timestamp", action="store_true", help="add built_at (outside the hashed part)")
    parser.add_argument("--out", required=True, help="submission.csv")
    parser.add_argument("--manifest-out", default=None, help="manifest.json")
    args = parser.parse_args(argv)

    if args.top_k < 1:
        raise OoflineError(f"--top-k must be at least 1, got {args.top_k}")
    spec = LabelSpec.load(args.labels)
    test = metrics.read_predictions(args.test, spec)
    sample = read_sample_submission(args.sample_submission) if args.sample_submission else None
    frame = build_submission(spec, test, args.format, args.id_column, args.prediction_columns, args.top_k,
                             load_thresholds(args.thresholds), args.separator, sample)
    if args.test_data:
        check_test_ids(frame, args.id_column, read_table(args.test_data)["id"].to_list(), args.test_data, sample is None)
    write_csv(frame, args.out)
    print(f"submission {args.name}: {frame.height} rows, columns {frame.columns} -> {args.out}", flush=True)
    if args.manifest_out:
        from datetime import datetime, timezone

        inputs = list(args.inputs) + ([args.sample_submission] if args.sample_submission else [])
        artifacts = [args.test, args.labels] + ([args.thresholds] if args.thresholds else []) + list(args.artifacts)
        manifest = build_manifest(
            _config_option(args.config_slice), sorted(set(inputs)), sorted(set(artifacts)), [args.out],
            # the thresholds' OOF scores too: the leaderboard reads the thresholded CV from the manifest
            list(args.scores) + ([args.thresholds] if args.thresholds else []), args.container, args.base_models, args.name,
            datetime.now(timezone.utc).isoformat(timespec="seconds") if args.timestamp else None,
        )
        write_json(manifest, args.manifest_out)
        print(f"submission {args.name}: manifest {manifest['manifest_sha256'][:12]} -> {args.manifest_out}", flush=True)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
