"""Config validation: one line per problem, naming the key; config strings never reach a shell bare."""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from workflow_scripts.config_check import check_config
from workflow_scripts.errors import OoflineError

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture()
def demo_config():
    return yaml.safe_load((REPO / "config.yaml").read_text())


def test_demo_config_is_valid_and_gets_defaults(demo_config):
    config = check_config(demo_config, REPO)
    assert config["output_dir"] == "results"
    assert config["models"]["minilm"]["grad_accum"] == 1  # from the built-in defaults
    assert config["models"]["minilm"]["max_length"] == 64  # from model_defaults
    assert config["models"]["tiny_llama_qlora"]["quantization"] == "4bit"


@pytest.mark.parametrize("edit, expected", [
    (lambda c: c["models"]["minilm"].update(lr="fast"), "config: models.minilm.lr: 'fast' is not of type 'number'"),
    (lambda c: c["retrieval"]["movie_plots"]["embedder_inference"].update(precision="half"),
     "config: retrieval.movie_plots.embedder_inference.precision: 'half' is not one of"),
    (lambda c: c["retrieval"]["movie_plots"]["reranker_inference"].update(rerank_precision="bf32"),
     "config: retrieval.movie_plots.reranker_inference.rerank_precision: 'bf32' is not one of"),
    (lambda c: c["retrieval"]["movie_plots"]["iterations"][1]["reranker"].update(precision="fp8"),
     "config: retrieval.movie_plots.iterations.1.reranker.precision: 'fp8' is not one of"),
    (lambda c: c["models"]["minilm"].update(learning_rate=1e-4), "config: models.minilm: unknown key(s) ['learning_rate']"),
    (lambda c: c["models"]["minilm"].update(kind="gpt"), "config: models.minilm.kind: 'gpt' is not one of"),
    (lambda c: c["folds"].update(n_folds=1), "config: folds.n_folds: 1 is less than the minimum of 2"),
    (lambda c: c["task"].update(metric="f2"), "config: task.metric: 'f2' has characters"),
    (lambda c: c["task"].pop("label_column"), "config: task.label_column: required for task.type multiclass"),
    (lambda c: c["models"]["minilm"].update(source="/no/such/model"), "models.minilm.source: '/no/such/model' is not a model folder"),
    (lambda c: c["models"]["minilm"].update(quantization="4bit"), "models.minilm.quantization: 4bit needs a LoRA kind"),
    (lambda c: c["models"].update({"bad; rm -rf ~": c["models"]["minilm"]}), "config: models: 'bad; rm -rf ~'"),
    (lambda c: c["models"]["minilm"].update(resources={"gpu": 1, "gres": "gpu:h100:1"}),
     "config: models.minilm.resources.gres: set either gres or gpu/gpu_model, not both"),
    (lambda c: c["models"]["minilm"].update(resources={"gres": "'gpu:1'"}), "config: models.minilm.resources.gres:"),
])
def test_bad_config_names_the_key(demo_config, edit, expected):
    config = copy.deepcopy(demo_config)
    edit(config)
    with pytest.raises(OoflineError) as error:
        check_config(config, REPO)
    assert expected in str(error.value)


def test_a_models_slurm_resources_reach_its_train_merge_and_predict_jobs(demo_config, tmp_path):
    demo_config["models"] = {"qlora": {**demo_config["models"]["tiny_llama_qlora"],
                                       "resources": {"gres": "gpu:h100:2", "slurm_partition": "gpu", "cpus_per_gpu": 4}}}
    for section in ("ensembles", "submissions", "register", "retrieval", "thresholds"):
        demo_config.pop(section, None)
    assert check_config(demo_config, REPO)["models"]["qlora"]["resources"]["gres"] == "gpu:h100:2"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(demo_config))
    dry_run = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-n", "--cores", "1",
                              "--printshellcmds", "--configfile", "config.yaml"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert dry_run.returncode == 0, dry_run.stderr[-2000:]
    # two GPUs a job: training runs one DDP process per GPU under torchrun; inference and merging run one
    train_commands = [line for line in dry_run.stdout.splitlines() if "-m workflow_scripts.train " in line]
    assert train_commands and all("gpu_devices --gpus 0 --torchrun -- " in line for line in train_commands)
    assert "--torchrun" not in "".join(line for line in dry_run.stdout.splitlines() if ".predict " in line)
    resources_by_rule: dict[str, set[str]] = {}
    rule = None
    for line in dry_run.stdout.splitlines():
        if line.startswith(("rule ", "localrule ")):
            rule = line.split()[1].rstrip(":")
        elif line.strip().startswith("resources:") and rule:
            resources_by_rule.setdefault(rule, set()).add(line.strip())
    for gpu_rule in ("train_adapter", "merge_adapter", "predict_fold"):
        for resources in resources_by_rule[gpu_rule]:
            assert "gres=gpu:h100:2" in resources and "slurm_partition=gpu" in resources and "cpus_per_gpu=4" in resources
    for cpu_rule in ("folds", "oof"):
        assert all("gres" not in r and "slurm_partition" not in r for r in resources_by_rule[cpu_rule])


def test_every_problem_is_reported_at_once(demo_config):
    demo_config["models"]["minilm"]["lr"] = "fast"
    demo_config["folds"]["n_folds"] = 1
    with pytest.raises(OoflineError) as error:
        check_config(demo_config, REPO)
    assert len(str(error.value).splitlines()) == 3  # header + one line each


def test_shell_metacharacters_in_a_source_stay_literal(tmp_path, demo_config):
    """A source like `x; touch PWNED` is an error naming the key, and nothing runs."""
    marker = tmp_path / "PWNED"
    demo_config["models"]["minilm"]["source"] = f"x; touch {marker}"
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(demo_config))
    result = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile", str(config_path), "--directory", str(tmp_path),
                             "-s", str(REPO / "Snakefile")], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode != 0
    assert "models.minilm.source" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert not marker.exists()
