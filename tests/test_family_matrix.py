"""The family matrix through the real rules: one Snakemake run trains, predicts, merges, embeds, generates, answers,
fine-tunes language models and retrievers on a tiny model of every family the recipes name (tests/family_matrix.py
lists the cells); then each cell's outputs are checked, and a few facts no file shows are checked on the models the
run wrote (merged = base + adapter, left = right padding, last-token pooling, 8-bit weights)."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_metrics import apk  # noqa: E402
from family_matrix import (  # noqa: E402
    EIGHT_BIT_FAMILIES, ENCODER_POOLING, cell_name, classification_models, language_model_sections, matrix_config,
    quantizations,
)

from workflow_scripts.tiny_models import DECODER_FAMILIES, ENCODER_FAMILIES, MODEL_TYPES, TINY_FAMILIES  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CLASSES = ["fresh", "plot", "rotten"]
# what transformers chooses when attn_implementation is left out: sdpa, else eager (no sdpa kernel in the family)
EXPECTED_ATTENTION = {family: "eager" if family in ("deberta-v2", "gemma2") else "sdpa" for family in TINY_FAMILIES}


@pytest.fixture(scope="module")
def matrix_run(tmp_path_factory, movies_demo):
    """The finished run's folder; the tiny bases that most cells share are built once here (as prepare_model's
    `tiny:<family>` would), one cell per family builds its own through the rule."""
    from workflow_scripts.prepare_model import materialise

    workdir = tmp_path_factory.mktemp("family_matrix")
    corpus = workdir / "corpus.parquet"
    movies_demo[0].select("text").write_parquet(corpus)
    bases = {family: str(materialise(f"tiny:{family}", workdir / "tiny" / family, seed=42, corpus=corpus))
             for family in TINY_FAMILIES}
    (workdir / "config.yaml").write_text(yaml.safe_dump(matrix_config(bases)))
    started = time.time()
    # about 150 jobs, most a fresh Python importing torch: minutes on 2 idle cores, far more on a loaded machine
    result = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory",
                             str(workdir), "--cores", "2", "--keep-going"], capture_output=True, text=True,
                            cwd=workdir, timeout=3600)
    print(f"family matrix: one Snakemake run in {time.time() - started:.0f} s", flush=True)
    assert result.returncode == 0, result.stderr[-6000:]
    return workdir


def _training(results: Path, model: str) -> dict:
    subdir = "adapter" if (results / "models" / model / "fold0" / "adapter").exists() else "model"
    return json.loads((results / "models" / model / "fold0" / subdir / "training.json").read_text())


@pytest.mark.slow
def test_every_classification_cell_trains_predicts_and_scores(matrix_run):
    results = matrix_run / "results"
    folds = pl.read_parquet(results / "folds.parquet")
    fold0 = sorted(folds.filter(pl.col("fold") == 0)["id"].cast(pl.String).to_list())
    n_test = pl.read_parquet(results / "data" / "test.parquet").height
    models = classification_models({family: "" for family in TINY_FAMILIES})
    assert len(models) == 3 * len(ENCODER_FAMILIES) + 3 * len(DECODER_FAMILIES) + len(EIGHT_BIT_FAMILIES)
    for name, entry in models.items():
        oof = pl.read_parquet(results / "oof" / f"{name}.parquet")
        assert oof.columns == ["id", "fold", *CLASSES], name
        assert sorted(oof["id"].cast(pl.String).to_list()) == fold0, name  # folds: [0] -> fold 0's rows, once
        test = pl.read_parquet(results / "test" / f"{name}.parquet")
        assert test.height == n_test, name
        for frame in (oof, test):
            probabilities = frame.select(CLASSES).to_numpy()
            assert np.isfinite(probabilities).all() and (probabilities >= 0).all(), name
            np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-4, err_msg=name)
        scores = json.loads((results / "scores" / f"{name}.json").read_text())
        assert list(scores["folds"]) == ["0"] and 0 < scores["score"] <= 1, name
        if entry["kind"] == "embedding_head":
            continue
        summary = _training(results, name)["summary"]
        family = next(f for f in TINY_FAMILIES if name.startswith(cell_name(f, "")))
        # no attn_implementation key: DeBERTa-v2 and Gemma-2 train (eager), the others run sdpa
        assert summary["attn_implementation"] == EXPECTED_ATTENTION[family], name
        assert summary["steps"] == 3 and np.isfinite(summary["final_loss"]), name
        if entry.get("merge"):
            assert (results / "models" / name / "fold0" / "merged" / "model.safetensors").exists(), name


@pytest.mark.slow
def test_merged_decoders_give_the_adapter_models_logits(matrix_run, movies_demo):
    """merge: the saved merged/ folder predicts what base + adapter predicts, for every family's 4-bit cell and
    each 8-bit cell."""
    from workflow_scripts import modeling
    from workflow_scripts.predict import load_trained

    results = matrix_run / "results"
    texts = ["Review: " + text for text in movies_demo[0]["text"].to_list()[:4]]
    for family in DECODER_FAMILIES:
        for quantization in quantizations(family)[1:]:
            name = cell_name(family, f"lora_{quantization}")
            entry = classification_models({f: str(matrix_run / "tiny" / f) for f in TINY_FAMILIES})[name]
            base = results / "models" / name / "base" if entry["source"].startswith("tiny:") else entry["source"]
            adapter_model, tokenizer = load_trained(str(results / "models" / name / "fold0" / "adapter"), str(base),
                                                    {**entry, "max_length": 24}, num_labels=3)
            merged = modeling.load_base_classifier(results / "models" / name / "fold0" / "merged", 3)
            inputs = tokenizer(texts, padding=True, truncation=True, max_length=24, return_tensors="pt")
            with torch.no_grad():
                expected, got = adapter_model(**inputs).logits, merged(**inputs).logits
            # merged into the dequantised base: the CPU's 4-bit path computes in fp32 on exactly those weights,
            # LLM.int8 casts activations to fp16 (logits are ~0.3 here, so a 2e-2 bound is still tight)
            torch.testing.assert_close(got, expected, atol=2e-2 if quantization == "8bit" else 1e-4, rtol=0,
                                       msg=lambda message: f"{name}: {message}")


@pytest.mark.slow
def test_decoder_classifiers_read_the_same_row_left_or_right_padded(matrix_run, movies_demo):
    """A decoder classifies from its last real token: a row's logits do not depend on its batch's padding side or
    on the family's pad token (Mistral has none: eos pads)."""
    from workflow_scripts.predict import load_trained

    results = matrix_run / "results"
    texts = ["Review: " + " ".join(text.split()[:words]) for text, words in
             zip(movies_demo[0]["text"].to_list()[:5], (2, 12, 4, 30, 7))]
    for family in DECODER_FAMILIES:
        name = cell_name(family, "lora_none")
        model, tokenizer = load_trained(str(results / "models" / name / "fold0" / "adapter"),
                                        str(results / "models" / name / "base"),
                                        {"kind": "decoder_lora", "lr": 1e-3}, num_labels=3)
        ids = tokenizer(texts, truncation=True, max_length=24)["input_ids"]
        assert len({len(row) for row in ids}) > 1  # rows of different lengths: padding is really there
        with torch.no_grad():
            alone = torch.cat([model(input_ids=torch.tensor([row])).logits for row in ids])
            for side in ("right", "left"):
                batch = tokenizer.pad({"input_ids": ids}, padding=True, padding_side=side, return_tensors="pt")
                torch.testing.assert_close(model(**batch).logits, alone, atol=1e-4, rtol=0,
                                           msg=lambda message: f"{name} {side} padding: {message}")


