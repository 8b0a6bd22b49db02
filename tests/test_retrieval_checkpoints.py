"""select_checkpoint: best: the choice (argmax, ties to the earliest epoch), its config checks, the plan it adds,
and a real tiny run where every epoch is scored and the chosen one is the model the pipeline reads."""
from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from workflow_scripts.config_check import check_config
from workflow_scripts.errors import OoflineError
from workflow_scripts.retrieval.checkpoints import EpochCheckpoint, choose_checkpoint, pick_best, selection_record
from workflow_scripts.retrieval.finetune import FinetuneSettings, command_line, flagembedding_arguments

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_retrieval_workflow import CONFIG  # noqa: E402
from test_workflow import snakemake  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def test_pick_best_takes_the_argmax_and_the_earliest_of_ties():
    assert pick_best([0.2, 0.5, 0.4]) == 1
    assert pick_best([0.3, 0.5, 0.5, 0.1]) == 1  # a tie goes to fewer epochs
    assert pick_best([0.4]) == 0
    assert pick_best([float("nan"), 0.1]) == 1
    with pytest.raises(OoflineError):
        pick_best([])


def test_selection_record_keeps_every_epoch_the_choice_and_the_last_score():
    scores = [{"map@5": 0.30, "recall@5": 0.5}, {"map@5": 0.45, "recall@5": 0.6}, {"map@5": 0.45, "recall@5": 0.7},
              {"map@5": 0.40, "recall@5": 0.7}]
    record = selection_record([1, 2, 3, 4], scores, "map@5", 0, "the embedder's ranking")
    assert [entry["epoch"] for entry in record["epochs"]] == [1, 2, 3, 4]
    assert [entry["map@5"] for entry in record["epochs"]] == [0.30, 0.45, 0.45, 0.40]
    assert (record["chosen_epoch"], record["chosen_score"], record["last_epoch"], record["last_score"]) == (2, 0.45, 4, 0.40)
    assert record["selected_on_valid_fold"] is True and record["valid_fold"] == 0


