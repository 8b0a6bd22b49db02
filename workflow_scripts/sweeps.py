"""Sweeps as config: grids, named variants and seeds of a model, and subsets, weight ratios and top-k values of
an ensemble, expanded into ordinary models and ensembles before the config is validated.

    models:
      qwen:
        source: Qwen/Qwen3-8B
        grid: {lr: [1.0e-4, 2.0e-4], r: [8, 16]}   # -> qwen.lr1e-4.r8, qwen.lr1e-4.r16, qwen.lr2e-4.r8, ...
        seeds: [42, 43]                            # -> qwen.lr1e-4.r8.seed42, ...; qwen.lr1e-4.r8 is their mean
    ensembles:
      top_k:
        members: [a, b, c]
        grid: {members: {pool: [a, b, c, d], size: 3}, member_top_k: [3, 10]}

`expand_sweeps(config)` is pure config -> config: every downstream rule sees ordinary `models:` and
`ensembles:` entries, and a sweep's record (its variants and the keys they differ in) for the table step
(`workflow_scripts.sweep_table`) and the dry-run summary. A variant's name is built from its swept values
only (keys in a fixed order, values formatted the same way every run), so adding a value adds names and
keeps the others: Snakemake reuses what they built. `config_check` calls it first and maps a problem of an
expanded entry back to the key the user wrote (`config: models.qwen.grid.lr: ...`).
"""
from __future__ import annotations

import copy
import itertools
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from workflow_scripts.errors import OoflineError

MODEL_SWEEP_KEYS = ("grid", "variants", "seeds", "select")
ENSEMBLE_SWEEP_KEYS = ("grid", "variants", "select")
SELECTIONS = ("in_sample", "nested")
# an ensemble grid's keys, in the order their parts appear in a variant's name
ENSEMBLE_GRID_KEYS = ("members", "weights", "method", "blend", "C", "member_top_k")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
MAX_NAME = 180  # a variant's folder name, with room for its files' names under the usual 255-byte limit


@dataclass
class Variant:
    """One expanded row of a sweep: an ordinary model or ensemble `name`, the values it was swept on
    (`values`: table column -> value) and, for a model with seeds, its per-seed models (it is their mean)."""

    name: str
    source: str  # "model" or "ensemble": which files hold its OOF and score
    values: dict[str, Any]
    seeds: dict[int, str] = field(default_factory=dict)  # seed -> the per-seed model's name


@dataclass
class Sweep:
    """A config entry that expanded into several variants (or one model under several seeds)."""

    name: str
    section: str  # models or ensembles
    variants: list[Variant]
    columns: list[str]  # the swept keys, as table columns, in order
    select: str = "in_sample"
    member_columns: list[str] = field(default_factory=list)  # ensembles: the pool, one weight column each

    def to_json(self) -> dict[str, Any]:
        """What the table step reads (`--spec`): names, columns and values, no paths."""
        return {"name": self.name, "section": self.section, "select": self.select, "columns": self.columns,
                "member_columns": self.member_columns,
                "variants": [{"name": v.name, "source": v.source, "values": v.values,
                              "seeds": {str(seed): model for seed, model in v.seeds.items()}} for v in self.variants]}


@dataclass
class Expansion:
    config: dict[str, Any]
    sweeps: dict[str, Sweep]
    # "models.qwen.lr1e-4" -> ("models.qwen", {key: the config path its value came from})
    origins: dict[str, tuple[str, dict[str, str]]]

    def user_problem(self, line: str) -> str:
        """A problem line about an expanded entry, phrased on the key the user wrote: `config:
        models.qwen.lr1e-4.r8.lr: ...` -> `config: models.qwen.grid.lr: ...`. Other lines as they are."""
        prefix = "config: "
        if not line.startswith(prefix):
            return line
        rest = line[len(prefix):]
        # the longest expanded name the path starts with (names hold dots, so try every cut)
        for cut in sorted((m.start() for m in re.finditer(r"[.:\[]", rest)), reverse=True):
            origin = self.origins.get(rest[:cut])
            if origin is None:
                continue
            base, keys = origin
            tail = rest[cut:]
            key = re.match(r"\.([^.:\[]+)", tail)
            if key and key.group(1) in keys:
                return prefix + keys[key.group(1)] + tail[key.end():]
            return prefix + base + tail
        return line


# ---------------------------------------------------------------------------------------------- names

