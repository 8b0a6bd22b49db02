"""Build a submission's Kaggle code-competition package: results/kaggle/{name}/dataset, notebook, plan.json.

`dataset/` holds everything the notebook needs and nothing else: each member's fold models (or its
full-data model), base models once each (a base shared by several adapters or embedding heads is shipped
once, found by content), TF-IDF and embedding-head coefficients, ensemble weights or stack coefficients,
thresholds, labels.json, the config slice and the submission's manifest, oofline's code as a wheel plus the
configured pinned wheels, oofline_package.json (what the notebook runs) and dataset-metadata.json (the
Kaggle API's). `notebook/` holds kernel-metadata.json and the script. plan.json estimates the notebook's
runtime on the hidden test (workflow_scripts.kaggle.plan).

`package build --spec JSON ...` is the rule's step; `package record ...` rebuilds a frozen record in a
scratch folder (as `registry verify` does), checks it matches the record, and packages that rebuild.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

from workflow_scripts.data import template_column_types
from workflow_scripts.errors import OoflineError, run_cli
from workflow_scripts.io import inference_speed_path, read_json, write_json
from workflow_scripts.kaggle import plan as runtime_plan
from workflow_scripts.kaggle.environment import built_with, dataset_license, model_card_license
from workflow_scripts.kaggle.inference import FORMAT_VERSION, PACKAGE_FILE
from workflow_scripts.kaggle.wheels import manylinux_platform_tags, ship_wheels
from workflow_scripts.predict import LORA_KINDS

SCRIPT_FILE = "oofline_submission.py"
SCRIPT_TEMPLATE = Path(__file__).with_name("notebook_script.py")


def visible_files(folder: Path) -> list[Path]:
    """A folder's files, sorted, without dot-files (Snakemake's markers, speed records) or caches."""
    return sorted(path for path in folder.rglob("*") if path.is_file() and "__pycache__" not in path.parts
                  and not any(part.startswith(".") for part in path.relative_to(folder).parts))


def tree_digest(folder: Path) -> str:
    """sha256 over a folder's relative paths and file contents: equal folders, equal digests."""
    digest = hashlib.sha256()
    for path in visible_files(folder):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def copy_tree(source: Path, target: Path) -> None:
    for path in visible_files(source):
        destination = target / path.relative_to(source)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, destination)


def resolve_base(base: str, model: str) -> Path:
    """The folder of a member's base model: a materialised base, a local folder, or a hub id in the local cache."""
    from workflow_scripts.modeling import resolve_model_path

    location, revision = resolve_model_path(base) if Path(base).exists() else (base, None)
    if Path(location).is_dir():
        return Path(location)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(location, revision=revision, local_files_only=True))
    except Exception as error:  # the hub raises several types for a missing snapshot
        raise OoflineError(f"models.{model}: base model {location!r} is not a local folder nor in the local Hugging "
                           f"Face cache, so the package cannot ship it ({type(error).__name__})") from error


def member_license(member: dict[str, Any]) -> str | None:
    """The license its model card states for the weights a member ships (its base's or its source's card)."""
    source = member["license_from"]
    try:
        folder = resolve_base(source, "") if not Path(source).is_dir() else Path(source)
    except OoflineError:
        return None  # a hub id not in the local cache: no card to read
    from workflow_scripts.modeling import resolve_model_path

    location, _ = resolve_model_path(folder)
    return model_card_license(location) if Path(location).is_dir() else None


def check_member_files(spec: dict[str, Any]) -> None:
    """Every file the package copies exists: a missing member is one line naming it, before anything is written."""
    for name, member in spec["models"].items():
        for split, folder in member["splits"].items():
            if not Path(folder).is_dir():
                raise OoflineError(f"submission {spec['submission']}: member {name!r} has no {split} model at {folder} "
                                   "(build the submission first)")
    for name, path in spec["ensembles"].items():
        if not Path(path).exists():
            raise OoflineError(f"submission {spec['submission']}: ensemble {name!r} has no weights at {path}")
    for key in ("labels", "manifest", "submission_csv", "public_test", "train_data"):
        if not Path(spec[key]).exists():
            raise OoflineError(f"submission {spec['submission']}: {key} not found at {spec[key]}")
    if spec.get("thresholds") and not Path(spec["thresholds"]).exists():
        raise OoflineError(f"submission {spec['submission']}: thresholds not found at {spec['thresholds']}")


