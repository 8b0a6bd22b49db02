"""Report plots from real-shaped workflow outputs: each command writes a PNG, plots the numbers in the files,
reruns byte-identically, and names the missing file or column on bad input."""
from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from workflow_scripts import ensemble as ens
from workflow_scripts import leaderboard as lb
from workflow_scripts import metrics
from workflow_scripts import plots
from workflow_scripts import thresholds as th
from workflow_scripts.errors import OoflineError, run_cli
from workflow_scripts.io import write_json, write_parquet
from workflow_scripts.labels import Head, LabelSpec


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CLASSES = ("a", "b", "c")
MULTICLASS = LabelSpec("multiclass", (Head("label", "multiclass", "label", CLASSES),))
MULTILABEL = LabelSpec("multilabel", tuple(Head(name, "binary", name) for name in ("toxic", "insult", "threat")))


def member_frames(n=80, n_folds=4, seed=0):
    """Three models' OOF frames of different quality on one multiclass task, plus targets."""
    rng = np.random.default_rng(seed)
    targets = np.eye(3, dtype=np.float32)[rng.integers(0, 3, n)]
    ids, folds = np.arange(n), np.arange(n) % n_folds
    frames = {}
    for name, noise in (("deberta", 0.8), ("qwen_lora", 1.2), ("minilm", 2.0)):
        logits = 1.5 * targets + rng.normal(0, noise, size=targets.shape)
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        frames[name] = pl.DataFrame({"id": ids, "fold": folds}).hstack(
            pl.DataFrame(probs.astype(np.float32), schema=list(CLASSES)))
    return frames, targets, folds


def write_inputs(tmp_path, lb_yaml="blend_sub: {public: 0.71, private: 0.70}\nsearch_sub: {public: 0.74}\n"):
    """Model scores, ensemble scores, threshold curves and a leaderboard, written by the real step functions."""
    frames, targets, folds = member_frames()
    paths = {"models": [], "ensembles": []}
    for name, frame in frames.items():
        scores = metrics.fold_scores(MULTICLASS, frame.select(list(CLASSES)).to_numpy(), targets, folds, "map@3")
        scores["model"] = name
        paths["models"].append(tmp_path / "scores" / f"{name}.json")
        write_json(scores, paths["models"][-1])
    names = list(frames)
    for ensemble, method, weights in (("blend", "mean", [1.0, 1.2, 0.8]), ("search", "search", None)):
        _, _, _, score = ens.build_ensemble(MULTICLASS, names, frames, None, targets, "map@3", method, weights)
        score["ensemble"] = ensemble
        paths["ensembles"].append(tmp_path / "ensembles" / ensemble / "score.json")
        write_json(score, paths["ensembles"][-1])

    rng = np.random.default_rng(1)
    labels = (rng.random((120, 3)) < [0.1, 0.3, 0.5]).astype(np.float32)
    probs = np.clip(labels * 0.3 + rng.random((120, 3)) * 0.7, 0, 1).astype(np.float32)
    result = th.search_thresholds(MULTILABEL, probs, labels, method="hybrid")
    paths["thresholds"] = tmp_path / "thresholds" / "blend.json"
    write_json(result, paths["thresholds"])
    paths["curves"] = tmp_path / "thresholds" / "blend.curves.parquet"
    write_parquet(th.threshold_curves(MULTILABEL, probs, labels, result), paths["curves"])

    manifests = []
    for submission, ensemble in (("blend_sub", "blend"), ("search_sub", "search")):
        score = json.loads((tmp_path / "ensembles" / ensemble / "score.json").read_text())
        manifests.append(tmp_path / "submissions" / submission / "manifest.json")
        write_json({"hashed": {"submission": submission, "oof_scores": {f"ensembles/{ensemble}/score.json": {
            "metric": "map@3", "score": score["score"], "in_sample_score": score["in_sample_score"]}}}}, manifests[-1])
    (tmp_path / "lb_scores.yaml").write_text(lb_yaml)
    board = lb.build_leaderboard(paths["models"], paths["ensembles"], manifests,
                                 lb.load_lb_scores(tmp_path / "lb_scores.yaml"))
    paths["leaderboard"] = tmp_path / "leaderboard.csv"
    board.write_csv(paths["leaderboard"])
    return paths