def value_part(value: Any) -> str | None:
    """A swept value as part of a name: 1e-4, 2.5e-5, 0.05, 16, true, 4bit; None for lists and mappings
    (they need a label)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e5) and math.isfinite(value):
            mantissa, exponent = f"{value:.6e}".split("e")
            mantissa = mantissa.rstrip("0").rstrip(".")
            return f"{mantissa}e{int(exponent)}"
        return f"{value:.6g}"
    if value is None:
        return "none"
    if isinstance(value, str):
        return UNSAFE.sub("_", value).strip("_.") or None
    return None


def weights_part(weights: Mapping[str, float]) -> str:
    """A weight map as part of a name: `member_wWEIGHT` per member, members in alphabetical order, joined by -."""
    return "-".join(f"{member}_w{value_part(float(weights[member]))}" for member in sorted(weights))


def members_part(members: Any) -> str:
    """A member list (sorted, joined by -) or weight map as part of a name."""
    if isinstance(members, Mapping):
        return weights_part(members)
    return "-".join(sorted(members))


# ---------------------------------------------------------------------------------------------- axes

@dataclass
class Choice:
    """One value of one axis: the part it adds to the name, the keys it sets (and where each came from),
    the table values it shows."""

    part: str
    settings: dict[str, Any]
    origins: dict[str, str]
    values: dict[str, Any]


def _labelled_or_listed(values: Any, where: str, part_of, problems: list[str]) -> list[tuple[str, Any]]:
    """(name part, value) per value: a mapping gives its labels, a list formats each value."""
    if isinstance(values, Mapping):
        return [(str(label), value) for label, value in values.items()]
    pairs = []
    for value in values:
        part = part_of(value)
        if part is None:
            problems.append(f"config: {where}: {value!r} cannot be part of a name; give the values labels "
                            f"(a mapping label -> value)")
            continue
        pairs.append((part, value))
    return pairs


def model_axes(name: str, entry: Mapping[str, Any], problems: list[str]) -> list[list[Choice]]:
    where = f"models.{name}"
    axes = []
    if entry.get("variants"):
        axes.append([Choice(str(label), dict(settings), {key: f"{where}.variants.{label}.{key}" for key in settings},
                            {"label": str(label), **settings})
                     for label, settings in entry["variants"].items()])
    from workflow_scripts.model_spec import SPEC_BY_KIND

    model_keys = {key for spec in SPEC_BY_KIND.values() for key in spec.keys()}
    for key in sorted(entry.get("grid") or {}):
        values = entry["grid"][key]
        if key not in model_keys:
            problems.append(f"config: {where}.grid.{key}: not a model key")
            continue
        if key == "seed" and entry.get("seeds"):
            problems.append(f"config: {where}.grid.seed: the model has seeds; give the seeds there only")
            continue
        labelled = isinstance(values, Mapping)
        choices = []
        for part, value in _labelled_or_listed(values, f"{where}.grid.{key}", value_part, problems):
            choices.append(Choice(part if labelled else f"{key}{part}", {key: value}, {key: f"{where}.grid.{key}"},
                                  {key: part if labelled else value}))
        axes.append(choices)
    set_by_variants = {key for settings in (entry.get("variants") or {}).values() for key in settings}
    problems += [f"config: {where}.grid.{key}: also set by variants; sweep a key in one of the two"
                 for key in sorted(set_by_variants & set(entry.get("grid") or {}))]
    return axes


def subsets(pool: list[str], sizes: Iterable[int]) -> list[list[str]]:
    """Every subset of `pool` of each size, in pool order (itertools.combinations)."""
    return [list(combination) for size in sizes for combination in itertools.combinations(pool, size)]


def ensemble_axes(name: str, entry: Mapping[str, Any], problems: list[str]) -> list[list[Choice]]:
    where = f"ensembles.{name}"
    grid = entry.get("grid") or {}
    axes = []
    if entry.get("variants"):
        axes.append([Choice(str(label), dict(settings), {key: f"{where}.variants.{label}.{key}" for key in settings},
                            {"label": str(label)})
                     for label, settings in entry["variants"].items()])
        overlap = sorted({key for settings in entry["variants"].values() for key in settings} & set(grid))
        problems += [f"config: {where}.grid.{key}: also set by variants; sweep a key in one of the two" for key in overlap]
    for key in ENSEMBLE_GRID_KEYS:
        if key not in grid:
            continue
        values, origin = grid[key], f"{where}.grid.{key}"
        if key == "members":
            if isinstance(values, Mapping) and "pool" in values:
                sizes = values["size"] if isinstance(values["size"], list) else [values["size"]]
                pool = list(values["pool"])
                too_large = [size for size in sizes if size > len(pool)]
                if too_large:
                    problems.append(f"config: {origin}.size: {too_large[0]} is larger than the pool ({len(pool)} members)")
                    continue
                pairs = [(members_part(members), members) for members in subsets(pool, sizes)]
            else:
                pairs = _labelled_or_listed(values, origin, members_part, problems)
            axes.append([Choice(part, {"members": members}, {"members": origin}, {}) for part, members in pairs])
        elif key == "weights":
            members = sorted(values)
            combos = itertools.product(*(values[member] for member in members))
            axes.append([Choice(weights_part(dict(zip(members, combo))), {"_weights": dict(zip(members, combo))},
                                {"members": origin}, {}) for combo in combos])
        else:
            prefix = {"member_top_k": "top", "method": "", "blend": "blend", "C": "C"}[key]
            pairs = _labelled_or_listed(values, origin, value_part, problems)
            axes.append([Choice(f"{prefix}{part}", {key: value}, {key: origin}, {key: value}) for part, value in pairs])
    return axes


# ---------------------------------------------------------------------------------------------- expansion

def _entry_keys(section: str) -> tuple[str, ...]:
    return MODEL_SWEEP_KEYS if section == "models" else ENSEMBLE_SWEEP_KEYS


def is_sweep(entry: Any, section: str) -> bool:
    return isinstance(entry, Mapping) and any(key in entry for key in _entry_keys(section))


def _combine(axes: list[list[Choice]]) -> list[Choice]:
    """One choice per combination: parts joined by dots, settings and values merged in axis order."""
    combined = []
    for combo in itertools.product(*axes) if axes else [()]:
        settings, origins, values = {}, {}, {}
        for choice in combo:
            settings.update(copy.deepcopy(choice.settings))
            origins.update(choice.origins)
            values.update(choice.values)
        combined.append(Choice(".".join(choice.part for choice in combo), settings, origins, values))
    return combined


def _weighted_members(base_members: Any, weights: Mapping[str, float], where: str, problems: list[str]) -> Any:
    """Members with the grid's weights laid over them (a weight of 0 leaves the member out, later)."""
    current = dict(base_members) if isinstance(base_members, Mapping) else {m: 1.0 for m in base_members or []}
    absent = sorted(set(weights) - set(current))
    if absent:
        problems.append(f"config: {where}.grid.weights: {absent} are not members of every variant "
                        f"(members: {sorted(current)})")
        return base_members
    current.update(weights)
    return current


