"""In-context examples for an ICL embedder when mining and scoring: drawn from training queries only, and
really placed before every query (not before passages)."""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from workflow_scripts.errors import OoflineError
from workflow_scripts.retrieval.models import EmbedderSettings, encode_queries_and_corpus, pick_icl_examples

QUERIES = pl.DataFrame({"id": ["q1", "q2", "q3", "q4"], "query": ["a plot twist", "dull acting", "great score", "weak end"],
                        "positive_ids": [["p1"], ["p2", "p1"], ["p3"], ["p2"]], "fold": [0, 0, 1, 1]})
CORPUS = pl.DataFrame({"id": ["p1", "p2", "p3"], "text": ["twists", "acting", "music"]})


def test_examples_come_from_the_training_queries_with_their_first_positive():
    training = QUERIES.filter(pl.col("fold") != 1)
    examples = pick_icl_examples(training, CORPUS, 2, seed=0, instruction="Find the passage.")
    assert sorted(e["query"] for e in examples) == ["a plot twist", "dull acting"]  # fold 1 is held out
    assert {e["query"]: e["response"] for e in examples} == {"a plot twist": "twists", "dull acting": "acting"}
    assert all(e["instruct"] == "Find the passage." for e in examples)
    assert pick_icl_examples(training, CORPUS, 2, seed=0, instruction=None) == pick_icl_examples(
        training, CORPUS, 2, seed=0, instruction=None)
    assert pick_icl_examples(training, CORPUS, 0, seed=0, instruction=None) == ()
    with pytest.raises(OoflineError, match="3 examples asked for, but only 2 training queries"):
        pick_icl_examples(training, CORPUS, 3, seed=0, instruction=None)


@pytest.mark.slow
def test_an_icl_embedder_puts_the_examples_before_queries_only(tiny_llama_dir):
    plain = EmbedderSettings(str(tiny_llama_dir), "decoder-only-icl", "last_token", "Find the passage.",
                             "<instruct>{}\n<query>{}", batch_size=4, query_max_length=64, passage_max_length=32)
    examples = pick_icl_examples(QUERIES, CORPUS, 2, seed=0, instruction="Find the passage.")
    with_examples = EmbedderSettings(**{**plain.__dict__, "icl_examples": examples})
    queries, passages = encode_queries_and_corpus(plain, ["weak end"], CORPUS["text"].to_list())
    icl_queries, icl_passages = encode_queries_and_corpus(with_examples, ["weak end"], CORPUS["text"].to_list())
    np.testing.assert_allclose(passages, icl_passages, atol=1e-5)  # passages carry no examples
    assert not np.allclose(queries, icl_queries, atol=1e-3)  # the examples are in the query's context
    with pytest.raises(OoflineError, match="need embedder_class decoder-only-icl"):
        encode_queries_and_corpus(EmbedderSettings(**{**with_examples.__dict__, "model_class": "decoder-only-base"}),
                                  ["weak end"], ["x"])


def test_a_fine_tune_trains_on_the_instructions_and_prompt_it_is_scored_with():
    import shlex
    from pathlib import Path

    import yaml

    from workflow_scripts.rule_params import finetune_flags, resolved_pipeline

    repo = Path(__file__).resolve().parent.parent
    pipeline = resolved_pipeline(yaml.safe_load((repo / "recipes" / "eedi.yaml").read_text())["retrieval"]["misconceptions"])
    iteration = pipeline["iterations"][0]
    reranker = shlex.split(finetune_flags(iteration["reranker"], pipeline, "reranker"))
    inference = pipeline["reranker_inference"]
    assert reranker[reranker.index("--prompt") + 1] == inference["rerank_prompt"]
    assert reranker[reranker.index("--query-instruction") + 1] == "A: "
    assert reranker[reranker.index("--passage-instruction") + 1] == "B: "
    embedder = shlex.split(finetune_flags(iteration["embedder"], pipeline, "embedder"))
    assert embedder[embedder.index("--query-instruction") + 1] == pipeline["embedder_inference"]["query_instruction"]
    assert embedder[embedder.index("--query-instruction-format") + 1] == "<instruct>{}\n<query>{}"
    assert "--prompt" not in embedder
    # a fine-tune's own setting wins over the inference one
    own = shlex.split(finetune_flags({**iteration["reranker"], "prompt": "Yes or no?"}, pipeline, "reranker"))
    assert own[own.index("--prompt") + 1] == "Yes or no?"


def test_each_role_runs_on_its_own_gpu_count_under_torchrun(tmp_path):
    import re
    import subprocess
    import sys
    from pathlib import Path

    from workflow_scripts.retrieval.finetune import FinetuneSettings, command_line

    settings = FinetuneSettings("reranker", "decoder-only-base", "base", label_smoothing=0.2)
    argv = command_line(settings, "train.jsonl", "out", processes=4)
    assert argv[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "4"]
    assert argv[6:9] == ["-m", "workflow_scripts.retrieval.finetune", "--launch"]  # label smoothing still patched
    assert command_line(settings, "train.jsonl", "out")[1:3] == ["-m", "workflow_scripts.retrieval.finetune"]

    import yaml

    # the recipe's per-role GPUs, on the demo overlay's data and models (a dry run allocates nothing)
    repo = Path(__file__).resolve().parent.parent
    recipe = yaml.safe_load((repo / "recipes" / "eedi.yaml").read_text())["retrieval"]["misconceptions"]
    gpus = tmp_path / "gpus.yaml"
    gpus.write_text(yaml.safe_dump({"retrieval": {"misconceptions": {
        f"{role}_defaults": {"resources": recipe[f"{role}_defaults"]["resources"]} for role in ("embedder", "reranker")}}}))
    # --resources: the default profile caps a workstation at one GPU in use, which would lower gpu: 4 to 1
    dry_run = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--nolock", "-p", "--cores", "1", "--resources", "gpu=8",
                              "--configfile", "recipes/eedi.yaml", "recipes/demo-models-eedi.yaml", str(gpus), "--",
                              "results/eedi-demo/retrieval/misconceptions/iter0/reranker",
                              "results/eedi-demo/retrieval/misconceptions/iter0/embedder"],
                             cwd=repo, capture_output=True, text=True, timeout=300)
    # a command may span lines (the ICL instruction format holds a newline): split at "Shell command:"
    commands = [block for block in dry_run.stdout.split("Shell command:") if "retrieval.finetune --kind" in block]
    processes = {re.search(r"--kind (\w+)", c).group(1): re.search(r"--processes (\d+)", c).group(1) for c in commands}
    assert processes == {"embedder": "2", "reranker": "4"}, dry_run.stdout[-2000:] + dry_run.stderr[-2000:]
