"""What a package meets on the Kaggle image, and what it says about itself: the library versions it was built and
tested with (compared with the image's when the notebook starts), and the dataset's license (from the shipped
models' own licenses). Every package shape uses these; nothing here is classification-specific.

Versions: `built_with` records, at build time, the version of every library the package's members import
(`libraries_for`). `version_problems` compares them with the image's: a missing library, or an adapter setting the
image's peft does not know (peft drops unknown settings with a warning and loads a different adapter: wrong
predictions) are errors, raised as one `oofline error:` line before any model loads; a version that differs is a
warning line (`WARNING: oofline: ...`), a different major version said so.

Licenses: a Hugging Face model card states its weights' license (`license:` in README.md's front matter: apache-2.0,
llama3.1, gemma, ...). `dataset_license` maps the shipped models' licenses to the one name Kaggle's dataset
metadata takes: their common name when Kaggle has it, `other` (each model's license in the description) when they
differ or Kaggle has no name for one (Llama, Gemma, MIT), `unknown` when no shipped model declares one (oofline's
own TF-IDF and heads, random tiny models); `kaggle.license` overrides it.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, Iterable

from workflow_scripts.errors import OoflineError

# the libraries a package imports in the notebook: always, and per member kind / setting
ALWAYS = ("numpy", "polars", "safetensors")
KIND_LIBRARIES = {"tfidf_linear": ("scikit-learn", "scipy"),
                  "embedding_head": ("torch", "transformers", "tokenizers", "scikit-learn"),
                  "encoder_full": ("torch", "transformers", "tokenizers"),
                  "encoder_lora": ("torch", "transformers", "tokenizers", "peft"),
                  "decoder_lora": ("torch", "transformers", "tokenizers", "peft")}
QUANTIZED_LIBRARIES = ("bitsandbytes",)
# what the retrieval and answers notebooks import besides ALWAYS (FlagEmbedding ships as a wheel: on no image)
SHAPE_LIBRARIES = {"retrieval": ("torch", "transformers", "tokenizers", "FlagEmbedding"),
                   "answers": ("torch", "transformers", "tokenizers")}
# adapter_config.json keys that describe the file, not the adapter's forward
ADAPTER_METADATA_KEYS = {"base_model_name_or_path", "revision", "task_type", "peft_type", "auto_mapping",
                         "inference_mode", "peft_version"}

# Kaggle's dataset license names (dataset-metadata.json `licenses`), and the Hugging Face model-card license ids
# that are the same license
KAGGLE_LICENSES = ("CC0-1.0", "CC-BY-SA-3.0", "CC-BY-SA-4.0", "CC-BY-NC-SA-4.0", "GPL-2.0", "ODbL-1.0", "DbCL-1.0",
                   "copyright-authors", "other", "unknown", "CC-BY-4.0", "CC-BY-NC-4.0", "PDDL", "CC-BY-3.0",
                   "CC-BY-3.0-IGO", "US-Government-Works", "CC-BY-NC-SA-3.0-IGO", "CDLA-Permissive-1.0",
                   "CDLA-Sharing-1.0", "CC-BY-ND-4.0", "CC-BY-NC-ND-4.0", "ODC-BY-1.0", "LGPL-3.0", "AGPL-3.0",
                   "FDL-1.3", "EU-ODP-Legal-Notice", "apache-2.0", "GPL-3.0")
HUB_TO_KAGGLE = {"cc0-1.0": "CC0-1.0", "cc-by-3.0": "CC-BY-3.0", "cc-by-4.0": "CC-BY-4.0", "cc-by-sa-3.0": "CC-BY-SA-3.0",
                 "cc-by-sa-4.0": "CC-BY-SA-4.0", "cc-by-nc-4.0": "CC-BY-NC-4.0", "cc-by-nc-sa-4.0": "CC-BY-NC-SA-4.0",
                 "cc-by-nd-4.0": "CC-BY-ND-4.0", "cc-by-nc-nd-4.0": "CC-BY-NC-ND-4.0", "gpl-2.0": "GPL-2.0",
                 "gpl-3.0": "GPL-3.0", "lgpl-3.0": "LGPL-3.0", "agpl-3.0": "AGPL-3.0", "apache-2.0": "apache-2.0",
                 "odbl": "ODbL-1.0", "pddl": "PDDL", "cdla-permissive-1.0": "CDLA-Permissive-1.0",
                 "cdla-sharing-1.0": "CDLA-Sharing-1.0", "odc-by": "ODC-BY-1.0", "gfdl": "FDL-1.3"}


# ---- versions ----

def libraries_for(members: Iterable[dict[str, Any]]) -> list[str]:
    """The distributions a package's notebook imports for these members ({kind, config}), sorted."""
    names = set(ALWAYS)
    for member in members:
        names.update(KIND_LIBRARIES.get(member["kind"], ()))
        if member.get("config", {}).get("quantization", "none") != "none":
            names.update(QUANTIZED_LIBRARIES)
    return sorted(names)


def installed_versions(names: Iterable[str]) -> dict[str, str | None]:
    """{distribution: version installed here, None when it is not}."""
    from importlib import metadata

    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def built_with(members: Iterable[dict[str, Any]]) -> dict[str, str | None]:
    """What the package records: the Python and the versions of the libraries its members import, as installed where
    it was built (and its members were trained and tested)."""
    return built_with_libraries(libraries_for(members))