def _member_weights(members: Any) -> dict[str, float]:
    if isinstance(members, Mapping):
        return {member: float(weight) for member, weight in members.items()}
    return {member: 1.0 for member in members or []}


def _sweep_entries(entries: Mapping[str, Any], section: str, sweep_keys, expanded: dict, problems: list[str]):
    """Each sweep of a section as (name, entry, where, its keys but the sweep's); a plain entry goes to `expanded`
    as it is. A `select` with nothing to pick from is a problem."""
    noun = section[:-1]
    for name, entry in entries.items():
        if not is_sweep(entry, section):
            expanded[name] = entry
            continue
        where = f"{section}.{name}"
        if "select" in entry and not (entry.get("grid") or entry.get("variants")):
            problems.append(f"config: {where}.select: picks one of several variants; the {noun} has no grid or variants")
        yield name, entry, where, {key: value for key, value in entry.items() if key not in sweep_keys}


def expand_models(models: Mapping[str, Any], problems: list[str], sweeps: dict, origins: dict) -> dict[str, Any]:
    expanded = {}
    for name, entry, where, base in _sweep_entries(models, "models", MODEL_SWEEP_KEYS, expanded, problems):
        seeds = list(entry.get("seeds") or [])
        if seeds and "seed" in base:
            problems.append(f"config: {where}.seed: the model has seeds ({seeds}); leave seed out")
        variants = []
        for choice in _combine(model_axes(name, entry, problems)):
            variant_name = f"{name}.{choice.part}" if choice.part else name
            settings = {key: value for key, value in choice.settings.items()}
            model = {**copy.deepcopy(base), **settings}
            key_origins = {**{key: f"{where}.{key}" for key in base}, **choice.origins}
            if not seeds:
                expanded[variant_name] = model
                origins[f"models.{variant_name}"] = (where, key_origins)
                variants.append(Variant(variant_name, "model", choice.values))
                continue
            seed_models = {}
            for seed in seeds:
                seed_name = f"{variant_name}.seed{seed}"
                expanded[seed_name] = {**copy.deepcopy(model), "seed": seed}
                origins[f"models.{seed_name}"] = (where, {**key_origins, "seed": f"{where}.seeds"})
                seed_models[seed] = seed_name
            variants.append(Variant(variant_name, "ensemble", choice.values, seed_models))
        columns = list(dict.fromkeys(key for variant in variants for key in variant.values))
        sweeps[name] = Sweep(name, "models", variants, columns, entry.get("select", "in_sample"))
    return expanded


