"""The plan comparison script reads every job of a dry run, multi-line shell commands included."""
from __future__ import annotations

import json

from dry_run_plans import compare, parse_jobs, plan_configs

DRY_RUN = """Job stats:
job      count
-----  -------
a            1
total        2

[Wed Dec  2 00:28:28 2026]
rule a:
    input: x, b.txt
    output: out/a.txt
    log: logs/a.log
    jobid: 3
    reason: Missing output files: out/a.txt
    wildcards: name=a
    resources: tmpdir=/tmp
Shell command: python -m step --template 'Question: {q}

Answer: {a}' --out out/a.txt
Would remove temporary output x

[Wed Dec  2 00:28:28 2026]
localrule all:
    input: out/a.txt
    jobid: 0
Shell command: None
Job stats:
job      count
"""


def test_parse_jobs_keeps_rules_files_and_whole_commands():
    jobs = parse_jobs(DRY_RUN)
    assert [job["rule"] for job in jobs] == ["a", "all"]
    assert jobs[0]["input"] == ["b.txt", "x"] and jobs[0]["wildcards"] == ["name=a"]
    assert jobs[0]["shell"] == "python -m step --template 'Question: {q}\n\nAnswer: {a}' --out out/a.txt"
    assert jobs[1]["shell"] == "None"


def test_compare_ignores_spacing_and_applies_renames(tmp_path, capsys):
    (tmp_path / "before").mkdir()
    (tmp_path / "after").mkdir()
    job = {"rule": "train_full_model", "output": ["m"], "shell": "python -m train --a 1"}
    (tmp_path / "before" / "demo.json").write_text(json.dumps([job]))
    (tmp_path / "after" / "demo.json").write_text(json.dumps([{**job, "rule": "train_all_weights", "shell": "python -m train  --a 1"}]))
    assert compare(tmp_path / "before", tmp_path / "after", {"train_full_model": "train_all_weights"}) == 0
    (tmp_path / "after" / "demo.json").write_text(json.dumps([{**job, "shell": "python -m train --a 2"}]))
    assert compare(tmp_path / "before", tmp_path / "after", {}) == 1
    assert "shell words before: ['1']" in capsys.readouterr().out


def test_every_recipe_is_planned_with_its_overlay():
    configs = plan_configs()
    assert configs["demo"] == [] and "demo-debates" in configs
    assert configs["recipe-map"] == ["recipes/map.yaml", "recipes/demo-models-map.yaml"]