@pytest.mark.slow
def test_embedding_heads_pool_each_family_as_configured(matrix_run):
    """embedding_head: one (rows, hidden) matrix per model; decoders pool their last real token, encoders their
    [CLS] (DeBERTa) or mean (ModernBERT), each row as it embeds alone."""
    from safetensors.numpy import load_file
    from transformers import AutoModel

    from workflow_scripts.embedding_head import pool
    from workflow_scripts.modeling import load_tokenizer

    results = matrix_run / "results"
    train = pl.read_parquet(results / "data" / "train.parquet")
    for family in TINY_FAMILIES:
        name = cell_name(family, "embed")
        pooling = ENCODER_POOLING.get(family, "last")
        embeddings = load_file(str(results / "embeddings" / f"{name}.safetensors"))["train"]
        assert embeddings.shape == (train.height, 64), name
        folder = matrix_run / "tiny" / family
        model, tokenizer = AutoModel.from_pretrained(folder).eval(), load_tokenizer(folder)
        for row in (0, 7):
            ids = tokenizer(train["text"][row], truncation=True, max_length=24, return_tensors="pt")
            with torch.no_grad():
                alone = pool(model(**ids).last_hidden_state, ids["attention_mask"], pooling)[0].numpy()
            np.testing.assert_allclose(embeddings[row], alone, atol=1e-4, err_msg=f"{name} row {row}")


