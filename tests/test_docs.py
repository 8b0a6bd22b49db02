"""The documentation is checked against what it describes (the YAML examples are run by test_docs_examples.py):
- the generated blocks (the config reference, the rule graphs, the reruns table) are what `make docs` writes now;
- each recipe's job count in the README is what `snakemake -n` plans for it with its demo overlay;
- no relative link is dead and no `#anchor` names a heading that does not exist;
- a figure quoted as a link to bench/RESULTS.md is in the section it links to;
- the README stays a front page: at most 200 lines, every guide under docs/ linked from it.
"""
from __future__ import annotations

import copy
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from dry_run_plans import plan_configs  # noqa: E402


def load_generator():
    spec = importlib.util.spec_from_file_location("docs_generate", REPO / "docs" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generate = load_generator()


# ---------------------------------------------------------------------------------------------- generated blocks


@pytest.mark.slow
def test_the_generated_blocks_are_what_make_docs_writes():
    """Two `snakemake --rulegraph` runs and the schema: a schema key, a rule or a staleness row added without
    `make docs` leaves a block behind, and this names the file."""
    stale = [str(path.relative_to(REPO)) for path, text in generate.generated_files().items()
             if path.read_text() != text]
    assert not stale, f"run `make docs`: the generated blocks of {', '.join(stale)} are out of date"


def schema_keys(node, found=None) -> set[str]:
    """Every property name anywhere in the schema (definitions included)."""
    found = set() if found is None else found
    if isinstance(node, dict):
        for key, value in (node.get("properties") or {}).items():
            found.add(key)
            schema_keys(value, found)
        for key, value in node.items():
            if key != "properties":
                schema_keys(value, found)
    elif isinstance(node, list):
        for item in node:
            schema_keys(item, found)
    return found


def test_the_config_reference_has_a_line_for_every_schema_key_with_its_description():
    schema = generate.load_schema()
    reference = generate.config_reference(schema)
    bullets = re.findall(r"^- `([^`]+)`", reference, flags=re.M)
    leaves = {re.split(r"[.\[\]]+", path.rstrip("]"))[-1] for path in bullets if path}
    leaves |= set(re.findall(r"^### `(\w+)`$", reference, flags=re.M))  # a top-level section is a heading
    missing = sorted(schema_keys(schema) - leaves)
    assert not missing, f"keys the reference leaves out: {missing}"
    # a description in the schema is the text a user reads, word for word
    select_epoch = next(line for line in reference.splitlines() if line.startswith("- `select_epoch`"))
    assert " ".join(schema["definitions"]["model"]["properties"]["select_epoch"]["description"].split()) in select_epoch


def test_a_key_added_to_the_schema_appears_in_the_reference_with_its_type_and_default():
    schema = copy.deepcopy(generate.load_schema())
    schema["properties"]["folds"]["properties"]["shuffle"] = {"type": "boolean", "default": True,
                                                              "description": "shuffle before splitting"}
    reference = generate.config_reference(schema)
    assert "- `folds.shuffle` (boolean; default `true`): shuffle before splitting" in reference


def test_model_keys_carry_the_kinds_and_defaults_the_spec_applies():
    """The defaults a user reads are model_spec's config_defaults, the ones the steps apply."""
    from workflow_scripts.model_spec import config_defaults

    reference = generate.config_reference(generate.load_schema())
    line = next(line for line in reference.splitlines() if line.startswith("- `C` "))
    assert f"tfidf_linear: `{config_defaults('tfidf_linear')['C']}`" in line
    assert f"embedding_head: `{config_defaults('embedding_head')['C']}`" in line
    assert "encoder_full" not in line.split(":")[0]
    log_every = next(line for line in reference.splitlines() if line.startswith("- `log_every` "))
    assert "a run setting (a change reruns nothing)" in log_every


def test_the_rule_graph_drops_implied_arrows_and_keeps_cycles():
    edges = {("a", "b"), ("b", "c"), ("a", "c"),  # a -> c is implied by a -> b -> c
             ("c", "d"), ("c", "e"), ("d", "e"), ("e", "d")}  # d <-> e: a cycle (a later round)
    # both arrows into the cycle stay: neither is implied by the other, though each of d, e reaches the other
    assert generate.transitive_reduction(edges) == {("a", "b"), ("b", "c"), ("c", "d"), ("c", "e"), ("d", "e"),
                                                    ("e", "d")}
    assert generate.topological({"a", "b", "c", "d", "e"}, edges) == ["a", "b", "c", "d", "e"]
    picture = generate.mermaid(edges | {("e", "all")}, {"a": "data", "b": "data", "c": "models", "d": "models"})
    assert 'subgraph data_rules["rules/data.smk"]\n    a & b\n  end' in picture
    assert "  a --> b\n" in picture and "a --> b & c" not in picture and "all" not in picture


def test_the_reruns_table_starts_each_row_where_the_staleness_row_plans_its_first_jobs():
    edges = {("prepare_model", "train_adapter"), ("train_adapter", "predict_fold"), ("predict_fold", "oof"),
             ("oof", "ensemble"), ("folds", "tfidf_linear_fold"), ("tfidf_linear_fold", "oof")}
    job = lambda rule, **w: (rule, frozenset(f"{k}={v}" for k, v in w.items()))  # noqa: E731
    chain = {job("train_adapter", model="m", split="fold0"), job("predict_fold", model="m", split="fold0"),
             job("oof", model="m"), job("ensemble", ensemble="e"), job("all")}
    assert generate.first_jobs(chain, generate.descendants(edges)) == "`train_adapter` and what reads it"
    assert generate.first_jobs({job("train_adapter", model="m", split="full"), job("all")},
                               generate.descendants(edges)) == "`train_adapter` (full-data model) alone"
    assert generate.first_jobs({job("all")}, generate.descendants(edges)) == "nothing"


# ---------------------------------------------------------------------------------------------- recipe job counts


def readme_job_counts(readme: str) -> dict[str, int]:
    """{recipe: jobs} from the README's recipe table (the row's `recipes/NAME.yaml` link and its jobs column)."""
    lines = readme.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("|") and "| jobs |" in line)
    columns = [cell.strip() for cell in lines[header].strip("|").split("|")]
    counts = {}
    for line in lines[header + 2:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        recipe = re.search(r"\(recipes/([\w-]+)\.yaml\)", cells[columns.index("recipe")]).group(1)
        counts[recipe] = int(cells[columns.index("jobs")])
    return counts


def planned_job_count(configfiles: list[str]) -> int:
    """`snakemake -n` in a scratch folder: the `total` of its job stats."""
    with tempfile.TemporaryDirectory() as scratch:
        command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", scratch, "-n",
                   "--quiet", "rules", "--configfile", *[str(REPO / path) for path in configfiles]]
        result = subprocess.run(command, capture_output=True, text=True, cwd=scratch, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return int(re.search(r"^total\s+(\d+)$", result.stdout, flags=re.M).group(1))


def test_the_readme_lists_every_recipe_with_a_job_count():
    recipes = {name.removeprefix("recipe-") for name in plan_configs() if name.startswith("recipe-")}
    assert set(readme_job_counts((REPO / "README.md").read_text())) == recipes


@pytest.mark.slow
def test_each_recipes_job_count_is_what_its_dry_run_plans():
    """tests/dry_run_plans.py's recipes (each with its demo overlay), one dry run each."""
    stated = readme_job_counts((REPO / "README.md").read_text())
    planned = {name.removeprefix("recipe-"): planned_job_count(configfiles)
               for name, configfiles in plan_configs().items() if name.startswith("recipe-")}
    wrong = {name: f"README says {stated.get(name)}, snakemake -n plans {count}"
             for name, count in planned.items() if stated.get(name) != count}
    assert not wrong, wrong


# ---------------------------------------------------------------------------------------------- links


def markdown_files() -> list[Path]:
    found = []
    for root, dirs, files in os.walk(REPO):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in ("results", "node_modules",
                                                                               "__pycache__", "work"))
        found += [Path(root) / name for name in sorted(files) if name.endswith(".md")]
    return found


