"""Every YAML example in README.md and docs/ is executed: validated by the workflow's own config check, and the
small ones run on the demo data. Examples are found in the files, so a new one is covered without touching this.

How an example is read (an HTML comment on the line before its fence, invisible in the rendered page, can say):
- `<!-- example: {base: recipes/cpu-baseline.yaml, replace: true, run: true} -->`: merged onto `base` (default
  `config.yaml`, the demo); `replace: true` replaces the base's top-level sections with the example's, as a user
  editing those sections of a copied recipe does; otherwise the example is deep-merged as
  `snakemake --configfile base.yaml example.yaml` merges it. `run: true` also runs it on demo data shaped to its
  columns; `run: plan` has Snakemake plan every job on that data (`-n`), for examples a full run adds little to.
- `<!-- example: {file: lb_scores} -->`, or a first line `# lb_scores.yaml`: the example is that file, read by
  the step that reads it.
An example nothing says otherwise about is a config fragment on the demo config.
"""
from __future__ import annotations

import copy
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from workflow_scripts.config_check import check_config
from workflow_scripts.errors import OoflineError

REPO = Path(__file__).resolve().parent.parent
DOCUMENTS = [REPO / "README.md"] + sorted((REPO / "docs").rglob("*.md"))
ANNOTATION = re.compile(r"^<!--\s*example:\s*(.*?)\s*-->\s*$")
FILE_HEADER = re.compile(r"^#\s*([\w.-]+\.ya?ml)\s*$")
FINE_TUNE_KINDS = ("decoder_lora", "encoder_lora", "encoder_full")


@dataclass(frozen=True)
class Example:
    where: str  # README.md:151
    text: str
    settings: dict

    def __str__(self) -> str:
        return self.where


def yaml_examples(text: str, name: str) -> list[Example]:
    """The ```yaml blocks of a Markdown text, each with the settings of the comment line just before it."""
    lines, found = text.splitlines(), []
    index = 0
    while index < len(lines):
        if lines[index].strip() in ("```yaml", "```yml"):
            start = index + 1
            end = next((j for j in range(start, len(lines)) if lines[j].strip() == "```"), None)
            if end is None:
                raise AssertionError(f"{name}:{index + 1}: a ```yaml block is never closed")
            before = ANNOTATION.match(lines[index - 1].strip()) if index else None
            settings = yaml.safe_load(before.group(1)) if before else {}
            found.append(Example(f"{name}:{index + 1}", "\n".join(lines[start:end]) + "\n", settings or {}))
            index = end
        index += 1
    return found


def all_examples() -> list[Example]:
    return [example for path in DOCUMENTS
            for example in yaml_examples(path.read_text(), str(path.relative_to(REPO)))]


