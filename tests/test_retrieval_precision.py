"""Retrieval precision: one `precision` key reaches FlagEmbedding inference (use_fp16/use_bf16) and fine-tunes (--bf16/--fp16)."""
from types import SimpleNamespace

import pytest
import torch

from workflow_scripts.errors import OoflineError
from workflow_scripts.retrieval import models
from workflow_scripts.retrieval.finetune import FinetuneSettings, command_line
from workflow_scripts.retrieval.models import (EmbedderSettings, RerankerSettings, load_embedder, load_reranker)

torch.set_num_threads(1)


@pytest.fixture
def fake_gpu(monkeypatch):
    """A visible bf16-capable GPU, as resolve_device and resolve_precision see it (no CUDA call is made)."""
    # import first for real: bitsandbytes (imported by transformers' Trainer) would load its CUDA backend
    import FlagEmbedding  # noqa: F401
    import transformers

    transformers.TrainingArguments  # noqa: B018 (lazy import, resolved now)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))  # an A100: native bf16


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)



def _precision_flags(argv):
    return [flag for flag in ("--bf16", "--fp16", "--use_cpu") if flag in argv and argv[argv.index(flag) + 1] == "True"]


def test_finetune_on_the_cpu_is_fp32_and_use_cpu(no_gpu):
    settings = FinetuneSettings("embedder", "encoder-only-base", "/m")
    assert settings.resolved().device == "cpu" and settings.resolved().precision == "fp32"
    assert _precision_flags(command_line(settings, "d", "o")) == ["--use_cpu"]
    with pytest.raises(OoflineError, match="fp16' needs a GPU"):
        command_line(FinetuneSettings("embedder", "encoder-only-base", "/m", precision="fp16"), "d", "o")


@pytest.mark.parametrize("precision, flags", [("auto", ["--bf16"]), ("bf16", ["--bf16"]), ("fp16", ["--fp16"]),
                                              ("fp32", [])])
def test_finetune_on_a_gpu_takes_hf_mixed_precision_flags(fake_gpu, precision, flags):
    for kind, model_class in (("embedder", "encoder-only-base"), ("reranker", "decoder-only-base")):
        argv = command_line(FinetuneSettings(kind, model_class, "/m", precision=precision), "d", "o")
        assert _precision_flags(argv) == flags


def test_bad_precision_or_device_names_the_key():
    with pytest.raises(OoflineError, match="precision must be one of auto, bf16, fp16, fp32, got 'half'"):
        FinetuneSettings("embedder", "encoder-only-base", "/m", precision="half").validate()
    with pytest.raises(OoflineError, match="device must be one of auto, cpu, cuda, got 'tpu'"):
        FinetuneSettings("embedder", "encoder-only-base", "/m", device="tpu").validate()


class Recorder:
    def __init__(self):
        self.kwargs = None
        self.tokenizer = SimpleNamespace(pad_token="[PAD]")  # what the loaders check before padding

    def __call__(self, path, **kwargs):
        self.kwargs = kwargs
        return self


@pytest.mark.parametrize("precision, use_fp16, use_bf16", [("auto", False, True), ("bf16", False, True),
                                                            ("fp16", True, False), ("fp32", False, False)])
def test_inference_on_a_gpu_maps_precision_to_flagembedding_flags(fake_gpu, monkeypatch, tiny_bert, precision,
                                                                  use_fp16, use_bf16):
    import FlagEmbedding

    embedder, reranker = Recorder(), Recorder()
    monkeypatch.setattr(FlagEmbedding.FlagAutoModel, "from_finetuned", embedder)
    monkeypatch.setattr(FlagEmbedding.FlagAutoReranker, "from_finetuned", reranker)
    load_embedder(EmbedderSettings(tiny_bert, precision=precision))
    assert (embedder.kwargs["use_fp16"], embedder.kwargs["use_bf16"]) == (use_fp16, use_bf16)
    load_reranker(RerankerSettings(tiny_bert, model_class="decoder-only-base", precision=precision))
    assert (reranker.kwargs["use_fp16"], reranker.kwargs["use_bf16"]) == (use_fp16, use_bf16)


def test_cpu_inference_auto_is_fp32_and_bf16_reaches_the_real_models(no_gpu, tiny_bert):
    auto = load_embedder(EmbedderSettings(tiny_bert, devices="cpu"))
    assert auto.use_fp16 is False and auto.use_bf16 is False and auto.model.dtype == torch.float32
    bf16 = load_embedder(EmbedderSettings(tiny_bert, devices="cpu", precision="bf16"))
    assert bf16.model.dtype == torch.bfloat16
    vectors = bf16.encode_queries(["a movie about space"])
    assert vectors.dtype.name == "float32" and abs(float((vectors ** 2).sum()) - 1) < 1e-2
    reranker = load_reranker(RerankerSettings(tiny_bert, devices="cpu"))
    assert reranker.use_fp16 is False and next(reranker.model.parameters()).dtype == torch.float32
    # the encoder reranker has no use_bf16 in FlagEmbedding: oofline casts it
    bf16_reranker = load_reranker(RerankerSettings(tiny_bert, devices="cpu", precision="bf16"))
    assert next(bf16_reranker.model.parameters()).dtype == torch.bfloat16
    scores = models.rerank_scores(bf16_reranker, RerankerSettings(tiny_bert), [("space", "a film set on Mars")])
    assert scores.shape == (1,) and scores.dtype.name == "float64"
    with pytest.raises(OoflineError, match="fp16' needs a GPU"):
        load_embedder(EmbedderSettings(tiny_bert, devices="cpu", precision="fp16"))


def test_cli_precision_flags_reach_the_settings():
    import argparse

    from workflow_scripts.retrieval.mining import add_embedder_arguments, embedder_settings
    from workflow_scripts.retrieval.models import add_reranker_arguments, reranker_settings

    parser = argparse.ArgumentParser()
    add_embedder_arguments(parser)
    add_reranker_arguments(parser)
    args = parser.parse_args(["--embedder", "e", "--reranker", "r", "--precision", "bf16", "--rerank-precision", "fp16"])
    assert embedder_settings(args).precision == "bf16" and reranker_settings(args).precision == "fp16"
    defaults = parser.parse_args(["--embedder", "e", "--reranker", "r"])
    assert embedder_settings(defaults).precision == "auto" and reranker_settings(defaults).precision == "auto"