def prose(text: str) -> str:
    """The text without fenced code blocks and HTML comments (blank lines keep the numbering)."""
    text = re.sub(r"<!--.*?-->", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
    out, fenced = [], False
    for line in text.splitlines():
        if line.strip().startswith("```"):
            fenced = not fenced
            out.append("")
            continue
        out.append("" if fenced else line)
    return "\n".join(out)


LINK = re.compile(r"\[((?:[^\[\]]|\[[^\]]*\])*)\]\(([^)\s]+)\)")


def links(text: str) -> list[tuple[str, str]]:
    """(text, target) of every inline link outside code blocks and code spans."""
    found = []
    for line in prose(text).splitlines():
        spans = re.sub(r"`[^`]*`", lambda m: m.group(0) if "](" not in m.group(0) else "``", line)
        found += LINK.findall(spans)
    return found


def anchors(path: Path) -> set[str]:
    """The anchors GitHub gives a Markdown file's headings (a repeated heading gets -1, -2, ...)."""
    seen: dict[str, int] = {}
    found = set(re.findall(r'<a (?:id|name)="([^"]+)"', path.read_text()))
    for line in prose(path.read_text()).splitlines():
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            slug = generate.github_slug(heading.group(1))
            found.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
    return found


def link_problems(path: Path) -> list[str]:
    problems = []
    for text, target in links(path.read_text()):
        if re.match(r"^[a-z]+:", target):  # https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path
        where = f"{path.relative_to(REPO)}: [{text}]({target})"
        if not resolved.exists():
            problems.append(f"{where}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            problems.append(f"{where}: no heading with the anchor #{anchor}")
    return problems


def test_no_relative_link_is_dead_and_every_anchor_names_a_heading():
    problems = [problem for path in markdown_files() for problem in link_problems(path)]
    assert not problems, "\n".join(problems)


def page_beside(tmp_path: Path, monkeypatch, target: str, target_text: str) -> Path:
    """A README.md in tmp_path, made the checks' repository, beside one file (`target`) it links to."""
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    (tmp_path / target).parent.mkdir(parents=True)
    (tmp_path / target).write_text(target_text)
    return tmp_path / "README.md"


def test_the_link_check_sees_a_dead_file_and_a_missing_section(tmp_path, monkeypatch):
    page = page_beside(tmp_path, monkeypatch, "docs/a.md", "# A\n\n## The `make demo` run (2026-12-04)\n")
    page.write_text("[ok](docs/a.md#the-make-demo-run-2026-12-04) [dead](docs/b.md) [gone](docs/a.md#the-demo)\n"
                    "`[not a link](nowhere.md)`\n```\n[in code](nowhere.md)\n```\n")
    assert link_problems(page) == ["README.md: [dead](docs/b.md): no such file",
                                   "README.md: [gone](docs/a.md#the-demo): no heading with the anchor #the-demo"]


# ---------------------------------------------------------------------------------------------- figures


NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")


def section_text(path: Path, anchor: str) -> str:
    """The text under the heading with this anchor, up to the next heading of the same or a higher level."""
    lines, seen, start, level = path.read_text().splitlines(), {}, None, 0
    for index, line in enumerate(lines):
        heading = re.match(r"^(#{1,6})\s+(.*?)\s*$", line)
        if not heading:
            continue
        base = generate.github_slug(heading.group(2))
        slug = base if base not in seen else f"{base}-{seen[base]}"
        seen[base] = seen.get(base, 0) + 1
        if start is not None and len(heading.group(1)) <= level:
            return "\n".join(lines[start:index])
        if start is None and slug == anchor:
            start, level = index, len(heading.group(1))
    return "\n".join(lines[start:]) if start is not None else ""


def figure_problems(path: Path) -> list[str]:
    """A link to a bench/RESULTS.md section whose text holds a number: the number must be in that section."""
    problems = []
    for text, target in links(path.read_text()):
        file, _, anchor = target.partition("#")
        resolved = (path.parent / file).resolve()
        if resolved != (REPO / "bench" / "RESULTS.md").resolve() or not NUMBER.search(text):
            continue
        section = {token.replace(",", "") for token in NUMBER.findall(section_text(resolved, anchor))}
        missing = [n for n in NUMBER.findall(text) if n.replace(",", "") not in section]
        if missing:
            problems.append(f"{path.relative_to(REPO)}: [{text}]({target}): {missing} not in that section")
    return problems


def test_a_figure_linked_to_bench_results_is_in_the_section_it_links_to():
    problems = [problem for path in markdown_files() for problem in figure_problems(path)]
    assert not problems, "\n".join(problems)
    quoted = [text for path in markdown_files() for text, target in links(path.read_text())
              if "RESULTS.md#" in target and NUMBER.search(text)]
    assert len(quoted) >= 5  # the README's two commands and its recipe times


def test_a_figure_that_is_not_in_its_section_is_reported(tmp_path, monkeypatch):
    page = page_beside(tmp_path, monkeypatch, "bench/RESULTS.md",
                       "# R\n\n## Demo (2026-12-04)\n\n501 s wall\n\n## Tests\n\n2,037 s\n")
    page.write_text("[501 s](bench/RESULTS.md#demo-2026-12-04) [2,037 s](bench/RESULTS.md#tests) "
                    "[499 s](bench/RESULTS.md#demo-2026-12-04) [2,037 s](bench/RESULTS.md#demo-2026-12-04)\n")
    assert figure_problems(page) == [
        "README.md: [499 s](bench/RESULTS.md#demo-2026-12-04): ['499'] not in that section",
        "README.md: [2,037 s](bench/RESULTS.md#demo-2026-12-04): ['2,037'] not in that section"]


# ---------------------------------------------------------------------------------------------- the front page


def test_the_readme_is_a_front_page_that_links_every_guide():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    linked = {(REPO / target.partition("#")[0]).resolve() for _, target in links(readme)}
    guides = {path.resolve() for path in (REPO / "docs").glob("*.md")}
    assert not guides - linked, f"guides the README does not link: {sorted(p.name for p in guides - linked)}"
