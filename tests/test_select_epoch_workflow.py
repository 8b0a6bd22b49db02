"""A real Snakemake run of `select_epoch: best` on the tiny Llama, beside a twin that keeps the last epoch:
the kept epoch is the best held-out score, the OOF predictions score what training recorded for that epoch,
the plain CV is what the last-epoch model predicts, and the leaderboard flags the optimistic rows."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from movies_workflow import hand_map_at_3, movies_config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_workflow import snakemake  # noqa: E402

from workflow_scripts.labels import LabelSpec  # noqa: E402
from workflow_scripts.metrics import task_scores  # noqa: E402

# fold 0 only (the other fold would double the training and prediction jobs and check the same thing)
TWIN = {"source": "tiny:llama", "kind": "decoder_lora", "r": 4, "alpha": 8, "lr": 1e-2, "epochs": 3, "folds": [0]}
CONFIG = movies_config(
    n_train=60,
    model_defaults={"max_length": 32, "batch_size": 8, "seed": 3, "merge": False, "resources": {"threads": 1}},
    models={"best": {**TWIN, "select_epoch": "best"}, "last": TWIN},
    ensembles={"pair": {"members": ["best", "last"], "method": "mean"}},
    submissions={"best_top3": {"source": "best", "format": "top_k", "top_k": 3, "prediction_columns": ["category"]}},
)


def fold_score(predictions: pl.DataFrame, targets: pl.DataFrame, spec: LabelSpec) -> float:
    """The task metric of predictions (id + probability columns) against the run's targets file."""
    aligned = predictions.select("id").join(targets, on="id", how="left", maintain_order="left")
    columns = spec.probability_columns
    return task_scores(spec, predictions.select(columns).to_numpy(), aligned.select(columns).to_numpy(), "map@3")["score"]


@pytest.mark.slow
def test_best_epoch_per_fold_is_kept_scored_as_applied_and_flagged(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    result = snakemake(tmp_path, "results/leaderboard.csv")
    assert result.returncode == 0, result.stderr[-4000:]
    results = tmp_path / "results"
    spec = LabelSpec.load(results / "labels.json")
    targets = pl.read_parquet(results / "targets.parquet")
    scores = json.loads((results / "scores" / "best.json").read_text())
    twin = json.loads((results / "scores" / "last.json").read_text())
    assert scores["selection"] == "best_epoch_on_valid_fold" and scores["cv_optimistic"] is True
    assert "selection" not in twin

    for fold in ("0",):
        model_dir = results / "models" / "best" / f"fold{fold}" / "adapter"
        selection = json.loads((model_dir / "training.json").read_text())["summary"]["epoch_selection"]
        history = [entry["score"] for entry in selection["history"]]
        # every epoch scored; the kept one is the first of the highest (MAP@3: higher is better)
        assert [entry["epoch"] for entry in selection["history"]] == [1, 2, 3]
        assert selection["chosen_epoch"] == int(np.argmax(history)) + 1 and selection["last_epoch"] == 3
        # computed == applied: predict's OOF rows from the kept adapter score what training recorded for it
        valid = pl.read_parquet(results / "predictions" / "best" / f"fold{fold}" / "valid.parquet")
        assert fold_score(valid, targets, spec) == pytest.approx(history[selection["chosen_epoch"] - 1], abs=1e-4)
        assert scores["folds"][fold]["score"] == pytest.approx(history[selection["chosen_epoch"] - 1], abs=1e-4)
        # the plain fold score is the last epoch's: recorded in training, and what the twin's last-epoch
        # adapter (trained identically, kept at the last epoch) predicts through predict
        last_epoch = pl.read_parquet(model_dir / "last_epoch_valid.parquet")
        assert scores["plain"]["folds"][fold]["score"] == pytest.approx(fold_score(last_epoch, targets, spec), abs=1e-9)
        assert scores["plain"]["folds"][fold]["score"] == pytest.approx(history[-1], abs=1e-4)
        assert scores["plain"]["folds"][fold]["score"] == pytest.approx(twin["folds"][fold]["score"], abs=1e-4)
        print(f"fold {fold}: held-out MAP@3 per epoch {[round(h, 5) for h in history]}, "
              f"kept epoch {selection['chosen_epoch']}")

    # the overall plain CV is the twin's CV; the optimistic one is what the OOF file (the kept epochs) scores
    assert scores["plain"]["score"] == pytest.approx(twin["score"], abs=1e-4)
    train = pl.read_csv(results / "demo" / "train.csv").select(pl.col("id").cast(pl.String), "category")
    oof = pl.read_parquet(results / "oof" / "best.parquet").with_columns(pl.col("id").cast(pl.String))
    labels = oof.select("id").join(train, on="id", how="left")["category"]
    assert scores["score"] == pytest.approx(hand_map_at_3(oof, labels), abs=1e-9)
    print(f"CV optimistic {scores['score']:.5f}, plain {scores['plain']['score']:.5f}, twin {twin['score']:.5f}")

    board = pl.read_csv(results / "leaderboard.csv")
    flagged = {(kind, name) for kind, name in board.filter(pl.col("cv_optimistic") == True)  # noqa: E712
               .select("kind", "name").iter_rows()}
    assert {("model", "best"), ("fold", "best"), ("ensemble", "pair")} <= flagged
    assert ("model", "last") not in flagged
    row = board.filter((pl.col("kind") == "model") & (pl.col("name") == "best")).row(0, named=True)
    assert row["cv_plain"] == pytest.approx(scores["plain"]["score"], abs=1e-6)
    # the lift over the prior is the plain CV's, against the prior on fold 0's rows (the class shares of fold 1),
    # in score.json, on the model's row and on the row of its submission alike
    folds = pl.read_parquet(results / "folds.parquet").with_columns(pl.col("id").cast(pl.String))
    fold1 = folds.filter(pl.col("fold") == 1).join(train, on="id", how="left")["category"]
    prior_rows = oof.select("id").with_columns(pl.lit((fold1 == c).mean()).alias(c) for c in ("fresh", "plot", "rotten"))
    hand_lift = scores["plain"]["score"] - hand_map_at_3(prior_rows, labels)
    assert scores["lift_over_prior"] == pytest.approx(hand_lift, abs=1e-6)
    assert row["lift_over_prior"] == pytest.approx(hand_lift, abs=1e-6)
    submission = board.filter(pl.col("kind") == "submission").row(0, named=True)
    assert submission["cv_optimistic"] is True and submission["cv"] == pytest.approx(scores["score"], abs=1e-6)
    assert submission["lift_over_prior"] == pytest.approx(hand_lift, abs=1e-6)
    markdown = (results / "leaderboard.md").read_text()
    assert "**Optimistic CV**" in markdown and "model best, ensemble pair" in markdown
