"""What every shape's package writes beside its own files: the manifest and config slice, oofline's wheel and the
pinned wheels, oofline_package.json, the Kaggle API's dataset-metadata.json and kernel-metadata.json, and the
notebook script (workflow_scripts/kaggle/notebook_script.py) told which runner to start."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

from workflow_scripts.errors import OoflineError

PACKAGE_FILE = "oofline_package.json"


def write_common_files(spec: Mapping[str, Any], package: dict[str, Any], dataset: Path, notebook: Path, runner: str,
                       interface: str | None = None, installed: Sequence[str] = ()) -> list[str]:
    """Write the shape-independent files of a package; returns the wheel requirements the notebook installs.
    `installed`: pure-Python packages a Kaggle image lacks, shipped as wheels of the versions installed here."""
    from workflow_scripts.io import write_json
    from workflow_scripts.kaggle.package import SCRIPT_FILE, kernel_metadata, notebook_script
    from workflow_scripts.kaggle.environment import dataset_license, model_card_license
    from workflow_scripts.kaggle.wheels import REQUIREMENTS_FILE, manylinux_platform_tags, ship_wheels

    kaggle, name = spec["kaggle"], spec["name"]
    shutil.copy2(spec["manifest"], dataset / "manifest.json")
    write_json(spec["config_slice"], dataset / "config.json")
    # every platform tag the image's glibc runs, as the classification package ships (kaggle.glibc)
    platforms = kaggle.get("platform") or manylinux_platform_tags(kaggle["glibc"])
    requirements = ship_wheels(kaggle["wheels"], dataset / "wheels", kaggle["python_version"], platforms)
    requirements += [installed_wheel(module, dataset / "wheels") for module in installed
                     if not any(line.lower().startswith(module.lower() + "==") for line in requirements)]
    (dataset / "wheels" / REQUIREMENTS_FILE).write_text("".join(f"{line}\n" for line in requirements))
    package["wheels"] = requirements
    title = kaggle.get("title") or f"oofline {name}"
    # the license the shipped models' cards state (kaggle.license wins), as for a classification package
    models = dataset / "models"
    licenses = {folder.name: model_card_license(folder) for folder in sorted(models.iterdir()) if folder.is_dir()} \
        if models.is_dir() else {}
    license_name, license_note = dataset_license(licenses, kaggle.get("license"))
    package["license"] = license_name
    write_json(package, dataset / PACKAGE_FILE)
    write_json({"title": title, "id": kaggle["dataset"], "licenses": [{"name": license_name}],
                "description": f"oofline package {name} (a Kaggle code-competition submission). {license_note}"},
               dataset / "dataset-metadata.json")
    write_json(kernel_metadata(kaggle, kaggle["kernel"].split("/")[1].replace("-", " ")), notebook / "kernel-metadata.json")
    threads = kaggle["cpu_threads"] if kaggle["accelerator"] == "cpu" else 0
    script = notebook_script({"package": name, "dataset": kaggle["dataset"], "competition": kaggle["competition"],
                              "test": kaggle["test"], "sample_submission": kaggle.get("sample_submission"),
                              "threads": threads, "runner": runner, "interface": interface})
    (notebook / SCRIPT_FILE).write_text(script)
    return requirements


def ship_prepare(prepare: Mapping[str, Any] | None, dataset: Path) -> dict[str, Any] | None:
    """Copy the prepare function's file into dataset/prepare/; the package records its name and code digest."""
    if not prepare:
        return None
    from workflow_scripts.prepare import parse_reference, resolve_file, source_digest

    path, function = parse_reference(prepare["reference"])
    source = resolve_file(path)
    (dataset / "prepare").mkdir(exist_ok=True)
    shutil.copy2(source, dataset / "prepare" / source.name)
    return {"reference": prepare["reference"], "file": f"prepare/{source.name}", "function": function,
            "code": source_digest(source)[:16]}


def prepared_rows(dataset_dir: Path, prepare: Mapping[str, Any] | None, test_path: str | Path, split: str,
                  required: Sequence[str]):
    """The hidden test's rows: the shipped prepare function on the raw file (its code checked against the
    digest the package recorded), or the file as it is."""
    from workflow_scripts.io import read_table
    from workflow_scripts.prepare import load_function, prepare_file, source_digest

    if not prepare:
        return read_table(test_path)
    path = dataset_dir / prepare["file"]
    if not path.exists():
        raise OoflineError(f"{dataset_dir}: the package lacks {[prepare['file']]} (its prepare function; rebuild the "
                           "package)")
    if source_digest(path)[:16] != prepare["code"]:
        raise OoflineError(f"{path}: the prepare function's code differs from the one the package was built with "
                           f"({prepare['reference']}); rebuild the package")
    function = load_function(path, prepare["function"], prepare["reference"])
    return prepare_file(prepare["reference"], test_path, split, required, function=function)


def installed_wheel(module: str, out_dir: Path) -> str:
    """A wheel of the installed pure-Python package `module` (the version the workflow ran with, built offline);
    returns its requirement line."""
    import importlib
    import importlib.metadata

    from workflow_scripts.kaggle.wheels import build_wheel, requirement_of_wheel

    package_dir = Path(importlib.import_module(module).__file__).parent
    version = importlib.metadata.version(module)
    return requirement_of_wheel(build_wheel(package_dir, module, version, out_dir, summary=f"{module}, as installed"))