def test_choose_checkpoint_keeps_only_the_chosen_merge_on_disk(tmp_path):
    """LoRA checkpoints are merged to be scored; the merges of the epochs not chosen are deleted as it goes."""
    checkpoints = []
    for epoch in (1, 2, 3):
        (tmp_path / f"checkpoint-{epoch * 10}").mkdir()
        checkpoints.append(EpochCheckpoint(epoch, epoch * 10, tmp_path / f"checkpoint-{epoch * 10}"))

    def merge(checkpoint):
        merged = checkpoint.path / "merged_model"
        merged.mkdir()
        return merged

    scores = {1: 0.2, 2: 0.6, 3: 0.5}
    chosen, record = choose_checkpoint(checkpoints, merge, lambda model: {"map@5": scores[int(model.parent.name[11:]) // 10]},
                                       "map@5", 0, "test")
    assert chosen.epoch == 2 and record["chosen_epoch"] == 2 and record["last_score"] == 0.5
    assert [(c.path / "merged_model").exists() for c in checkpoints] == [False, True, False]


def test_best_saves_an_epoch_checkpoint_of_weights_only_and_merges_after_training():
    last = FinetuneSettings("reranker", "decoder-only-base", "m", epochs=3, lora=True, device="cpu")
    best = FinetuneSettings("reranker", "decoder-only-base", "m", epochs=3, lora=True, device="cpu", select_checkpoint="best")
    last_args, best_args = flagembedding_arguments(last, "d", "o"), flagembedding_arguments(best, "d", "o")
    assert last_args[last_args.index("--save_strategy") + 1] == "no" and "--save_only_model" not in last_args
    assert best_args[best_args.index("--save_strategy") + 1] == "epoch"
    assert best_args[best_args.index("--save_only_model") + 1] == "True"  # no optimizer/scheduler/RNG pickles
    assert best_args[best_args.index("--save_merged_lora_model") + 1] == "False"
    with pytest.raises(OoflineError, match="epochs must be whole"):
        FinetuneSettings("embedder", "encoder-only-base", "m", epochs=1.5, select_checkpoint="best").validate()


def best_config(epochs: int = 2) -> dict:
    """test_retrieval_workflow's pipeline, one iteration, both fine-tunes choosing among `epochs` epochs; the
    reranker trains on the embedder's mined data (no second mining) and batches of 8 (2 steps an epoch)."""
    config = copy.deepcopy(CONFIG)
    pipeline = config["retrieval"]["plots"]
    pipeline["iterations"] = pipeline["iterations"][:1]
    pipeline["iterations"][0]["reranker"].pop("mine")
    for role in ("embedder", "reranker"):
        pipeline["iterations"][0][role].update(select_checkpoint="best", epochs=epochs, batch_size=8)
    return config


@pytest.mark.parametrize("edit, expected", [
    (lambda p: p.update(valid_fold=None),
     "config: retrieval.plots.iterations[0].embedder.select_checkpoint: best chooses an epoch on the valid fold, but "
     "retrieval.plots.valid_fold is null"),
    (lambda p: p["iterations"][0]["reranker"].update(select_checkpoint="top"),
     "config: retrieval.plots.iterations[0].reranker.select_checkpoint: 'top' is not last, best or a whole epoch number K"),
    (lambda p: p["iterations"][0]["embedder"].update(epochs=2.5),
     "config: retrieval.plots.iterations[0].embedder.epochs: 2.5 is not a whole number"),
])
def test_bad_select_checkpoint_settings_name_the_key(edit, expected):
    config = best_config()
    edit(config["retrieval"]["plots"])
    if config["retrieval"]["plots"]["valid_fold"] is None:
        config["retrieval"]["plots"]["iterations"][0]["reranker"]["select_checkpoint"] = "last"
    with pytest.raises(OoflineError) as error:
        check_config(config, REPO)
    assert len(str(error.value).splitlines()) == 1 and str(error.value).startswith(expected), str(error.value)


@pytest.mark.parametrize("edit, expected", [
    (lambda p: p["iterations"][0]["embedder"].update(select_checkpoint=3),
     "config: retrieval.plots.iterations[0].embedder.select_checkpoint: 3 is past the last epoch (epochs: 2"),
    (lambda p: p["iterations"][0]["reranker"].update(select_checkpoint=0),
     "config: retrieval.plots.iterations[0].reranker.select_checkpoint: 0 is less than the minimum of 1"),
    (lambda p: p["iterations"][0]["embedder"].update(select_checkpoint=1, epochs=1.5),
     "config: retrieval.plots.iterations[0].embedder.epochs: 1.5 is not a whole number (select_checkpoint: 1"),
    (lambda p: p["embedder_defaults"].pop("base"),
     "config: retrieval.plots.iterations[0].embedder.base: missing (set it there or in retrieval.plots.embedder_defaults)"),
])
def test_bad_fixed_epoch_settings_name_the_key(edit, expected):
    config = fixed_epoch_config()
    edit(config["retrieval"]["plots"])
    with pytest.raises(OoflineError) as error:
        check_config(config, REPO)
    assert len(str(error.value).splitlines()) == 1 and str(error.value).startswith(expected), str(error.value)


def fixed_epoch_config(epochs: int = 2, kept: int = 1) -> dict:
    """best_config's pipeline as a final fit (valid_fold: null) keeping epoch `kept` of `epochs`; the shared
    fine-tune settings come from embedder_defaults / reranker_defaults."""
    config = best_config(epochs)
    pipeline = config["retrieval"]["plots"]
    pipeline["valid_fold"] = None
    step = pipeline["iterations"][0]
    pipeline["embedder_defaults"] = {key: value for key, value in step["embedder"].items() if key != "epochs"}
    pipeline["reranker_defaults"] = dict(step["reranker"])
    step["embedder"] = {"epochs": epochs, "select_checkpoint": kept}
    step["reranker"] = {"select_checkpoint": kept}
    return config


def test_a_final_fit_keeps_a_fixed_epoch_without_a_valid_fold(tmp_path):
    """select_checkpoint: K on valid_fold: null is a valid config; the fine-tunes take the defaults' settings,
    keep epoch K (no --validation, nothing scored) and evaluation is a final fit with no checkpoint records."""
    config = fixed_epoch_config()
    check_config(copy.deepcopy(config), REPO)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    dry_run = snakemake(tmp_path, "-n", "-p")
    assert dry_run.returncode == 0, dry_run.stdout[-2000:] + dry_run.stderr[-2000:]
    commands = dry_run.stdout.splitlines()
    finetunes = [line for line in commands if "workflow_scripts.retrieval.finetune" in line]
    assert len(finetunes) == 2
    for line in finetunes:
        assert "--select-checkpoint 1" in line and "--validation" not in line and "--epochs 2" in line
        assert "--batch-size 8" in line and "--base-model results/retrieval/plots/base/minilm" in line  # the defaults
    evaluation = next(line for line in commands if "workflow_scripts.retrieval.eval" in line and "/iter0/" in line)
    assert "--final-fit" in evaluation and "--valid-folds" not in evaluation and "-checkpoints" not in evaluation


def test_a_fixed_epoch_saves_epoch_checkpoints_and_stops_after_the_kept_one():
    fixed = FinetuneSettings("reranker", "decoder-only-base", "m", epochs=4, lora=True, device="cpu",
                             select_checkpoint=3, label_smoothing=0.2)
    argv = command_line(fixed, "d", "o")
    assert argv[argv.index("--save_strategy") + 1] == "epoch" and argv[argv.index("--num_train_epochs") + 1] == "4"
    assert argv[argv.index("--save_merged_lora_model") + 1] == "False"
    launcher = argv[:argv.index("--")]
    assert launcher[launcher.index("--launch-stop-after-epoch") + 1] == "3"
    assert launcher[launcher.index("--launch-label-smoothing") + 1] == "0.2"
    for bad, message in ((5, "5 is not an epoch of this fine-tune"), ("third", "must be last, best or a whole")):
        with pytest.raises(OoflineError, match=message):
            FinetuneSettings("embedder", "encoder-only-base", "m", epochs=4, select_checkpoint=bad).validate()


def test_the_stop_callback_ends_training_after_the_kept_epoch_only():
    from types import SimpleNamespace

    from workflow_scripts.retrieval.finetune import stop_after_epoch_callback

    callback = stop_after_epoch_callback(2)
    for epoch, stops in ((1.0, False), (2.0, True), (3.0, True)):
        control = SimpleNamespace(should_training_stop=False)
        callback.on_epoch_end(None, SimpleNamespace(epoch=epoch), control)
        assert control.should_training_stop is stops, epoch


def test_best_scores_the_reranker_on_this_iterations_embedder_and_evaluation_records_both(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(best_config()))
    dry_run = snakemake(tmp_path, "-n", "-p")
    assert dry_run.returncode == 0, dry_run.stdout[-2000:] + dry_run.stderr[-2000:]
    commands = dry_run.stdout.splitlines()
    finetunes = [line for line in commands if "workflow_scripts.retrieval.finetune" in line]
    embedder = next(line for line in finetunes if "--kind embedder" in line)
    reranker = next(line for line in finetunes if "--kind reranker" in line)
    for line in (embedder, reranker):
        assert "--select-checkpoint best" in line and "--validation --queries" in line and "--valid-fold 0" in line
        assert line.index("--output-dir") < line.index("--validation")  # the valid fold's flags end the line
    assert "--candidate-embedder results/retrieval/plots/iter0/embedder/merged" in reranker
    assert "--candidate-embedder" not in embedder and "--rerank-max-length" not in embedder
    evaluation = next(line for line in commands if "workflow_scripts.retrieval.eval" in line and "/iter0/" in line)
    assert "--embedder-checkpoints results/retrieval/plots/iter0/embedder/checkpoints.json" in evaluation
    assert "--reranker-checkpoints results/retrieval/plots/iter0/reranker/checkpoints.json" in evaluation


@pytest.mark.slow
def test_real_best_checkpoint_run_scores_each_epoch_and_applies_the_chosen_one(tmp_path):
    """Two epochs each for the MiniLM embedder and reranker: both epochs scored on fold 0, the chosen one is the
    argmax, its model is merged/ (evaluate_retrieval's score of it equals the recorded score: computed ==
    applied), and score.json carries the chosen and the last epoch's scores, flagged as chosen on the fold."""
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(best_config()))
    root = tmp_path / "results" / "retrieval" / "plots" / "iter0"
    result = snakemake(tmp_path, str(root.relative_to(tmp_path) / "score.json"))
    assert result.returncode == 0, result.stderr[-4000:]
    score = json.loads((root / "score.json").read_text())
    assert score["selected_on_valid_fold"] is True and "optimistic" in score["note"]
    for role, overall in (("embedder", "embedder"), ("reranker", "reranked")):
        record = json.loads((root / role / "checkpoints.json").read_text())
        scores = [entry["map@5"] for entry in record["epochs"]]
        assert [entry["epoch"] for entry in record["epochs"]] == [1, 2]
        assert record["chosen_epoch"] == 1 + int(np.argmax(scores))  # argmax; np.argmax also keeps the first tie
        assert record["chosen_score"] == max(scores) and record["last_score"] == scores[-1]
        # computed == applied: evaluating merged/ gives the score the choice was made on
        assert score["overall"][overall]["map@5"] == pytest.approx(record["chosen_score"], abs=1e-12)
        summary = score["checkpoint_selection"][role]
        assert (summary["chosen_epoch"], summary["chosen_score"], summary["last_score"]) == (
            record["chosen_epoch"], record["chosen_score"], record["last_score"])
        assert summary["epoch_scores"] == {"1": scores[0], "2": scores[1]}
        files = [path.name for path in (root / role).rglob("*")]
        assert not [name for name in files if name.endswith((".bin", ".pt", ".pth", ".pkl"))]
        assert not [name for name in files if name.startswith("checkpoint-")]
        assert list((root / role / "merged").glob("*.safetensors"))
    print(json.dumps({role: json.loads((root / role / "checkpoints.json").read_text())["epochs"]
                      for role in ("embedder", "reranker")}))


class FixedPairScore:
    """A stand-in for the valid fold's scorer: a LoRA reranker's raw score of one fixed pair, as its 'MAP'."""
    metric, scored_by = "map@5", "one fixed pair's raw reranker score"

    def __call__(self, model):
        from workflow_scripts.retrieval.models import RerankerSettings, load_reranker, rerank_scores

        settings = RerankerSettings(str(model), "decoder-only-base", devices="cpu", precision="fp32", max_length=32)
        return {"map@5": float(rerank_scores(load_reranker(settings), settings, [("review of movie 1", "plot of movie 1")])[0])}


@pytest.mark.slow
def test_real_lora_reranker_merges_each_epoch_and_lays_out_the_chosen_one(tiny_llama_dir, tmp_path):
    """The LoRA path: each epoch's adapter is merged by FlagEmbedding's own merge, scored, and the chosen epoch's
    merge is merged/ (it scores what was recorded) with its adapter in adapter/; no pickles, no checkpoints left."""
    from test_retrieval_finetune import tiny_training_data

    from workflow_scripts.retrieval.finetune import finetune

    settings = FinetuneSettings("reranker", "decoder-only-base", str(tiny_llama_dir), epochs=2, batch_size=4,
                                train_group_size=3, max_len=32, lora=True, lora_rank=4, lora_alpha=8,
                                learning_rate=5e-3, device="cpu", select_checkpoint="best")
    output = finetune(settings, tiny_training_data(tmp_path / "mined.jsonl"), tmp_path / "reranker", 1,
                      FixedPairScore(), valid_fold=0)
    record = json.loads((output / "checkpoints.json").read_text())
    scores = [entry["map@5"] for entry in record["epochs"]]
    assert [entry["epoch"] for entry in record["epochs"]] == [1, 2] and scores[0] != scores[1]
    assert record["chosen_epoch"] == 1 + int(np.argmax(scores))
    assert FixedPairScore()(output / "merged")["map@5"] == pytest.approx(record["chosen_score"], abs=1e-6)
    assert list((output / "adapter").glob("adapter_model.safetensors"))
    files = [path.name for path in output.rglob("*")]
    assert not [name for name in files if name.endswith((".bin", ".pt", ".pth", ".pkl"))]
    assert sorted(path.name for path in output.iterdir()) == ["adapter", "checkpoints.json", "merged", "settings.json"]


class DistanceFromBase:
    """A stand-in scorer for a full fine-tune: minus the distance of a fixed text's embedding from the base
    model's, so the epochs score differently (the earlier, less trained one higher)."""
    metric, scored_by = "map@5", "minus a fixed text's embedding distance from the base model's"

    def __init__(self, base):
        self.reference = self.embed(base)

    @staticmethod
    def embed(model):
        from workflow_scripts.retrieval.models import EmbedderSettings, encode_queries_and_corpus

        settings = EmbedderSettings(str(model), devices="cpu", precision="fp32", query_max_length=16, passage_max_length=16)
        return encode_queries_and_corpus(settings, ["review of movie 1"], ["plot of movie 1"])[0][0]

    def __call__(self, model):
        return {"map@5": -float(np.linalg.norm(self.embed(model) - self.reference))}


@pytest.mark.slow
def test_real_full_finetune_lays_out_the_chosen_epoch_not_the_last(tiny_bert, tmp_path):
    """A full (non-LoRA) fine-tune: the epochs score differently, and merged/ scores exactly the chosen epoch's
    recorded score (computed == applied), with the checkpoint's pickled training arguments left out."""
    from test_retrieval_finetune import tiny_training_data

    from workflow_scripts.retrieval.finetune import finetune

    settings = FinetuneSettings("embedder", "encoder-only-base", tiny_bert, epochs=2, batch_size=4, train_group_size=3,
                                query_max_len=16, passage_max_len=16, learning_rate=1e-3, device="cpu",
                                select_checkpoint="best")
    scorer = DistanceFromBase(tiny_bert)
    output = finetune(settings, tiny_training_data(tmp_path / "mined.jsonl"), tmp_path / "embedder", 1, scorer, 0)
    record = json.loads((output / "checkpoints.json").read_text())
    scores = [entry["map@5"] for entry in record["epochs"]]
    assert [entry["epoch"] for entry in record["epochs"]] == [1, 2] and scores[0] != scores[1]
    assert record["chosen_epoch"] == 1 + int(np.argmax(scores))
    assert scorer(output / "merged")["map@5"] == pytest.approx(record["chosen_score"], abs=1e-6)
    files = [path.name for path in output.rglob("*")]
    assert not [name for name in files if name.endswith((".bin", ".pt", ".pth", ".pkl"))]
    assert sorted(path.name for path in output.iterdir()) == ["checkpoints.json", "merged", "settings.json"]
    print(record["epochs"], record["chosen_epoch"])


@pytest.mark.slow
def test_real_fixed_epoch_keeps_epoch_k_of_the_full_schedule(tiny_llama_dir, tmp_path):
    """select_checkpoint: 2 of 3 epochs on a LoRA reranker: training stops after epoch 2 (no epoch-3 checkpoint
    was ever written), the learning rate it ended on is the 3-epoch schedule's (not a 2-epoch schedule's), and merged/ is epoch 2's merge: it scores exactly what a merge of the
    laid-out adapter onto the base scores."""
    from test_retrieval_finetune import tiny_training_data

    from workflow_scripts.retrieval.finetune import finetune

    lr = 5e-3
    settings = FinetuneSettings("reranker", "decoder-only-base", str(tiny_llama_dir), epochs=3, batch_size=4,
                                train_group_size=3, max_len=32, lora=True, lora_rank=4, lora_alpha=8, warmup=0.0,
                                learning_rate=lr, device="cpu", select_checkpoint=2)
    output = finetune(settings, tiny_training_data(tmp_path / "mined.jsonl"), tmp_path / "reranker", 1)
    record = json.loads((output / "checkpoints.json").read_text())
    assert [entry["epoch"] for entry in record["epochs"]] == [1, 2]  # stopped after the kept epoch
    assert (record["chosen_epoch"], record["planned_epochs"], record["selected_on_valid_fold"]) == (2, 3, False)
    # linear decay over 3 epochs of 2 steps: step 4 of 6 trains at lr * 3/6 (a 2-epoch schedule's last step: lr / 4)
    assert record["chosen_learning_rate"] == pytest.approx(lr * 3 / 6, rel=1e-6)
    import shutil

    from workflow_scripts.retrieval.checkpoints import merge_lora_checkpoint

    shutil.copytree(output / "adapter", tmp_path / "again")
    again = merge_lora_checkpoint("FlagEmbedding.finetune.reranker.decoder_only.base", str(tiny_llama_dir),
                                  tmp_path / "again")
    kept = FixedPairScore()(output / "merged")["map@5"]
    assert kept == pytest.approx(FixedPairScore()(again)["map@5"], abs=1e-6)
    assert kept != pytest.approx(FixedPairScore()(tiny_llama_dir)["map@5"], abs=1e-4)  # it trained
    files = [path.name for path in output.rglob("*")]
    assert not [name for name in files if name.endswith((".bin", ".pt", ".pth", ".pkl"))]
    assert sorted(path.name for path in output.iterdir()) == ["adapter", "checkpoints.json", "merged", "settings.json"]