def seed_average_ensembles(sweeps: Mapping[str, Sweep]) -> dict[str, Any]:
    """The mean of each seeded variant's per-seed models: an ordinary mean ensemble named as the variant."""
    return {variant.name: {"members": list(variant.seeds.values()), "method": "mean"}
            for sweep in sweeps.values() if sweep.section == "models" for variant in sweep.variants if variant.seeds}


def expand_ensembles(ensembles: Mapping[str, Any], problems: list[str], sweeps: dict, origins: dict) -> dict[str, Any]:
    expanded = {}
    for name, entry, where, base in _sweep_entries(ensembles, "ensembles", ENSEMBLE_SWEEP_KEYS, expanded, problems):
        swept = {key for key in ENSEMBLE_GRID_KEYS if key in (entry.get("grid") or {})}
        swept |= {key for settings in (entry.get("variants") or {}).values() for key in settings}
        columns = (["label"] if entry.get("variants") else []) + [
            key for key in ("method", "blend", "C", "member_top_k") if key in swept]
        variants, pool = [], {}
        for choice in _combine(ensemble_axes(name, entry, problems)):
            variant_name = f"{name}.{choice.part}" if choice.part else name
            settings = dict(choice.settings)
            weights = settings.pop("_weights", None)
            ensemble = {**copy.deepcopy(base), **settings}
            if weights is not None:
                ensemble["members"] = _weighted_members(ensemble.get("members"), weights, where, problems)
            if isinstance(ensemble.get("members"), Mapping):  # in a sweep, a weight of 0 leaves the member out
                ensemble["members"] = {m: w for m, w in ensemble["members"].items() if w != 0}
            expanded[variant_name] = ensemble
            origins[f"ensembles.{variant_name}"] = (where, {**{key: f"{where}.{key}" for key in base}, **choice.origins})
            member_weights = _member_weights(ensemble.get("members"))
            pool.update(dict.fromkeys(member_weights))
            values = {key: choice.values.get("label") if key == "label" else ensemble.get(key) for key in columns}
            variants.append(Variant(variant_name, "ensemble", {**values, **{f"member:{m}": w for m, w in
                                                                            member_weights.items()}}))
        for variant in variants:  # a column per pool member (its weight; None: not a member), so the table is rectangular
            variant.values = {**{key: variant.values[key] for key in columns},
                              **{f"member:{m}": variant.values.get(f"member:{m}") for m in pool}}
        sweeps[name] = Sweep(name, "ensembles", variants, columns, entry.get("select", "in_sample"), list(pool))
    return expanded