def built_with_libraries(names: Iterable[str]) -> dict[str, str | None]:
    """The Python and the versions installed here of ALWAYS and `names` (a retrieval or answers package's)."""
    import platform

    return {"python": platform.python_version(), **installed_versions(sorted(set(ALWAYS) | set(names)))}


def _major(version: str) -> str:
    return re.split(r"[.+]", version, maxsplit=1)[0]


def version_problems(recorded: dict[str, str | None], image: dict[str, str | None], needed_by: dict[str, list[str]]
                     ) -> tuple[list[str], list[str]]:
    """(errors, warnings) comparing the recorded versions with the image's (`image`: {name: version or None});
    `needed_by`: {library: members that import it}. Missing: an error naming the members and the `wheels:` key."""
    errors, warnings = [], []
    for name in sorted(set(recorded) - {"python"}):
        built, found = recorded[name], image.get(name)
        if built is None:
            continue
        if found is None:
            members = ", ".join(needed_by.get(name, [])) or "the package"
            errors.append(f"{name} is not installed on this image (needed by {members}; the package was built with "
                          f"{name}=={built}): add it to kaggle.wheels")
        elif found != built:
            major = " (another major version)" if _major(found) != _major(built) else ""
            warnings.append(f"{name} {found} on this image, the package was built and tested with {built}{major}: "
                            "predictions may differ in the last digits")
    if recorded.get("python") and image.get("python") and recorded["python"].rsplit(".", 1)[0] != \
            image["python"].rsplit(".", 1)[0]:
        warnings.append(f"Python {image['python']} on this image, the package was built with {recorded['python']}")
    return errors, warnings


def adapter_problems(adapter_config: dict[str, Any], known_settings: set[str], source: str) -> list[str]:
    """Settings of an adapter (its adapter_config.json) that this peft's LoraConfig does not know and that change its
    forward (a value other than null / false / empty): peft would drop them and load another adapter."""
    unknown = sorted(key for key, value in adapter_config.items()
                     if key not in known_settings and key not in ADAPTER_METADATA_KEYS and value not in (None, False)
                     and value != [] and value != {})
    return [f"{source}: the adapter sets {key}={json.dumps(adapter_config[key])}, which peft on this image does not "
            "know: it would load the adapter without it (wrong predictions); ship the peft it was trained with in "
            "kaggle.wheels" for key in unknown]


def lora_settings_here() -> set[str]:
    """The settings this environment's peft LoraConfig knows."""
    import dataclasses

    from peft import LoraConfig

    return {field.name for field in dataclasses.fields(LoraConfig)}


def check_image(dataset_dir: Path, package: dict[str, Any], log: Callable[[str], None],
                needed_by: dict[str, list[str]] | None = None) -> None:
    """The notebook's first step: the image's versions against the package's, and its adapters against the image's
    peft. Warnings are logged; errors stop the run with one line before any model loads. `needed_by` ({library:
    what imports it}) where the package has no classification `models` (a retrieval or answers package, which ship
    merged models: no adapters)."""
    recorded = package.get("built_with") or {}
    if not recorded:
        return
    import platform

    image = {"python": platform.python_version(), **installed_versions(name for name in recorded if name != "python")}
    members = package.get("models") or {}
    if needed_by is None:
        needed_by = {}
        for name, member in members.items():
            for library in libraries_for([member]):
                needed_by.setdefault(library, []).append(name)
    errors, warnings = version_problems(recorded, image, needed_by)
    adapters = [(name, dataset_dir / folder / "adapter_config.json") for name, member in members.items()
                for folder in member["splits"].values()]
    adapters = [(name, path) for name, path in adapters if path.exists()]
    if adapters and image.get("peft"):
        known = lora_settings_here()
        for name, path in adapters:
            errors += adapter_problems(json.loads(path.read_text()), known, f"member {name!r} "
                                       f"({path.parent.relative_to(dataset_dir)})")
    log("oofline: built with " + ", ".join(f"{name} {version}" for name, version in sorted(recorded.items())
                                           if version))
    for line in warnings:
        log(f"WARNING: oofline: {line}")
    if errors:
        raise OoflineError("this image cannot run the package as it was tested: " + "; ".join(dict.fromkeys(errors)))


# ---- licenses ----

def model_card_license(folder: str | Path) -> str | None:
    """The `license:` of a model folder's Hugging Face model card (README.md front matter), lowercased; None without
    one."""
    card = Path(folder) / "README.md"
    if not card.exists():
        return None
    text = card.read_text(errors="replace")
    match = re.match(r"^---\s*\n(.*?)\n---", text, re.S)
    if not match:
        return None
    import yaml

    try:
        front = yaml.safe_load(match.group(1)) or {}
    except yaml.YAMLError:
        return None
    license_ = front.get("license") if isinstance(front, dict) else None
    if isinstance(license_, list):
        license_ = license_[0] if len(license_) == 1 else None
    return str(license_).strip().lower() if license_ else None


def dataset_license(model_licenses: dict[str, str | None], configured: str | None = None) -> tuple[str, str]:
    """(Kaggle license name, description line) for a dataset shipping models with these model-card licenses
    ({model: license or None}); `configured` (kaggle.license) wins."""
    declared = {model: license_ for model, license_ in sorted(model_licenses.items()) if license_}
    listing = "; ".join(f"{model}: {license_}" for model, license_ in declared.items())
    description = f"Model licenses: {listing}." if listing else "No shipped model declares a license."
    if configured:
        return configured, description
    names = {HUB_TO_KAGGLE.get(license_, "other") for license_ in declared.values()}
    if not names:
        return "unknown", description
    return (names.pop() if len(names) == 1 else "other"), description