def deep_merge(base: dict, override: dict) -> dict:
    """Snakemake's merge of several --configfile files: mappings merge key by key, anything else replaces."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def example_config(example: Example) -> dict:
    """The whole config the example stands for: its base with the example merged in."""
    payload = yaml.safe_load(example.text)
    if not isinstance(payload, dict):
        raise OoflineError(f"{example}: a config example must be a mapping of sections")
    base = yaml.safe_load((REPO / example.settings.get("base", "config.yaml")).read_text())
    if example.settings.get("replace"):
        return {**base, **payload}
    return deep_merge(base, payload)


def example_kind(example: Example) -> str:
    if "file" in example.settings:
        return example.settings["file"]
    header = FILE_HEADER.match(example.text.splitlines()[0].strip()) if example.text.strip() else None
    return Path(header.group(1)).stem if header else "config"


def validate(example: Example, tmp_path: Path) -> None:
    """Raise OoflineError (naming the key) where the workflow would refuse the example."""
    kind = example_kind(example)
    if kind == "config":
        check_config(example_config(example), REPO)
    elif kind == "lb_scores":
        from workflow_scripts.leaderboard import load_lb_scores

        path = tmp_path / "lb_scores.yaml"
        path.write_text(example.text)
        assert load_lb_scores(path), f"{example}: lb_scores example lists no submission"
    else:
        raise AssertionError(f"{example}: no reader known for an example of {kind!r}: add one to this test")


EXAMPLES = all_examples()


def test_examples_are_found():
    # the README's configuration block, the three task shapes, the 14B model; docs/report.md's lb_scores.yaml
    assert len(EXAMPLES) >= 6
    assert sum(example.settings.get("run") is True for example in EXAMPLES) >= 1


@pytest.mark.parametrize("example", EXAMPLES, ids=str)
def test_every_yaml_example_passes_the_config_check(example, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # the examples' hub models are for a host that is online
    validate(example, tmp_path)


def test_an_example_that_stops_validating_fails_this_test(tmp_path, monkeypatch):
    """The README's multilabel example with a typo in a key, and with thresholds on a source nobody builds: the
    check that runs on every example refuses each, naming the key."""
    readme = (REPO / "README.md").read_text()
    multilabel = next(e for e in yaml_examples(readme, "README.md") if "type: multilabel" in e.text)
    broken = Example(multilabel.where, multilabel.text.replace("method: hybrid", "methd: hybrid"),
                     multilabel.settings)
    with pytest.raises(OoflineError, match=r"thresholds\.stacked: unknown key 'methd'"):
        validate(broken, tmp_path)
    renamed = Example(multilabel.where, multilabel.text.replace("source: stacked", "source: stack"),
                      multilabel.settings)
    with pytest.raises(OoflineError, match=r"submissions\.stacked\.source: 'stack' is not a model or ensemble"):
        validate(renamed, tmp_path)


# ---------------------------------------------------------------------------------------------- runs

def demo_task_data(folder: Path) -> tuple[Path, Path]:
    """The debates demo with the columns the README's task examples name: `text`, `title` + `body`, a
    multiclass `topic`, a binary `toxic` and multilabel `lab_*` columns."""
    from workflow_scripts.prepare_demo import build_demo

    train, test, _ = build_demo("debates", n_train=300, n_test=40, seed=0)

    def shaped(frame: pl.DataFrame) -> pl.DataFrame:
        words = pl.col("text").str.split(" ")
        return frame.with_columns(words.list.head(4).list.join(" ").alias("title"),
                                  words.list.slice(4).list.join(" ").alias("body"))

    labels = [pl.col("debate").alias("topic"), pl.col("is_question").alias("toxic"),
              pl.col("is_democrat").alias("lab_democrat"), pl.col("is_republican").alias("lab_republican"),
              pl.col("is_question").alias("lab_question")]
    labels += [(pl.col("debate") == d).cast(pl.Int8).alias(f"lab_debate_{d.lower()}")
               for d in sorted(train["debate"].unique().to_list())]
    train = shaped(train).with_columns(labels).drop("speaker", "debate", "is_democrat", "is_republican",
                                                    "is_question")
    folder.mkdir(parents=True, exist_ok=True)
    train.write_csv(folder / "train.csv")
    shaped(test).write_csv(folder / "test.csv")
    return folder / "train.csv", folder / "test.csv"


def cheap_members_only(config: dict) -> dict:
    """The example's config with its fine-tunes left out (minutes each on a CPU), ensembles over the rest."""
    config = copy.deepcopy(config)
    slow = {name for name, model in (config.get("models") or {}).items() if model.get("kind") in FINE_TUNE_KINDS}
    config["models"] = {name: model for name, model in config["models"].items() if name not in slow}
    for entry in (config.get("ensembles") or {}).values():
        members = entry["members"]
        entry["members"] = ({k: v for k, v in members.items() if k not in slow} if isinstance(members, dict)
                            else [m for m in members if m not in slow])
    return config


RUN_EXAMPLES = [example for example in EXAMPLES if example.settings.get("run") is True]
PLAN_EXAMPLES = [example for example in EXAMPLES if example.settings.get("run") == "plan"]


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory):
    return demo_task_data(tmp_path_factory.mktemp("demo_task") / "data")


def run_snakemake(example: Example, folder: Path, demo_files, *options: str) -> subprocess.CompletedProcess:
    config = cheap_members_only(example_config(example))
    config["data"] = {"train": str(demo_files[0]), "test": str(demo_files[1])}
    config["output_dir"] = "results"
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(folder),
               "--cores", "2", *options, "--configfile", str(folder / "config.yaml")]
    return subprocess.run(command, capture_output=True, text=True, cwd=folder, timeout=1200)


@pytest.mark.parametrize("example", PLAN_EXAMPLES, ids=str)
def test_examples_plan_every_job_on_the_demo_data(example, tmp_path, demo_files):
    result = run_snakemake(example, tmp_path, demo_files, "-n")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "submission" in result.stdout and "ensemble" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("example", RUN_EXAMPLES, ids=str)
def test_small_examples_run_on_the_demo_data(example, tmp_path, demo_files):
    """The example as written, on its base recipe (fine-tunes left out for time), on demo data shaped to it:
    the multilabel one builds nested thresholds on the stack and a thresholded `labels` submission."""
    result = run_snakemake(example, tmp_path, demo_files)
    assert result.returncode == 0, result.stderr[-4000:]
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())
    results = tmp_path / "results"
    for name, entry in (config.get("submissions") or {}).items():
        submission = pl.read_csv(results / "submissions" / name / "submission.csv", infer_schema=False)
        assert submission.height == 40
        if not entry.get("thresholds"):
            continue
        import json

        from workflow_scripts import metrics
        from workflow_scripts.labels import LabelSpec

        spec = LabelSpec.load(results / "labels.json")
        thresholds = json.loads((results / "thresholds" / f"{entry['source']}.json").read_text())
        assert thresholds["oof_score_after_nested"] is not None and "nested_refit" in thresholds
        test = pl.read_parquet(results / "ensembles" / entry["source"] / "test.parquet")
        applied = metrics.hard_predictions(spec, test.select(spec.probability_columns).to_numpy(),
                                           thresholds["thresholds"])
        expected = test.select("id").hstack(pl.DataFrame(applied.astype(np.int64), schema=spec.probability_columns))
        got = submission.select(["id"] + spec.probability_columns).with_columns(
            pl.col(c).cast(pl.Int64) for c in spec.probability_columns)
        assert got.sort("id").equals(expected.with_columns(pl.col("id").cast(pl.String)).sort("id"))