def _references(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(config path, name) of every place that names a model or an ensemble."""
    found = [(f"soft_labels.{teacher}", teacher) for teacher in (config.get("soft_labels") or {})]
    found += [(f"label_correction.{teacher}", teacher) for teacher in (config.get("label_correction") or {})]
    found += [(f"thresholds.{source}", source) for source in (config.get("thresholds") or {})]
    for name, model in (config.get("models") or {}).items():
        if isinstance(model, Mapping) and isinstance(model.get("corrected_by"), str):
            found.append((f"models.{name}.corrected_by", model["corrected_by"]))
    for name, entry in (config.get("ensembles") or {}).items():
        members = entry.get("members") if isinstance(entry, Mapping) else None
        found += [(f"ensembles.{name}.members", member) for member in (members if isinstance(members, (list, dict)) else [])
                  if isinstance(member, str)]
    for name, entry in (config.get("submissions") or {}).items():
        if isinstance(entry, Mapping) and isinstance(entry.get("source"), str):
            found.append((f"submissions.{name}.source", entry["source"]))
    return found


def expand_sweeps(config: Mapping[str, Any]) -> Expansion:
    """The config with every sweep expanded (a config without sweeps comes back equal), the sweeps, and where
    each expanded entry's keys came from. Raises one OoflineError listing every problem of the sweep keys."""
    problems: list[str] = []
    sweeps: dict[str, Sweep] = {}
    origins: dict[str, tuple[str, dict[str, str]]] = {}
    config = dict(config)
    models, ensembles = config.get("models"), config.get("ensembles")
    if isinstance(models, Mapping) and any(is_sweep(e, "models") for e in models.values()):
        config["models"] = expand_models(models, problems, sweeps, origins)
    averages = seed_average_ensembles(sweeps)
    ensembles = ensembles if isinstance(ensembles, Mapping) else {}
    if averages or any(is_sweep(e, "ensembles") for e in ensembles.values()):
        problems += [f"config: ensembles.{name}: models.{name} has seeds, and their mean is the ensemble {name!r}; "
                     "rename one" for name in sorted(set(averages) & set(ensembles))]
        config["ensembles"] = {**averages, **expand_ensembles(ensembles, problems, sweeps, origins)}
        for sweep in sweeps.values():
            for variant in sweep.variants:
                if variant.seeds:
                    origins[f"ensembles.{variant.name}"] = (f"models.{sweep.name}", {"members": f"models.{sweep.name}.seeds"})
    problems += name_problems(config, sweeps)
    if not problems:
        problems += reference_problems(config, sweeps)
    if problems:
        raise OoflineError(_message(list(dict.fromkeys(problems))))
    return Expansion(config, sweeps, origins)


def name_problems(config: Mapping[str, Any], sweeps: Mapping[str, Sweep]) -> list[str]:
    """Expanded names must be path-safe, short enough for a folder, and each name one model or ensemble."""
    problems = []
    sections = {section: list(config.get(section) or {}) for section in ("models", "ensembles")}
    for sweep in sweeps.values():
        names = [v.name for v in sweep.variants] + [m for v in sweep.variants for m in v.seeds.values()]
        for name in names:
            if not NAME.match(name) or len(name) > MAX_NAME:
                problems.append(f"config: {sweep.section}.{sweep.name}: the variant name {name!r} is not a short "
                                "path-safe name (letters, digits, _ . -); give its values labels (a mapping label -> value)")
    counts = Counter(sections["models"] + sections["ensembles"])
    for name, count in counts.items():
        if count > 1:
            problems.append(f"config: {name!r} is both a model and an ensemble (a sweep's variant names "
                            "are <name>.<swept values>; rename one)")
    for sweep in sweeps.values():
        duplicated = [name for name, count in Counter(v.name for v in sweep.variants).items() if count > 1]
        problems += [f"config: {sweep.section}.{sweep.name}: two variants are both {name!r} (the same values twice)"
                     for name in duplicated]
    return problems


def reference_problems(config: Mapping[str, Any], sweeps: Mapping[str, Sweep]) -> list[str]:
    """A sweep's own name is no model or ensemble once it expands (unless it is a seeds-only model, whose name
    is its seeds' mean): a place that names it gets one line listing the variants to name instead."""
    sources = set(config.get("models") or {}) | set(config.get("ensembles") or {})
    problems = []
    for where, name in _references(config):
        sweep = sweeps.get(name)
        if sweep is None or name in sources:
            continue
        shown = ", ".join(v.name for v in sweep.variants[:4]) + (", ..." if len(sweep.variants) > 4 else "")
        problems.append(f"config: {where}: {name!r} is a sweep ({sweep.section}.{name} expands into {shown}); "
                        "name one of its variants")
    return problems


def _message(problems: list[str]) -> str:
    return problems[0] if len(problems) == 1 else f"invalid config: {len(problems)} problems\n" + "\n".join(problems)


# ---------------------------------------------------------------------------------------------- files

def variant_files(out_dir: str, variant: Mapping[str, Any] | Variant) -> dict[str, str]:
    """The score and OOF file of a variant (a model's, or an ensemble's: seed averages are ensembles)."""
    name, source = (variant.name, variant.source) if isinstance(variant, Variant) else (variant["name"], variant["source"])
    if source == "model":
        return {"score": f"{out_dir}/scores/{name}.json", "oof": f"{out_dir}/oof/{name}.parquet"}
    return {"score": f"{out_dir}/ensembles/{name}/score.json", "oof": f"{out_dir}/ensembles/{name}/oof.parquet"}


def table_inputs(out_dir: str, sweep: Sweep) -> dict[str, list[str] | str]:
    """The sweep table step's inputs: each variant's score (and OOF, to select nested), each seed's score."""
    inputs: dict[str, Any] = {
        "scores": [variant_files(out_dir, v)["score"] for v in sweep.variants],
        "seed_scores": [f"{out_dir}/scores/{model}.json" for v in sweep.variants for model in v.seeds.values()],
    }
    if sweep.select == "nested":
        inputs.update(oof=[variant_files(out_dir, v)["oof"] for v in sweep.variants],
                      targets=f"{out_dir}/targets.parquet", labels=f"{out_dir}/labels.json")
    return inputs


# ---------------------------------------------------------------------------------------------- dry run

def gpu_class(resources: Mapping[str, Any]) -> str | None:
    """A GPU job's resource class (`gpu=1 gpu_model=h100 mem_mb=64000 runtime=720`), None for a CPU job."""
    gpus = resources.get("gpu") or 0
    gres = resources.get("gres")
    if not gpus and not (isinstance(gres, str) and "gpu" in gres):
        return None
    keys = ("gpu", "gpu_model", "gres", "mem_mb", "runtime", "slurm_partition")
    return " ".join(f"{key}={resources[key]}" for key in keys if resources.get(key) not in (None, "", 0))


def plan_lines(sweeps: Mapping[str, Sweep], jobs: Iterable[tuple[str, Mapping[str, str], Mapping[str, Any]]]
               ) -> list[str]:
    """What a dry run of the sweeps will run, before anything runs: per sweep its variants, the planned jobs
    that belong to them (per rule) and its GPU jobs per resource class.

    jobs: (rule name, wildcards, resources) of every job the run plans."""
    owner: dict[str, str] = {}
    for sweep in sweeps.values():
        for variant in sweep.variants:
            owner[variant.name] = sweep.name
            owner.update(dict.fromkeys(variant.seeds.values(), sweep.name))
    planned: dict[str, Counter] = {name: Counter() for name in sweeps}
    gpu: dict[str, Counter] = {name: Counter() for name in sweeps}
    for rule, wildcards, resources in jobs:
        sweep = wildcards.get("sweep") if wildcards.get("sweep") in sweeps else None
        for key in ("model", "ensemble", "source", "teacher"):
            if sweep is None and wildcards.get(key) in owner:
                sweep = owner[wildcards[key]]
        if sweep is None:
            continue
        planned[sweep][rule] += 1
        resource_class = gpu_class(resources() if callable(resources) else resources)
        if resource_class:
            gpu[sweep][resource_class] += 1
    lines = []
    for name, sweep in sweeps.items():
        seeds = sorted({seed for v in sweep.variants for seed in v.seeds})
        shown = ", ".join(v.name for v in sweep.variants[:8]) + (", ..." if len(sweep.variants) > 8 else "")
        lines.append(f"sweep {sweep.section}.{name}: {len(sweep.variants)} variant(s)"
                     + (f" x {len(seeds)} seeds" if seeds else "")
                     + (f" (select: {sweep.select})" if len(sweep.variants) > 1 else "") + f": {shown}")
        jobs_of = planned[name]
        lines.append(f"  new jobs: {sum(jobs_of.values())}"
                     + (" (" + ", ".join(f"{rule} {count}" for rule, count in sorted(jobs_of.items())) + ")" if jobs_of else ""))
        for resource_class, count in sorted(gpu[name].items()):
            lines.append(f"  GPU jobs: {count} x {resource_class}")
    return lines


def print_plan_after_job_stats(sweeps: Mapping[str, Sweep], dag_of, stream=None) -> None:
    """Print plan_lines once, right after Snakemake logs its job table (in a dry run and before a real run's
    first job): a handler on Snakemake's logger, reading the planned jobs from `dag_of()` (the workflow's DAG)."""
    import logging
    import sys

    class SweepPlan(logging.Handler):
        printed = False

        def emit(self, record: logging.LogRecord) -> None:
            if self.printed or str(getattr(record, "event", "")) != "run_info" or not hasattr(record, "stats"):
                return
            self.printed = True
            jobs = [(job.rule.name, dict(job.wildcards_dict), lambda job=job: dict(job.resources.items()))
                    for job in dag_of().needrun_jobs()]
            print("\n".join(plan_lines(sweeps, jobs)), file=stream or sys.stderr, flush=True)

    logging.getLogger("snakemake").addHandler(SweepPlan())