@pytest.mark.slow
def test_eight_bit_cells_hold_int8_weights_on_the_cpu(matrix_run):
    """quantization: 8bit is LLM.int8 on the CPU too (bitsandbytes): the frozen linear weights are int8."""
    import bitsandbytes as bnb

    from workflow_scripts import modeling

    for family in DECODER_FAMILIES:
        model = modeling.load_base_classifier(matrix_run / "tiny" / family, 3, quantization="8bit", device="cpu")
        layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear8bitLt)]
        assert layers and all(layer.weight.dtype == torch.int8 for layer in layers), family
    for family in EIGHT_BIT_FAMILIES:
        config = _training(matrix_run / "results", cell_name(family, "lora_8bit"))["model_config"]
        assert config["quantization"] == "8bit"


@pytest.mark.slow
def test_language_models_answer_generate_and_fine_tune(matrix_run):
    results = matrix_run / "results"
    sections = language_model_sections({family: "" for family in TINY_FAMILIES})
    n_problems = sections["answers"]["n_problems"]
    for family in DECODER_FAMILIES:
        sft = results / "lms" / cell_name(family, "sft") / "base"
        assert (sft / "config.json").exists() and any(sft.glob("*.safetensors")), family
        assert json.loads((sft / "config.json").read_text())["model_type"] == MODEL_TYPES[family]
        modules = json.loads((sft / "adapter" / "adapter_config.json").read_text())["target_modules"]
        assert len(modules) > 1 and modules == sorted(modules), family  # a fixed order: rebuilds are byte-identical
        answers = pl.read_parquet(results / "answers" / cell_name(family, "sft") / "direct.parquet")
        assert answers.height == n_problems * sections["answers"]["samples"], family
        raw = json.loads((results / "generated" / cell_name(family, "gen") / "raw" / "seed0.json").read_text())
        assert raw["attempts"] == sections["generators"][cell_name(family, "gen")]["n_rows"], family
        assert (results / "generated" / cell_name(family, "gen") / "seed0.parquet").exists()
    score = json.loads((results / "votes" / "families" / "score.json").read_text())
    assert score["strategies"]["majority"]["n"] == n_problems


@pytest.mark.slow
def test_retrieval_fine_tunes_a_mistral_icl_embedder_and_a_qwen2_reranker(matrix_run):
    root = matrix_run / "results" / "retrieval" / "eedi_families"
    for role, model_type in (("embedder", "mistral"), ("reranker", "qwen2")):
        merged = root / "iter0" / role / "merged"
        assert json.loads((merged / "config.json").read_text())["model_type"] == model_type
        adapter_config = json.loads((root / "iter0" / role / "adapter" / "adapter_config.json").read_text())
        # written in a fixed order (peft's comes from a set): a rebuild from a record is byte-identical
        assert len(adapter_config["target_modules"]) > 1
        assert adapter_config["target_modules"] == sorted(adapter_config["target_modules"]), role
    # the scores are MAP@5 of the OOF rankings the two fine-tuned models made (ml_metrics' apk)
    score = json.loads((root / "iter0" / "score.json").read_text())
    queries = pl.read_parquet(root / "data" / "queries.parquet")
    positives = dict(zip(queries["id"].to_list(), queries["positive_ids"].to_list()))
    oof = pl.read_parquet(root / "iter0" / "oof.parquet")
    assert oof.height == score["n_queries"] > 0
    for column, ranking in (("embedder_ids", "embedder"), ("reranked_ids", "reranked")):
        expected = sum(apk(positives[row_id], ranked, 5) for row_id, ranked in zip(oof["id"], oof[column])) / oof.height
        assert score["overall"][ranking]["map@5"] == pytest.approx(expected, abs=1e-12)
    submission = pl.read_csv(matrix_run / "results" / "submissions" / "eedi_families" / "submission.csv")
    assert submission.height == 3