def commands(paths, out):
    return {
        "cv-folds": ["cv-folds", "--scores", *map(str, paths["models"]), "--out", str(out / "cv_folds.png")],
        "ensembles": ["ensembles", "--scores", *map(str, paths["ensembles"]), "--out", str(out / "ensembles.png")],
        "thresholds": ["thresholds", "--curves", str(paths["curves"]), "--thresholds", str(paths["thresholds"]),
                       "--out", str(out / "thresholds.png")],
        "cv-lb": ["cv-lb", "--leaderboard", str(paths["leaderboard"]), "--out", str(out / "cv_lb.png")],
    }


def gid_artists(fig, prefix):
    """Artists the plot tagged with a gid starting with `prefix`, by gid."""
    found = {}
    for ax in fig.axes:
        for artist in ax.get_children():
            gid = artist.get_gid()
            if gid and gid.startswith(prefix):
                found[gid] = artist
    return found


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return write_inputs(tmp_path_factory.mktemp("plots"))


def test_every_command_writes_a_png_and_reruns_byte_identically(inputs, tmp_path, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    for out in (first, second):
        for name, argv in commands(inputs, out).items():
            assert run_cli(plots.main, argv) == 0, name
    for name in ("cv_folds", "ensembles", "thresholds", "cv_lb"):
        data = (first / f"{name}.png").read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5000, name
        assert b"matplotlib" not in data  # no version stamp in the metadata
        assert data == (second / f"{name}.png").read_bytes(), name
    assert "plots cv-lb: 2 submission(s) with LB scores" in capsys.readouterr().out
    assert not list(first.glob(".*"))  # no temporary leftovers


def test_cv_folds_plots_each_fold_score_and_their_mean(inputs):
    models = [plots.load_model_scores(path) for path in inputs["models"]]
    fig = plots.cv_folds_figure(models)
    folds = gid_artists(fig, "fold:")
    means = gid_artists(fig, "mean:")
    assert len(folds) == 3 * 4 and len(means) == 3
    for path in inputs["models"]:
        payload = json.loads(path.read_text())
        name = payload["model"]
        for fold, scores in payload["folds"].items():
            assert folds[f"fold:{name}:{fold}"].get_offsets()[0][1] == pytest.approx(scores["score"])
        mean_y = means[f"mean:{name}"].get_segments()[0][0][1]
        assert mean_y == pytest.approx(np.mean([s["score"] for s in payload["folds"].values()]))
        oof = gid_artists(fig, f"oof:{name}")[f"oof:{name}"]
        assert oof.get_offsets()[0][1] == pytest.approx(payload["score"])
    assert fig.axes[0].get_ylabel() == "map@3"


def test_ensemble_bars_are_in_and_out_of_sample_with_best_member(inputs):
    ensembles = [plots.load_ensemble_scores(path) for path in inputs["ensembles"]]
    fig = plots.ensembles_figure(ensembles)
    for path in inputs["ensembles"]:
        payload = json.loads(path.read_text())
        name = payload["ensemble"]
        bars = gid_artists(fig, f"in_sample:{name}") | gid_artists(fig, f"out_of_sample:{name}")
        heights = {gid.split(":")[0]: bar.get_height() for gid, bar in bars.items()}
        assert heights == pytest.approx({"in_sample": payload["in_sample_score"],
                                         "out_of_sample": payload["out_of_sample_score"]})
        best = gid_artists(fig, f"best_member:{name}")[f"best_member:{name}"]
        assert best.get_segments()[0][0][1] == pytest.approx(max(payload["member_scores"].values()))
    search = json.loads(inputs["ensembles"][1].read_text())
    assert search["method"] == "search" and search["nested"] is not None  # the bars differ for searched weights


def test_threshold_panels_mark_each_method_at_its_threshold(inputs):
    result = json.loads(inputs["thresholds"].read_text())
    fig = plots.thresholds_figure(plots.load_curves(inputs["curves"]), result)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 3
    assert [ax.get_title().splitlines()[0] for ax in visible] == ["insult", "threat", "toxic"]
    for column, info in result["classes"].items():
        for method in ("exact", "class_balance", "hybrid"):
            line = gid_artists(fig, f"mark:{column}:{method}")[f"mark:{column}:{method}"]
            assert line.get_xdata()[0] == pytest.approx(info[method])
            assert line.get_linewidth() == (2.4 if method == result["method"] else 1.3)
        f1 = gid_artists(fig, f"f1:{column}")[f"f1:{column}"]
        assert 0.0 <= min(f1.get_ydata()) and max(f1.get_ydata()) == pytest.approx(info["f1_exact"], abs=0.05)


def test_threshold_panels_are_capped(inputs):
    fig = plots.thresholds_figure(plots.load_curves(inputs["curves"]), None, max_panels=2)
    assert sum(ax.get_visible() for ax in fig.axes) == 2
    assert "first 2 of 3 classes" in fig.get_suptitle()


def test_cv_lb_scatter_puts_each_submission_at_its_cv_and_lb(inputs):
    board = plots.load_leaderboard(inputs["leaderboard"])
    fig = plots.cv_lb_figure(board)
    public = gid_artists(fig, "lb_public")["lb_public"].get_offsets()
    subs = board.filter(pl.col("kind") == "submission").sort("name")
    np.testing.assert_allclose(public[:, 0], subs["cv"].to_numpy())
    np.testing.assert_allclose(public[:, 1], [0.71, 0.74])
    private = gid_artists(fig, "lb_private")["lb_private"].get_offsets()
    blend_cv = subs.filter(pl.col("name") == "blend_sub")["cv"][0]
    np.testing.assert_allclose(private, [[blend_cv, 0.70]])  # search_sub has no private score: no point


def test_cv_lb_without_lb_scores_says_so(tmp_path):
    paths = write_inputs(tmp_path, lb_yaml="")
    out = tmp_path / "cv_lb.png"
    assert run_cli(plots.main, ["cv-lb", "--leaderboard", str(paths["leaderboard"]), "--out", str(out)]) == 0
    assert out.read_bytes().startswith(PNG_SIGNATURE)
    fig = plots.cv_lb_figure(plots.load_leaderboard(paths["leaderboard"]))
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "no LB scores yet" in texts


@pytest.mark.parametrize("command", ["cv-folds", "ensembles", "thresholds", "cv-lb"])
def test_missing_input_file_is_named(inputs, tmp_path, command, capsys):
    argv = commands(inputs, tmp_path)[command]
    missing = str(tmp_path / "nowhere" / "missing_input.json")
    flag = {"cv-folds": "--scores", "ensembles": "--scores", "thresholds": "--curves", "cv-lb": "--leaderboard"}[command]
    argv[argv.index(flag) + 1] = missing
    assert run_cli(plots.main, argv) == 2
    assert missing in capsys.readouterr().err
    assert not list(tmp_path.glob("*.png"))


def test_bad_inputs_name_the_key_or_column(inputs, tmp_path):
    broken = tmp_path / "broken.json"
    write_json({"metric": "map@3", "score": 0.5}, broken)
    with pytest.raises(OoflineError, match=r"broken\.json.*'folds'"):
        plots.load_model_scores(broken)
    write_json({"metric": "map@3", "score": 0.5}, broken)
    with pytest.raises(OoflineError, match=r"broken\.json.*'in_sample_score'"):
        plots.load_ensemble_scores(broken)
    curves = tmp_path / "curves.parquet"
    pl.read_parquet(inputs["curves"]).drop("positive_rate").write_parquet(curves)
    with pytest.raises(OoflineError, match=r"curves\.parquet.*positive_rate"):
        plots.load_curves(curves)
    board = tmp_path / "board.csv"
    pl.read_csv(inputs["leaderboard"]).drop("lb_public").write_csv(board)
    with pytest.raises(OoflineError, match=r"board\.csv.*lb_public"):
        plots.load_leaderboard(board)
    with pytest.raises(OoflineError, match=r"--out .*\.png"):
        plots.main(["cv-lb", "--leaderboard", str(inputs["leaderboard"]), "--out", str(tmp_path / "x.jpg")])


def test_leaderboard_html_lists_every_row_escaped(inputs, tmp_path):
    out = tmp_path / "leaderboard.html"
    assert run_cli(plots.main, ["leaderboard-html", "--leaderboard", str(inputs["leaderboard"]), "--out", str(out)]) == 0
    page = out.read_text()
    board = pl.read_csv(inputs["leaderboard"])
    assert page.count("<tr><td>") == board.height
    for kind in ("Models", "Folds", "Ensembles", "Submissions"):
        assert f"<h2>{kind}</h2>" in page
    assert '<td class="num">0.71000</td>' in page and '<td class="num">0.70000</td>' in page  # blend_sub's LB
    weird = pl.DataFrame({"kind": ["model"], "name": ["<b>&x"], "metric": ["m"], "cv": [0.5], "lb_public": [None],
                          "lb_private": [None]})
    assert "&lt;b&gt;&amp;x" in plots.leaderboard_html(weird)
    assert "Optimistic CV" not in page
    flagged = pl.DataFrame({"kind": ["model", "fold"], "name": ["best", "best"], "cv": [0.5, 0.5],
                            "cv_optimistic": [True, True]})
    assert "<b>Optimistic CV</b> (select_epoch: best" in plots.leaderboard_html(flagged)
    assert "model best</p>" in plots.leaderboard_html(flagged)


REPO = __import__("pathlib").Path(__file__).resolve().parent.parent
# The globals rules/common.smk gives rules/report.smk, for plot inputs only; the rule file itself is the
# repository's, included in place so its `../report/` captions resolve as in the real workflow.
HARNESS = '''
import os
import sys
sys.path.insert(0, {repo!r})
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [{repo!r}, os.environ.get("PYTHONPATH")]))
from workflow_scripts.execution.code_version import code_digest
configfile: "config.yaml"
report: {workflow_rst!r}
OUT = config["output_dir"]
MODELS, ENSEMBLES, THRESHOLDS = config["models"], config["ensembles"], config["thresholds"]
PY = "python -m workflow_scripts"
CPU_CONTAINER = None


def out(path):
    return f"{{OUT}}/{{path}}"


wildcard_constraints:
    source="|".join(THRESHOLDS),


include: {rules!r}


rule all:
    input:
        config["targets"],
    default_target: True
'''


@pytest.mark.slow
def test_report_rules_build_the_plots_and_snakemake_report(tmp_path):
    """rules/report.smk, run by real Snakemake, gives a report with every figure and caption."""
    import subprocess
    import sys

    (tmp_path / "Snakefile").write_text(HARNESS.format(
        repo=str(REPO), rules=str(REPO / "rules" / "report.smk"), workflow_rst=str(REPO / "report" / "workflow.rst")))
    paths = write_inputs(tmp_path / "results")
    figures = ["cv_folds.png", "ensembles.png", "cv_lb.png", "thresholds/blend.png", "leaderboard.html"]
    config = {"output_dir": "results", "models": {p.stem: {} for p in paths["models"]},
              "ensembles": {p.parent.name: {} for p in paths["ensembles"]}, "thresholds": {"blend": {}},
              "targets": [f"results/plots/{name}" for name in figures]}
    (tmp_path / "config.yaml").write_text(json.dumps(config))
    snakemake = [sys.executable, "-m", "snakemake", "--cores", "1", "--directory", str(tmp_path),
                 "--snakefile", str(tmp_path / "Snakefile")]
    run = subprocess.run(snakemake, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    plots_dir = tmp_path / "results" / "plots"
    for name in ("cv_folds.png", "ensembles.png", "cv_lb.png", "thresholds/blend.png"):
        assert (plots_dir / name).read_bytes().startswith(PNG_SIGNATURE), name
    # each rule ran the plot its name says: the logs are the rules' own
    for log in ("cv_folds", "ensembles", "cv_lb", "leaderboard_html", "thresholds/blend"):
        assert (tmp_path / "results" / "logs" / "plots" / f"{log}.log").exists(), log
    run = subprocess.run(snakemake + ["--report", str(tmp_path / "report.html")], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    page = (tmp_path / "report.html").read_text()
    for name in ("cv_folds.png", "ensembles.png", "cv_lb.png", "blend.png"):
        assert f"data:image/png;charset=utf8;filename={name};base64," in page
    assert "filename=leaderboard.html" in page
    for category in ("1. Models", "2. Ensembles", "3. Thresholds", "4. Leaderboard"):
        assert category in page
    assert "binary column of <tt class=\\\"docutils literal\\\">blend</tt>" in page  # caption rendered per source
    assert "oofline turns a Kaggle-style competition" in page  # the front page
