"""The jobs `snakemake -n --printshellcmds` plans for the demo, the demo's other configs and every recipe
with its demo overlay, written as one JSON file per config so that two trees' plans can be compared.

    python tests/dry_run_plans.py dump PLANS_DIR        # in the tree to snapshot (e.g. before a refactor)
    python tests/dry_run_plans.py compare BEFORE AFTER  # exit 1 and list the differences, if any

A job is its rule name, sorted inputs, outputs and log, wildcards and shell command; the `reason:` line and
job ids are left out (they depend on what is already built and on planning order); shell commands are
compared word by word (shlex), so spacing does not count. `--rename OLD=NEW`
compares after a rule rename.
"""
from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
KEPT_FIELDS = ("input", "output", "log", "wildcards")


def plan_configs(repo: Path = REPO) -> dict[str, list[str]]:
    """{plan name: --configfile arguments}: the demo, demo/*.yaml and each recipe with its overlay."""
    configs = {"demo": []}
    configs.update({f"demo-{path.stem}": [str(path.relative_to(repo))] for path in sorted((repo / "demo").glob("*.yaml"))})
    for recipe in sorted((repo / "recipes").glob("*.yaml")):
        overlay = recipe.with_name(f"demo-models-{recipe.name}")
        if not recipe.name.startswith("demo-models-") and overlay.exists():
            configs[f"recipe-{recipe.stem}"] = [str(recipe.relative_to(repo)), str(overlay.relative_to(repo))]
    return configs


def complete_command(command: str) -> bool:
    try:
        shlex.split(command)
        return True
    except ValueError:  # a quoted config string (a template) spans more lines
        return False


def parse_jobs(dry_run_output: str) -> list[dict]:
    """The planned jobs of a `snakemake -n -p` log, each {rule, input, output, log, wildcards, shell}, sorted."""
    jobs, job, in_shell = [], None, False
    for line in dry_run_output.splitlines():
        if line.startswith("Job stats:") and jobs:  # the summary after the last job
            break
        if in_shell:
            if not complete_command(job["shell"]):
                job["shell"] += "\n" + line
                continue
            in_shell = False
        rule = re.match(r"^(?:local)?rule (\S+):$", line)
        if rule:
            job = {"rule": rule.group(1)}
            jobs.append(job)
            continue
        if job is None:
            continue
        field = re.match(r"^    (\w+): (.*)$", line)
        if field and field.group(1) in KEPT_FIELDS:
            job[field.group(1)] = sorted(field.group(2).split(", "))
        elif line.startswith("Shell command: "):
            job["shell"], in_shell = line[len("Shell command: "):], True
        elif not line.strip():
            job = None
    return sorted(jobs, key=lambda entry: json.dumps(entry, sort_keys=True))


def dry_run(configfiles: list[str], repo: Path = REPO) -> list[dict]:
    command = [sys.executable, "-m", "snakemake", "-n", "--printshellcmds", "--forceall"]
    if configfiles:
        command += ["--configfile", *configfiles]
    result = subprocess.run(command, cwd=repo, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"dry run failed for {configfiles or 'config.yaml'}:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return parse_jobs(result.stdout)


def dump(plans_dir: Path) -> None:
    plans_dir.mkdir(parents=True, exist_ok=True)
    for name, configfiles in plan_configs().items():
        jobs = dry_run(configfiles)
        (plans_dir / f"{name}.json").write_text(json.dumps(jobs, indent=1, sort_keys=True))
        print(f"{name}: {len(jobs)} jobs")


def as_tokens(job: dict) -> dict:
    """The job with its shell command split into words, so spacing between flags does not count."""
    return {**job, "shell": shlex.split(job.get("shell", ""))}


def print_differences(before: list[dict], after: list[dict]) -> None:
    """Jobs with the same rule and outputs: the fields and shell words that differ; the rest in full."""
    job_key = lambda job: (job["rule"], tuple(job.get("output", [])))  # noqa: E731
    after_by_key = {job_key(job): job for job in after}
    for job in before:
        other = after_by_key.pop(job_key(job), None)
        if other is None:
            print("  only before:", json.dumps(job, sort_keys=True)[:400])
            continue
        print(f"  {job['rule']} {job.get('output', [''])[0]}:")
        for field in sorted(set(job) | set(other)):
            old, new = job.get(field), other.get(field)
            if old == new:
                continue
            if field == "shell":
                removed = [word for word in old if word not in new]
                added = [word for word in new if word not in old]
                print(f"    shell words before: {[w[:300] for w in removed]}\n    shell words after:  {[w[:300] for w in added]}")
            else:
                print(f"    {field} before: {old}\n    {field} after:  {new}")
    for job in after_by_key.values():
        print("  only after: ", json.dumps(job, sort_keys=True)[:400])


def compare(before_dir: Path, after_dir: Path, renames: dict[str, str]) -> int:
    differing = 0
    for before_file in sorted(before_dir.glob("*.json")):
        after_file = after_dir / before_file.name
        before = json.loads(before_file.read_text())
        after = json.loads(after_file.read_text()) if after_file.exists() else []
        for job in before:
            job["rule"] = renames.get(job["rule"], job["rule"])
        key = lambda entry: json.dumps(entry, sort_keys=True)  # noqa: E731
        before_jobs, after_jobs = {key(as_tokens(j)) for j in before}, {key(as_tokens(j)) for j in after}
        if before_jobs == after_jobs and len(before) == len(after):
            print(f"{before_file.stem}: same {len(after)} jobs (rules, inputs, outputs, logs, shell commands)")
            continue
        differing += 1
        print(f"{before_file.stem}: DIFFERS ({len(before)} jobs before, {len(after)} after)")
        print_differences([json.loads(e) for e in before_jobs - after_jobs], [json.loads(e) for e in after_jobs - before_jobs])
    return 1 if differing else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    dump_parser = commands.add_parser("dump")
    dump_parser.add_argument("plans_dir", type=Path)
    compare_parser = commands.add_parser("compare")
    compare_parser.add_argument("before", type=Path)
    compare_parser.add_argument("after", type=Path)
    compare_parser.add_argument("--rename", action="append", default=[], help="OLD=NEW rule name")
    args = parser.parse_args(argv)
    if args.command == "dump":
        dump(args.plans_dir)
        return 0
    return compare(args.before, args.after, dict(rename.split("=", 1) for rename in args.rename))


if __name__ == "__main__":
    sys.exit(main())
