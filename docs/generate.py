"""Writes the generated parts of the documentation, so that they cannot drift from what they describe:

- `docs/configuration.md`, the block "config-reference": every key of `schemas/config.schema.yaml` (type, allowed
  values, default, description), model keys with their kinds and defaults from `workflow_scripts/model_spec.py`;
- `README.md`, the block "rule-graph": a Mermaid picture of the rules `make demo`'s two configs run, from
  `snakemake --rulegraph` (GitHub renders Mermaid; Graphviz's `dot` is not needed, and not installed here);
- `docs/reruns.md`, the block "reruns-table": what a change reruns, from the rows of `tests/test_staleness.py`
  (`model_rows()`, `SHARED_ROWS` and any other module-level `*_ROWS` list of (row id, config edit, planned jobs)).
- `docs/generated.md`, the block "rule-graph-generated": the picture of `demo/generated.yaml`'s rules.

    python docs/generate.py            # = make docs: rewrite the blocks in place
    python docs/generate.py --check    # exit 1 naming each file whose block differs (tests/test_docs.py)

A block sits between `<!-- BEGIN GENERATED name ... -->` and `<!-- END GENERATED name -->`; the text around it is
written by hand. The output depends only on the schema, the spec classes, the rule files, the demo configs and the
staleness rows (every set is sorted), so two runs write the same bytes.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import yaml

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python docs/generate.py` puts docs/ first; workflow_scripts lives in the root
    sys.path.insert(0, str(REPO))
SCHEMA = REPO / "schemas" / "config.schema.yaml"
# the configs `make demo` runs (README's picture), and `make demo-generated`'s (docs/generated.md's picture)
DEMO_CONFIGS = ("config.yaml", "demo/debates.yaml")
GENERATED_CONFIGS = ("demo/generated.yaml",)
BEGIN = re.compile(r"^<!-- BEGIN GENERATED ([\w-]+)\b.*-->$")


# ---------------------------------------------------------------------------------------------- blocks


def begin_marker(name: str) -> str:
    return f"<!-- BEGIN GENERATED {name}: `make docs` writes this block (docs/generate.py); do not edit it -->"


def replace_block(text: str, name: str, content: str) -> str:
    """`text` with the lines between block `name`'s markers replaced by `content`."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if (m := BEGIN.match(line.strip())) and m.group(1) == name]
    ends = [i for i, line in enumerate(lines) if line.strip() == f"<!-- END GENERATED {name} -->"]
    if len(starts) != 1 or len(ends) != 1 or ends[0] < starts[0]:
        raise SystemExit(f"generate: expected one BEGIN/END GENERATED {name} pair of lines, found "
                         f"{len(starts)} BEGIN and {len(ends)} END")
    new = lines[:starts[0]] + [begin_marker(name)] + content.rstrip("\n").splitlines() + lines[ends[0]:]
    return "\n".join(new) + "\n"


# ---------------------------------------------------------------------------------------------- the config reference


def load_schema(path: Path = SCHEMA) -> dict:
    return yaml.safe_load(path.read_text())