def member_speeds(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each model's measured prediction speeds (plan input): {kind, speeds: {split: record}, embed_speed}."""
    speeds = {}
    for name, member in spec["models"].items():
        speeds[name] = {
            "kind": member["kind"],
            "speeds": {split: runtime_plan.read_speed(inference_speed_path(path), name)
                       for split, path in member["test_predictions"].items()},
            "embed_speed": (runtime_plan.read_speed(inference_speed_path(member["embeddings"]), name)
                            if member.get("embeddings") else None),
        }
    return speeds


def applied_batch_sizes(member: dict[str, Any], speeds: dict[str, Any]) -> dict[str, Any]:
    """The inference batch sizes a member's shipped predictions were made with, from their speed records: a fine-tune's
    `{split: predict_batch_size}` and an embedding head's `embed_batch_size` (a run setting whose later change reruns
    nothing, so the notebook must predict as the workflow did, not as the config now says). Empty for records written
    before they held it: the notebook then uses the kind's default."""
    if member["kind"] == "embedding_head":
        size = (speeds.get("embed_speed") or {}).get("batch_size")
        return {"embed_batch_size": int(size)} if size else {}
    if member["kind"] == "tfidf_linear":
        return {}
    sizes = {split: int(record["batch_size"]) for split, record in speeds["speeds"].items() if record.get("batch_size")}
    return {"predict_batch_sizes": sizes} if sizes else {}


def kernel_metadata(kaggle: dict[str, Any], title: str) -> dict[str, Any]:
    accelerator = runtime_plan.check_accelerator(kaggle["accelerator"])
    metadata = {
        "id": kaggle["kernel"], "title": title, "code_file": SCRIPT_FILE, "language": "python",
        "kernel_type": "script", "is_private": True, "enable_gpu": accelerator["enable_gpu"], "enable_tpu": False,
        "enable_internet": False, "dataset_sources": [kaggle["dataset"]],
        "competition_sources": [kaggle["competition"]], "kernel_sources": [], "model_sources": [],
    }
    if accelerator["machine_shape"]:
        metadata["machine_shape"] = accelerator["machine_shape"]
    return metadata


def notebook_script(package: dict[str, Any]) -> str:
    template = SCRIPT_TEMPLATE.read_text()
    marker = "PACKAGE = {}"
    if marker not in template:
        raise OoflineError(f"{SCRIPT_TEMPLATE}: the PACKAGE marker is missing")
    # a Python literal (JSON's null/true/false are not Python): sample_submission null, interface None
    return template.replace(marker, "PACKAGE = " + repr(dict(sorted(package.items()))), 1)


def folder_size(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def build_package(spec: dict[str, Any], dataset_out: str | Path, notebook_out: str | Path, plan_out: str | Path,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Write the dataset and notebook folders and plan.json; returns the plan."""
    kaggle, name = spec["kaggle"], spec["name"]
    runtime_plan.check_accelerator(kaggle["accelerator"])
    check_member_files(spec)
    speeds = member_speeds(spec)
    # the notebook's start-up, timed before anything is written (and a step environment without torch stops here)
    startup = runtime_plan.measure_startup([m["kind"] for m in spec["models"].values()])
    dataset, notebook = Path(dataset_out), Path(notebook_out)
    for folder in (dataset, notebook):
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
    shutil.copy2(spec["labels"], dataset / "labels.json")
    shutil.copy2(spec["manifest"], dataset / "manifest.json")
    write_json(spec["config_slice"], dataset / "config.json")
    bases: dict[str, dict[str, Any]] = {}  # digest -> {path, models}
    models = {}
    for model, member in spec["models"].items():
        applied = applied_batch_sizes(member, speeds[model])
        config = {**member["config"], **({"embed_batch_size": applied["embed_batch_size"]}
                                         if "embed_batch_size" in applied else {})}
        entry = {"kind": member["kind"], "config": config, "test_source": member["test_source"],
                 "splits": {}, "base": None, "batch_sizes": applied.get("predict_batch_sizes", {})}
        if member.get("base"):
            folder = resolve_base(member["base"], model)
            digest = tree_digest(folder)
            if digest not in bases:
                relative = f"bases/{digest[:16]}"
                copy_tree(folder, dataset / relative)
                bases[digest] = {"path": relative, "bytes": folder_size(dataset / relative), "models": []}
            bases[digest]["models"].append(model)
            entry["base"] = bases[digest]["path"]
        for split, folder in member["splits"].items():
            relative = f"models/{model}/{split}/{Path(folder).name}"
            copy_tree(Path(folder), dataset / relative)
            entry["splits"][split] = relative
        models[model] = entry
        # what the notebook reads from /kaggle/input for this member, and whether its fold adapters share one base
        speeds[model]["bytes_read"] = (sum(folder_size(dataset / folder) for folder in entry["splits"].values())
                                       + (folder_size(dataset / entry["base"]) if entry["base"] else 0))
        speeds[model]["shared_base"] = bool(entry["base"]) and member["kind"] in LORA_KINDS
    ensembles = {}
    (dataset / "ensembles").mkdir()
    for ensemble, path in spec["ensembles"].items():
        ensembles[ensemble] = f"ensembles/{ensemble}.json"
        shutil.copy2(path, dataset / ensembles[ensemble])
    submission = dict(spec["submission_settings"], thresholds=None)
    if spec.get("thresholds"):
        submission["thresholds"] = f"thresholds/{spec['source']}.json"
        (dataset / "thresholds").mkdir()
        shutil.copy2(spec["thresholds"], dataset / submission["thresholds"])
    platforms = kaggle["platform"] or manylinux_platform_tags(kaggle["glibc"])
    requirements = ship_wheels(kaggle["wheels"], dataset / "wheels", kaggle["python_version"], platforms)
    from workflow_scripts.kaggle.shared import ship_prepare

    package = {"format_version": FORMAT_VERSION, "package": name, "submission_name": spec["submission"],
               "source": spec["source"], "task": spec["task"], "labels": "labels.json", "models": models,
               # how training read the template's columns: the notebook renders the hidden test's the same way
               "columns": template_column_types(_schema(spec["train_data"]), spec["task"]),
               # the libraries the members were trained and tested with: the notebook compares the image's
               "built_with": built_with(models.values()),
               "ensembles": ensembles, "submission": submission, "wheels": requirements,
               "prepare": ship_prepare(spec.get("prepare"), dataset)}
    write_json(package, dataset / PACKAGE_FILE)
    title = kaggle.get("title") or f"oofline {name}"
    licenses = {model: member_license(member) for model, member in spec["models"].items()
                if member.get("license_from")}
    license_name, license_note = dataset_license(licenses, kaggle.get("license"))
    write_json({"title": title, "id": kaggle["dataset"], "licenses": [{"name": license_name}],
                "description": f"oofline package {name} (a Kaggle code-competition submission). {license_note}"},
               dataset / "dataset-metadata.json")
    # Kaggle derives a notebook's slug from its title: the title is the slug's words
    write_json(kernel_metadata(kaggle, kaggle["kernel"].split("/")[1].replace("-", " ")),
               notebook / "kernel-metadata.json")
    threads = kaggle["cpu_threads"] if kaggle["accelerator"] == "cpu" else 0
    script = notebook_script({"package": name, "dataset": kaggle["dataset"], "competition": kaggle["competition"],
                              "test": kaggle["test"], "sample_submission": kaggle.get("sample_submission"),
                              "threads": threads})
    (notebook / SCRIPT_FILE).write_text(script)
    # the size a user uploads, and what sharing bases saved
    size = folder_size(dataset)
    saved = sum(base["bytes"] * (len(base["models"]) - 1) for base in bases.values())
    public_rows = _public_rows(spec["public_test"])
    rows = kaggle.get("hidden_test_rows") or public_rows
    estimate = runtime_plan.estimate(speeds, rows, kaggle["accelerator"], kaggle["cpu_threads"],
                                     kaggle["time_limit_hours"], kaggle.get("speed_factor"),
                                     startup,
                                     kaggle.get("read_mb_per_second") or runtime_plan.INPUT_READ_MB_PER_SECOND)
    commands = [f"kaggle datasets create -p {dataset} --dir-mode zip",
                f"kaggle kernels push -p {notebook}"]
    plan = {"package": name, "submission": spec["submission"], "dataset_bytes": size,
            "bytes_saved_by_shared_bases": saved,
            "bases": {base["path"]: base["models"] for base in bases.values()},
            "license": license_name, "model_licenses": licenses,
            "wheels": requirements, "public_test_rows": public_rows, "measured": speeds, "estimate": estimate,
            "commands": commands,
            "update_commands": [f"kaggle datasets version -p {dataset} --dir-mode zip -m \"oofline {name}\"",
                                f"kaggle kernels push -p {notebook}"]}
    plan["memory"] = runtime_plan.classification_memory(models, dataset, kaggle["accelerator"])
    write_json(plan, plan_out)
    log(f"kaggle {name}: dataset {size / 1e6:.1f} MB ({len(models)} models, {len(bases)} base(s) shipped once"
        + (f", {saved / 1e6:.1f} MB saved by sharing" if saved else "") + f") -> {dataset}")
    log(f"kaggle {name}: dataset license {license_name!r} ({'kaggle.license' if kaggle.get('license') else license_note})")
    log(runtime_plan.summary_line(name, estimate))
    for line in runtime_plan.memory_lines(name, plan["memory"]):
        log(line)
    log("upload (nothing is pushed by the workflow):\n  " + "\n  ".join(commands))
    return plan


def _schema(path: str) -> dict[str, Any]:
    import polars as pl

    return dict(pl.read_parquet_schema(path))


def _public_rows(path: str) -> int:
    from workflow_scripts.io import read_table

    return read_table(path).height


def package_record(record_path: str | Path, kaggle: dict[str, Any], snakefile: str | Path, scratch: Path, cores: int,
                   dataset_out: str | Path, notebook_out: str | Path, plan_out: str | Path) -> dict[str, Any]:
    """Rebuild a frozen record's submission and its package in `scratch` from the record alone, check the rebuild
    matches the record's manifest, and move the package to the outputs."""
    from workflow_scripts.registry import load_record, rebuild
    from workflow_scripts.submission import compare_manifests

    record = load_record(record_path)
    submission = record["submission"]
    output_dir = record["config"].get("output_dir", "results")
    package_dir = f"{output_dir}/kaggle/{submission}"
    rebuilt = rebuild(record, snakefile, scratch, cores, extra_config={"kaggle": {submission: kaggle}},
                      extra_targets=[f"{package_dir}/plan.json"])
    differing = compare_manifests(record["manifest"], rebuilt)
    if differing:
        raise OoflineError(f"{record_path}: the rebuilt submission differs in {len(differing)} file(s), so its package "
                           "would not be the record's: " + "; ".join(differing[:5]))
    for source, target in (("dataset", dataset_out), ("notebook", notebook_out), ("plan.json", plan_out)):
        target = Path(target)
        if target.exists():
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(scratch / package_dir / source), target)
    shutil.rmtree(scratch, ignore_errors=True)
    plan = read_json(plan_out)
    plan["record"] = record.get("name", Path(record_path).stem)
    write_json(plan, plan_out)
    print(f"kaggle {plan['record']}: the record rebuilt byte-identical and packaged -> {Path(dataset_out).parent}",
          flush=True)
    return plan


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="package a built submission")
    build.add_argument("--spec", required=True, help="JSON: the submission's artifacts and kaggle settings")
    record = commands.add_parser("record", help="package a frozen record, rebuilt from the record alone")
    record.add_argument("--record", required=True)
    record.add_argument("--kaggle", required=True, help="JSON: the record's kaggle settings")
    record.add_argument("--snakefile", required=True)
    record.add_argument("--scratch", required=True)
    record.add_argument("--cores", type=int, default=1)
    for sub in (build, record):
        sub.add_argument("--dataset-out", required=True)
        sub.add_argument("--notebook-out", required=True)
        sub.add_argument("--plan-out", required=True)
    args = parser.parse_args(argv)
    if args.command == "build":
        from workflow_scripts.kaggle import shapes

        spec = json.loads(args.spec)
        shapes.function(spec.get("shape", "classification"), "build")(
            spec, args.dataset_out, args.notebook_out, args.plan_out, log=lambda line: print(line, flush=True))
    else:
        package_record(args.record, json.loads(args.kaggle), args.snakefile, Path(args.scratch), args.cores,
                       args.dataset_out, args.notebook_out, args.plan_out)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