def flow(value: Any) -> str:
    """A value as it would be written in config.yaml (flow style)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False).strip()
    return text.removesuffix("...").strip()


def escape(text: str) -> str:
    """Schema text for Markdown: one line, and `<...>` outside code spans would be read as HTML and vanish."""
    parts = " ".join(str(text).split()).split("`")
    return "`".join(part if i % 2 else part.replace("<", "&lt;") for i, part in enumerate(parts))


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation but `-` and `_` dropped, spaces to `-`."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def reference_name(node: dict) -> str | None:
    ref = node.get("$ref", "") if isinstance(node, dict) else ""
    return ref.rsplit("/", 1)[-1] if ref.startswith("#/definitions/") else None


MODEL_TITLE = "A model entry"
SHARED_TITLE = "Shared block: `{name}`"
PLURALS = {"integer": "integers", "string": "strings", "number": "numbers", "name": "names", "settings": "settings"}


class Reference:
    """The schema as Markdown bullets: `- `path` (type; required; default): description`, one per key.

    A block the schema uses in several places (by `$ref`, or by a YAML anchor such as `*finetune_properties`,
    which loads as the very same objects) is written once, in its own section, and linked from each place."""

    def __init__(self, schema: dict):
        self.schema = schema
        self.definitions = schema.get("definitions", {})
        uses = {name: 0 for name in self.definitions}
        self._count_uses(schema.get("properties", {}), uses)
        self.shared = {name: github_slug(SHARED_TITLE.format(name=name)) for name, count in uses.items()
                       if count > 1 and name not in ("name", "model")}
        self.shared["model"] = github_slug(MODEL_TITLE)

    # a definition is used where a node $refs it, or where a node's properties hold every one of its own
    def matched_definition(self, node: dict) -> tuple[str, list[str]] | None:
        """(definition, the node's keys beyond it) when the node is, or extends, a definition's properties."""
        ref = reference_name(node)
        if ref:
            return ref, []
        properties = node.get("properties") if isinstance(node, dict) else None
        if not properties:
            return None
        for name, definition in self.definitions.items():
            own = definition.get("properties") or {}
            if own and all(properties.get(key) is value for key, value in own.items()):
                return name, [key for key in properties if key not in own]
        return None

    def _count_uses(self, node: Any, uses: dict[str, int]) -> None:
        if isinstance(node, list):
            for item in node:
                self._count_uses(item, uses)
            return
        if not isinstance(node, dict):
            return
        match = self.matched_definition(node)
        if match:
            uses[match[0]] += 1
            for key in match[1]:
                self._count_uses(node["properties"][key], uses)
            return
        for value in node.values():
            self._count_uses(value, uses)

    def link(self, name: str) -> str:
        title = MODEL_TITLE.lower() if name == "model" else f"`{name}` block"
        return f"[{title}](#{self.shared[name]})"

    def type_text(self, node: dict) -> str:
        """`integer, ≥ 1`, `` `mean` \\| `rank` ``, `list of name`: what a key accepts, from its schema node."""
        match = self.matched_definition(node)
        if match and match[0] == "name":
            return "name"
        if match and match[0] in self.shared:
            return self.link(match[0]) + (", plus the keys below" if match[1] else "")
        if match and reference_name(node):  # a block used once: its own type
            return self.type_text(self.definitions[match[0]])
        if "enum" in node:
            return " \\| ".join(f"`{flow(v)}`" for v in node["enum"])
        for combinator in ("oneOf", "anyOf"):
            alternatives = node.get(combinator, [])
            if alternatives and all(set(a) == {"required"} for a in alternatives):
                return "settings with " + " or ".join(f"`{a['required'][0]}`" for a in alternatives)
            if alternatives:
                return " or ".join(self.type_text(alternative) for alternative in alternatives)
        types = node.get("type")
        words = []
        for kind in [types] if isinstance(types, str) else list(types or []):
            if kind == "array":
                items = self.type_text(node["items"]) if node.get("items") else "values"
                head, sep, rest = items.partition(",")
                items = PLURALS.get(head, head) + sep + rest
                count = node.get("minItems") if node.get("minItems") == node.get("maxItems") else None
                words.append(f"list of {count} {items}" if count else f"list of {items}")
            elif kind == "object" and self.is_name_map(node):
                words.append(f"mapping NAME → {self.value_text(node['additionalProperties'])}")
            else:
                words.append("settings" if kind == "object" else kind)
        text = " or ".join(words) if words else ("settings" if "properties" in node else "any")
        for key, symbol in (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"), ("exclusiveMaximum", "<")):
            if key in node:
                text += f", {symbol} {flow(node[key])}"
        if node.get("minLength") == 1:
            text += ", not empty"
        if "pattern" in node:
            text += f", matching `{node['pattern']}`"
        return text

    def value_text(self, node: dict) -> str:
        return "settings (below)" if "properties" in node and not self.matched_definition(node) else self.type_text(node)

    @staticmethod
    def is_name_map(node: dict) -> bool:
        """A mapping whose keys the user names (models, ensembles, ...): its values share one schema."""
        return isinstance(node, dict) and "properties" not in node and isinstance(node.get("additionalProperties"), dict)

    def line(self, path: str, node: dict, required: bool, extra: str = "") -> str:
        facts = [self.type_text(node)]
        if required:
            facts.append("required")
        if "default" in node:
            facts.append(f"default `{flow(node['default'])}`")
        ref = reference_name(node)
        description = escape(node.get("description") or (self.definitions.get(ref) or {}).get("description", ""))
        return f"- `{path}` ({'; '.join(facts)}){extra}" + (f": {description}" if description else "")

    def keys(self, prefix: str, node: dict, only: list[str] | None = None) -> list[str]:
        """A bullet per key of an object schema (and the keys inside each), by dotted path from the section."""
        lines = []
        required = set(node.get("required", []))
        for key, child in (node.get("properties") or {}).items():
            if only is None or key in only:
                lines.append(self.line(f"{prefix}{key}", child, key in required))
                lines += self.inside(f"{prefix}{key}", child)
        return lines

    def inside(self, path: str, node: dict) -> list[str]:
        """The keys inside a key: an object's properties, a name map's values, a list's items."""
        if not isinstance(node, dict):
            return []
        match = self.matched_definition(node)
        if match and match[0] in self.shared:
            return self.keys(f"{path}.", node, only=match[1]) if match[1] else []
        if match and match[0] != "name":  # used once: written in place
            target = node if "properties" in node else self.definitions[match[0]]
            return self.keys(f"{path}.", target) if "properties" in target else []
        if "properties" in node:
            return self.keys(f"{path}.", node)
        if self.is_name_map(node):
            return self.inside(f"{path}.NAME", node["additionalProperties"])
        for combinator in ("oneOf", "anyOf"):  # a value that may be a block of keys (answers.prompts.NAME)
            if any(isinstance(alternative, dict) and "properties" in alternative for alternative in node.get(combinator, [])):
                return [line for alternative in node[combinator] for line in self.inside(path, alternative)]
        if node.get("type") == "array" and isinstance(node.get("items"), dict):
            return self.keys(f"{path}[].", node["items"]) if "properties" in node["items"] else []
        return []

    def model_keys(self) -> list[str]:
        """The model block's keys, each with the kinds that have it, their defaults and what a change reruns."""
        from workflow_scripts.model_spec import SPEC_BY_KIND, config_defaults

        kinds = list(SPEC_BY_KIND)
        fields = {kind: {f.name: f for f in dataclasses.fields(SPEC_BY_KIND[kind])} for kind in kinds}
        lines = []
        for key, child in self.definitions["model"]["properties"].items():
            owners = [kind for kind in kinds if key in fields[kind]]
            if not owners:  # tests/test_model_spec.py makes every schema key some kind's
                lines.append(self.line(key, child, False))
                continue
            defaults: dict[str, list[str]] = {}
            for kind in owners:
                value = config_defaults(kind).get(key)
                if value is not None:
                    defaults.setdefault(f"`{flow(value)}`", []).append(kind)
            metadata = fields[owners[0]][key].metadata
            if metadata["run"]:
                reader = "a run setting (a change reruns nothing)"
            elif metadata["steps"]:
                reader = f"read by the step{'s' if len(metadata['steps']) > 1 else ''} {', '.join(metadata['steps'])}"
            elif metadata["export"]:
                reader = "read by the rules; adds artifacts no prediction reads"
            else:
                reader = "read by the rules (which jobs run, what they read)"
            facts = ["every kind" if owners == kinds else ", ".join(owners)]
            if len(defaults) == 1 and sum(map(len, defaults.values())) == len(owners):
                facts.append(f"default {next(iter(defaults))}")
            elif defaults:
                facts.append("default " + "; ".join(f"{', '.join(ks)}: {value}" for value, ks in defaults.items()))
            lines.append(self.line(key, child, False, f" — {'; '.join(facts + [reader])}"))
            lines += self.inside(key, child)
        return lines

    def render(self) -> str:
        """A section per top-level key in schema order, then a model entry, then each shared block."""
        properties = self.schema["properties"]
        out = ["## Every key", "",
               "Generated from `schemas/config.schema.yaml`, the schema every run validates against, and for model",
               "keys from the spec classes of `workflow_scripts/model_spec.py` (which kinds have a key, its default,",
               "what a change reruns). `NAME` is a name you choose (letters, digits, `_.-`); `[]` marks a list's items.",
               "", "Sections: " + ", ".join(f"[`{key}`](#{github_slug(key)})" for key in properties) + ".", ""]
        for key, node in properties.items():
            out += [f"### `{key}`", "", self.type_text(node) + (f"; default `{flow(node['default'])}`"
                                                                 if "default" in node else "") + ".", ""]
            if node.get("description"):
                out += [escape(node["description"]), ""]
            out += self.inside(key, node) + [""]
        out += [f"### {MODEL_TITLE}", "",
                "The keys of `models.NAME` and `model_defaults`. After each key's type: the kinds that have it (a key",
                "its kind does not have is a config error), the default the spec applies, and what a change reruns.",
                "", *self.model_keys(), ""]
        for name, anchor in self.shared.items():
            if name == "model":
                continue
            node = self.definitions[name]
            out += [f"### {SHARED_TITLE.format(name=name)}", ""]
            if node.get("description"):
                out += [escape(node["description"]), ""]
            out += self.keys("", node) + [""]
        # the sweep keys: expanded into ordinary models and ensembles before validation (docs/sweeps.md)
        for name, section in (("model_sweep", "models"), ("ensemble_sweep", "ensembles")):
            node = self.definitions.get(name)
            if node:
                out += [f"### Sweep keys of `{section}.NAME`", "", escape(node.get("description", "")), "",
                        *self.keys(f"{section}.NAME.", node), ""]
        return "\n".join(line for i, line in enumerate(out) if line or (i and out[i - 1])).rstrip("\n") + "\n"


def config_reference(schema: dict) -> str:
    return Reference(schema).render()


# ---------------------------------------------------------------------------------------------- the rule graph


def rule_edges(configfiles: tuple[str, ...], repo: Path = REPO) -> set[tuple[str, str]]:
    """(upstream rule, downstream rule) of every `snakemake --rulegraph` of the configs, in a scratch folder."""
    edges = set()
    for configfile in configfiles:
        with tempfile.TemporaryDirectory() as scratch:
            command = [sys.executable, "-m", "snakemake", "-s", str(repo / "Snakefile"), "--directory", scratch,
                       "--rulegraph", "--configfile", str(repo / configfile)]
            result = subprocess.run(command, capture_output=True, text=True, cwd=scratch)
        if result.returncode != 0:
            raise SystemExit(f"generate: snakemake --rulegraph failed for {configfile}:\n{result.stderr[-2000:]}")
        edges |= parse_rulegraph(result.stdout)
    return edges


def parse_rulegraph(dot: str) -> set[tuple[str, str]]:
    labels = dict(re.findall(r'^\s*(\d+)\[label = "([^"]+)"', dot, flags=re.M))
    return {(labels[a], labels[b]) for a, b in re.findall(r"^\s*(\d+) -> (\d+)\s*$", dot, flags=re.M)}


def rule_stages(repo: Path = REPO) -> dict[str, str]:
    """{rule: its rule file's stem}, in the Snakefile's include order."""
    order = re.findall(r'^include: "rules/(\w+)\.smk"', (repo / "Snakefile").read_text(), flags=re.M)
    stages = {}
    for stem in order:
        text = (repo / "rules" / f"{stem}.smk").read_text()
        for rule in re.findall(r"^\s*(?:rule\s+(\w+)\s*:|use rule \w+ as (\w+))", text, flags=re.M):
            stages[rule[0] or rule[1]] = stem
    return stages


def descendants(edges: set[tuple[str, str]]) -> dict[str, set[str]]:
    """{rule: every rule downstream of it}. A rule graph may have cycles (a teacher's predictions feed a student's
    training, whose predictions feed another round), so this walks without recursion."""
    children: dict[str, set[str]] = {}
    for a, b in edges:
        children.setdefault(a, set()).add(b)
        children.setdefault(b, set())
    below = {}
    for node in children:
        seen, stack = set(), [node]
        while stack:
            for child in children[stack.pop()]:
                if child not in seen:
                    seen.add(child)
                    stack.append(child)
        below[node] = seen
    return below


def components(edges: set[tuple[str, str]]) -> dict[str, frozenset]:
    """{rule: the rules on a cycle with it, itself included}."""
    below = descendants(edges)
    return {node: frozenset({node} | {other for other in below[node] if node in below[other]}) for node in below}


def transitive_reduction(edges: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """The edges not implied by a longer path between different cycles (rules on one cycle keep their edges)."""
    component = components(edges)
    condensed = {(component[a], component[b]) for a, b in edges if component[a] != component[b]}
    below = descendants(condensed)
    return {(a, b) for a, b in edges if component[a] == component[b] or not any(
        component[b] in below[c] for c2, c in condensed if c2 == component[a] and c != component[b])}


def topological(nodes: set[str], edges: set[tuple[str, str]]) -> list[str]:
    """Nodes upstream first (a cycle's rules together, by name); ties by name, so every run gives one order."""
    component = components(edges)
    for node in nodes:
        component.setdefault(node, frozenset({node}))
    groups = sorted(set(component[node] for node in nodes), key=lambda group: min(group))
    parents = {group: {component[a] for a, b in edges if component[b] == group and component[a] != group}
               for group in groups}
    ordered: list[frozenset] = []
    while len(ordered) < len(groups):
        ordered.append(next(group for group in groups if group not in ordered and parents[group] <= set(ordered)))
    return [node for group in ordered for node in sorted(group)]


def mermaid(edges: set[tuple[str, str]], stages: dict[str, str]) -> str:
    """A Mermaid flowchart: one box per rule inside a box per rule file, an arrow where a rule reads another's
    output (arrows implied by a longer path are left out; `all` is left out)."""
    edges = transitive_reduction({(a, b) for a, b in edges if "all" not in (a, b)})
    nodes = {node for edge in edges for node in edge}
    order = topological(nodes, edges)
    lines = ["```mermaid", "flowchart TD"]
    for stem in dict.fromkeys(stages.values()):
        members = [node for node in order if stages.get(node) == stem]
        if members:
            lines += [f'  subgraph {stem}_rules["rules/{stem}.smk"]', "    " + " & ".join(members), "  end"]
    for node in order:
        targets = [b for b in order if (node, b) in edges]
        if targets:
            lines.append(f"  {node} --> {' & '.join(targets)}")
    return "\n".join(lines + ["```"]) + "\n"


# ---------------------------------------------------------------------------------------------- what a change reruns


def staleness_module():
    sys.path.insert(0, str(REPO / "tests"))
    try:
        return importlib.import_module("test_staleness")
    finally:
        sys.path.remove(str(REPO / "tests"))


def edit_keys(edit: dict, node: dict, definitions: dict, prefix: str = "") -> list[str]:
    """The dotted keys a staleness row sets, down to the schema's leaves; a user-named key becomes NAME."""
    keys = []
    for key, value in edit.items():
        child, segment = (node.get("properties") or {}).get(key), key
        if child is None and Reference.is_name_map(node):
            child, segment = node["additionalProperties"], "NAME"
        if isinstance(child, dict) and reference_name(child) not in (None, "name"):
            child = definitions[reference_name(child)]
        path = f"{prefix}{segment}"
        values = child.get("additionalProperties") if isinstance(child, dict) and Reference.is_name_map(child) else None
        if isinstance(value, dict) and isinstance(child, dict) and ("properties" in child or (
                isinstance(values, dict) and ("properties" in values or reference_name(values) not in (None, "name")))):
            keys += edit_keys(value, child, definitions, f"{path}.")
        else:
            keys.append(path)
    return keys


def first_jobs(jobs: set, below: dict[str, set[str]]) -> str:
    """The planned jobs that no other planned job's rule feeds (rules on one cycle count as parallel): where the
    rerun starts; everything downstream of them reruns too."""
    jobs = {(rule, wildcards) for rule, wildcards in jobs if rule != "all"}
    if not jobs:
        return "nothing"
    rules = {rule for rule, _ in jobs}
    upstream = lambda other, rule: rule in below.get(other, set()) and other not in below.get(rule, set())  # noqa: E731
    first: dict[str, set[str]] = {}
    for rule, wildcards in jobs:
        if not any(upstream(other, rule) for other in rules):
            first.setdefault(rule, set()).update(w.split("=", 1)[1] for w in wildcards if w.startswith("split="))
    text = ", ".join(f"`{rule}`" + (" (full-data model)" if splits == {"full"} else "")
                     for rule, splits in sorted(first.items()))
    return text + (" alone" if rules == set(first) else " and what reads it")


def defaults_note(keys: list[str], config: dict) -> str:
    """For a model_defaults row: say so when every model of the test's config that has the key sets its own."""
    from workflow_scripts.model_spec import kind_keys

    notes = []
    for key in dict.fromkeys(key.split(".")[1] for key in keys):
        owners = [entry for entry in config["models"].values() if key in kind_keys(entry["kind"])]
        if owners and all(key in entry for entry in owners):
            notes.append(f"every model of the test's config that has `{key}` sets its own")
    return f" ({'; '.join(notes)})" if notes else ""


def reruns_table(schema: dict, edges: set[tuple[str, str]]) -> str:
    """A table per config section: the keys a staleness row changes, and the jobs where the rerun starts."""
    staleness = staleness_module()
    from workflow_scripts.model_spec import SPEC_BY_KIND

    below = descendants(edges)
    sections: dict[str, dict[str, dict[str, str]]] = {}  # section -> keys -> kind ("" outside models) -> start
    # model_rows() and every module-level list of rows (SHARED_ROWS, and any other *_ROWS a later test adds)
    listed = [getattr(staleness, name) for name in ["SHARED_ROWS"] + sorted(
        name for name in dir(staleness) if name.endswith("_ROWS") and name != "SHARED_ROWS")]
    for row_id, edit, expected in staleness.model_rows() + [row for rows in listed for row in rows]:
        section = row_id.split(".", 1)[0]
        keys = edit_keys(edit, schema, schema.get("definitions", {}))
        own = [key for key in keys if key.split(".", 1)[0] == section]
        context = [key for key in keys if key not in own]
        shown = ", ".join(f"`{key.removeprefix('models.NAME.')}`" for key in own)
        if context:
            shown += " (with " + ", ".join(f"`{key}`" for key in context) + ")"
        model = row_id.split(".")[1] if section == "models" and "." in row_id else ""
        kind = staleness.CONFIG["models"].get(model, {}).get("kind", "")  # "" outside models (or a model not in CONFIG)
        effect = first_jobs(expected, below)
        if section == "model_defaults":
            effect += defaults_note(own, staleness.CONFIG)
        sections.setdefault(section, {}).setdefault(shown, {})[kind] = effect
    out = []
    for section, rows in sections.items():
        grouped: dict[str, list[str]] = {}
        for shown, by_kind in rows.items():
            if set(by_kind) == {""}:
                effect = by_kind[""]
            else:
                starts: dict[str, list[str]] = {}
                for kind in [*SPEC_BY_KIND, ""]:
                    if kind in by_kind:
                        starts.setdefault(by_kind[kind], []).append(kind or "a model the test's CONFIG lacks")
                effect = "; ".join(f"{'every kind' if len(kinds) == len(SPEC_BY_KIND) else ', '.join(kinds)}: {start}"
                                   for start, kinds in starts.items())
            grouped.setdefault(effect, []).append(shown)
        title = {"models": "A model's keys (`models.NAME.KEY`)"}.get(section, f"`{section}`")
        out += [f"### {title}", "", "| change | reruns from |", "| --- | --- |"]
        out += [f"| {', '.join(shown)} | {effect} |" for effect, shown in grouped.items()]
        out.append("")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------- main


def generated_files(repo: Path = REPO) -> dict[Path, str]:
    """{file: its text with every generated block rewritten}."""
    schema = load_schema(repo / "schemas" / "config.schema.yaml")
    demo, generated = rule_edges(DEMO_CONFIGS, repo), rule_edges(GENERATED_CONFIGS, repo)
    stages = rule_stages(repo)
    blocks: dict[str, tuple[str, Callable[[], str]]] = {
        "config-reference": ("docs/configuration.md", lambda: config_reference(schema)),
        "rule-graph": ("README.md", lambda: mermaid(demo, stages)),
        "rule-graph-generated": ("docs/generated.md", lambda: mermaid(generated, stages)),
        "reruns-table": ("docs/reruns.md", lambda: reruns_table(schema, demo)),
    }
    texts: dict[Path, str] = {}
    for name, (file, make) in blocks.items():
        path = repo / file
        texts[path] = replace_block(texts.get(path, path.read_text()), name, make())
    return texts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a generated block differs")
    args = parser.parse_args(argv)
    stale = []
    for path, text in generated_files().items():
        if path.read_text() != text:
            stale.append(path.relative_to(REPO))
            if not args.check:
                path.write_text(text)
    if args.check and stale:
        print(f"generated blocks differ in {', '.join(map(str, stale))}: run `make docs`")
        return 1
    print("rewrote " + ", ".join(map(str, stale)) if stale and not args.check else "generated blocks up to date")
    return 0

if __name__ == "__main__":
    sys.exit(main())
