"""Report figures as PNG: per-fold CV per model, ensemble comparison, F1-vs-threshold curves, CV vs LB.

One subcommand per figure, each reading workflow outputs and writing one file:
- `cv-folds`:   results/scores/{model}.json ...            -> fold scores as points, fold mean and OOF score;
- `ensembles`:  results/ensembles/{e}/score.json ...        -> in-sample vs out-of-sample bars, best member marked;
- `thresholds`: results/thresholds/{e}.curves.parquet       -> one F1-vs-threshold panel per class, chosen
                (+ optional results/thresholds/{e}.json)       thresholds marked;
- `cv-lb`:      results/leaderboard.csv                     -> CV vs public/private LB per submission, or a figure
                                                               saying there are no LB scores yet;
- `sweep`:      results/sweeps/{name}.json                 -> the metric against each swept key, one panel each;
- `leaderboard-html`: results/leaderboard.csv               -> the table as HTML (the report shows HTML inline,
                                                               a CSV only as a download).
Figures use the object API on the Agg canvas (no pyplot state) with matplotlib's default style and no
"Software" metadata, so a rerun on the same inputs and matplotlib version writes byte-identical PNGs.
"""
from __future__ import annotations

import argparse
import html
import math
import re
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: cluster nodes have no display

import matplotlib.style  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from workflow_scripts.errors import OoflineError, run_cli  # noqa: E402
from workflow_scripts.io import atomic_path, read_json, read_table  # noqa: E402

DPI = 110
# matplotlib defaults plus a few fixed sizes, so a user's matplotlibrc cannot change the report's bytes
STYLE = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "savefig.dpi": DPI,
}
METHOD_STYLE = {  # threshold method -> (colour, line style, label)
    "exact": ("tab:blue", "--", "exact (max F1)"),
    "class_balance": ("tab:orange", "-.", "class balance"),
    "hybrid": ("tab:green", ":", "hybrid"),
}
THRESHOLD_KINDS = ("curve", *METHOD_STYLE)


# ---------------------------------------------------------------------------------------------- inputs

def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


def _fold_score(value: Any) -> float | None:
    """A fold entry is either task_scores(...) (a dict with `score`) or a bare number (nested ensemble folds)."""
    return _number(value.get("score")) if isinstance(value, dict) else _number(value)


def load_model_scores(path: str | Path) -> dict:
    """One results/scores/{model}.json as {name, metric, score, folds: {fold: score}}; folds sorted by number."""
    payload = read_json(path)
    if not isinstance(payload, dict):
        raise OoflineError(f"{path}: expected a JSON object with 'score' and 'folds'")
    for key in ("score", "folds"):
        if key not in payload:
            raise OoflineError(f"{path}: model score file has no {key!r} key (expected the output of oof.py)")
    if not isinstance(payload["folds"], dict) or not payload["folds"]:
        raise OoflineError(f"{path}: 'folds' must be a non-empty mapping fold -> scores")
    folds = {}
    for fold, value in payload["folds"].items():
        score = _fold_score(value)
        if score is None:
            raise OoflineError(f"{path}: folds.{fold} has no numeric 'score'")
        folds[str(fold)] = score
    score = _number(payload["score"])
    if score is None:
        raise OoflineError(f"{path}: 'score' must be a number, got {payload['score']!r}")
    ordered = dict(sorted(folds.items(), key=lambda item: _natural_key(item[0])))
    return {"name": payload.get("model") or Path(path).stem, "metric": payload.get("metric") or "score",
            "score": score, "folds": ordered}


def load_ensemble_scores(path: str | Path) -> dict:
    """One results/ensembles/{e}/score.json as {name, metric, in_sample, out_of_sample, best_member}."""
    payload = read_json(path)
    if not isinstance(payload, dict):
        raise OoflineError(f"{path}: expected a JSON object with 'in_sample_score' and 'out_of_sample_score'")
    values = {}
    for key in ("in_sample_score", "out_of_sample_score"):
        value = _number(payload.get(key))
        if value is None:
            raise OoflineError(f"{path}: ensemble score file needs a numeric {key!r} (expected the output of ensemble.py)")
        values[key] = value
    members = {name: _number(v) for name, v in (payload.get("member_scores") or {}).items()}
    members = {name: v for name, v in members.items() if v is not None}
    best = max(members.items(), key=lambda item: (item[1], item[0])) if members else None
    return {"name": payload.get("ensemble") or Path(path).parent.name, "metric": payload.get("metric") or "score",
            "in_sample": values["in_sample_score"], "out_of_sample": values["out_of_sample_score"],
            "method": payload.get("method"), "best_member": best}


def load_curves(path: str | Path) -> pl.DataFrame:
    """results/thresholds/{e}.curves.parquet, checked: column, threshold, f1, positive_rate, kind."""
    curves = read_table(path)
    missing = [c for c in ("column", "threshold", "f1", "positive_rate", "kind") if c not in curves.columns]
    if missing:
        raise OoflineError(f"{path}: missing columns {missing} (expected the --curves-out file of thresholds.py)")
    unknown = sorted(set(curves["kind"].drop_nulls().to_list()) - set(THRESHOLD_KINDS))
    if unknown:
        raise OoflineError(f"{path}: column 'kind' has unknown values {unknown} (expected {list(THRESHOLD_KINDS)})")
    if curves.height == 0:
        raise OoflineError(f"{path}: no rows (the task has no binary columns to threshold?)")
    return curves


def load_leaderboard(path: str | Path) -> pl.DataFrame:
    """results/leaderboard.csv, checked for the columns the CV-vs-LB plot reads."""
    board = read_table(path)
    missing = [c for c in ("kind", "name", "metric", "cv", "lb_public", "lb_private") if c not in board.columns]
    if missing:
        raise OoflineError(f"{path}: missing columns {missing} (expected the leaderboard.csv of leaderboard.py)")
    return board.with_columns(pl.col("cv", "lb_public", "lb_private").cast(pl.Float64, strict=False))


# ---------------------------------------------------------------------------------------------- figures

def _natural_key(text: str) -> list:
    """Sort key putting c2 before c10."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text)]


def _metric_label(metrics: Sequence[str | None]) -> str:
    names = sorted({m for m in metrics if m})
    return " / ".join(names) if names else "score"


def _zoomed_limits(values: Sequence[float], floor_at_zero: bool = True) -> tuple[float, float]:
    """y limits around the values with some head room; scores that differ in the 3rd decimal stay visible."""
    lo, hi = float(min(values)), float(max(values))
    span = max(hi - lo, 0.02 * max(abs(hi), 1e-3), 1e-3)
    bottom, top = lo - 0.6 * span, hi + 0.45 * span
    if floor_at_zero and lo >= 0 and bottom < 0:
        bottom = 0.0
    if hi <= 1.0 < top:  # bounded metrics: keep room for labels but do not suggest scores above 1
        top = max(1.0, hi + 0.25 * span)
    return bottom, top


def _tick_labels(ax, names: Sequence[str]) -> None:
    ax.set_xticks(range(len(names)))
    longest = max(len(line) for name in names for line in name.splitlines())
    crowded = len(names) > 5 or longest * len(names) > 60
    ax.set_xticklabels(names, rotation=25 if crowded else 0, ha="right" if crowded else "center")


def cv_folds_figure(models: Sequence[dict]) -> Figure:
    """Per model: one point per fold (coloured by fold), the fold mean (bar) and the OOF score (diamond)."""
    if not models:
        raise OoflineError("cv-folds: give at least one --scores file")
    fold_names = sorted({f for m in models for f in m["folds"]}, key=_natural_key)
    palette = matplotlib.colormaps["tab10" if len(fold_names) <= 10 else "tab20"]
    fig = Figure(figsize=(max(5.5, 1.3 * len(models) + 2.8), 4.4), layout="constrained")
    ax = fig.add_subplot()
    values = []
    width = 0.32
    for x, model in enumerate(models):
        folds = model["folds"]
        offsets = np.linspace(-width / 2, width / 2, len(folds)) if len(folds) > 1 else np.zeros(1)
        for offset, (fold, score) in zip(offsets, folds.items()):
            ax.scatter([x + offset], [score], s=36, color=palette(fold_names.index(fold) % palette.N), zorder=3,
                       edgecolor="white", linewidth=0.6, gid=f"fold:{model['name']}:{fold}")
        mean = float(np.mean(list(folds.values())))
        ax.hlines(mean, x - width * 0.9, x + width * 0.9, color="black", linewidth=2, zorder=4,
                  gid=f"mean:{model['name']}")
        ax.scatter([x + width * 1.25], [model["score"]], marker="D", s=34, facecolor="none", edgecolor="black",
                   zorder=4, gid=f"oof:{model['name']}")
        spread = float(np.std(list(folds.values())))
        top = max(*folds.values(), model["score"])
        ax.annotate(f"mean {mean:.4f}\n± {spread:.4f}", (x, top), textcoords="offset points", xytext=(0, 7),
                    ha="center", va="bottom", fontsize=8)
        values += [*folds.values(), model["score"]]
    _tick_labels(ax, [m["name"] for m in models])
    ax.set_xlim(-0.8, len(models) - 0.3)
    ax.set_ylim(*_zoomed_limits(values))
    ax.set_ylabel(_metric_label([m["metric"] for m in models]))
    ax.set_title("CV per fold and model")
    handles = [Line2D([], [], linestyle="", marker="o", color=palette(i % palette.N), label=f"fold {f}")
               for i, f in enumerate(fold_names)]
    handles += [Line2D([], [], color="black", linewidth=2, label="fold mean (± std)"),
                Line2D([], [], linestyle="", marker="D", markerfacecolor="none", markeredgecolor="black",
                       label="OOF score (all rows)")]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.grid(axis="x", visible=False)
    return fig


def ensembles_figure(ensembles: Sequence[dict]) -> Figure:
    """Per ensemble: an in-sample and an out-of-sample bar, with the best single member's score marked."""
    if not ensembles:
        raise OoflineError("ensembles: give at least one --scores file")
    fig = Figure(figsize=(max(6.0, 2.2 * len(ensembles) + 1.5), 4.8), layout="constrained")
    ax = fig.add_subplot()
    width = 0.36
    values = []
    for x, ensemble in enumerate(ensembles):
        for offset, key, colour, label in ((-width / 2, "in_sample", "tab:gray", "in-sample"),
                                           (width / 2, "out_of_sample", "tab:blue", "out-of-sample")):
            value = ensemble[key]
            ax.bar(x + offset, value, width, color=colour, label=label if x == 0 else None,
                   gid=f"{key}:{ensemble['name']}")
            ax.annotate(f"{value:.4f}", (x + offset, value), textcoords="offset points", xytext=(0, 2),
                        ha="center", va="bottom", fontsize=8)
            values.append(value)
        if ensemble["best_member"]:
            member, score = ensemble["best_member"]
            ax.hlines(score, x - width * 1.15, x + width * 1.15, color="tab:red", linestyle="--", linewidth=1.5,
                      label="best single member" if not any(e["best_member"] for e in ensembles[:x]) else None,
                      zorder=4, gid=f"best_member:{ensemble['name']}")
            values.append(score)
    names = []
    for e in ensembles:
        lines = [e["name"] + (f" ({e['method']})" if e.get("method") else "")]
        if e["best_member"]:
            lines.append(f"best member: {e['best_member'][0]}")
        names.append("\n".join(lines))
    _tick_labels(ax, names)
    ax.set_xlim(-0.7, len(ensembles) - 0.3)
    bottom, top = _zoomed_limits(values)
    ax.set_ylim(bottom, top)
    ax.set_ylabel(_metric_label([e["metric"] for e in ensembles]))
    fig.suptitle("Ensembles: in-sample vs out-of-sample", fontsize=12)
    note = "out-of-sample: weights chosen on the other folds"
    ax.set_title(note if bottom == 0 else f"{note}; y axis starts at {bottom:.3f}", fontsize=9, color="0.3")
    fig.legend(loc="outside lower center", ncols=3, frameon=False)
    ax.grid(axis="x", visible=False)
    return fig


def thresholds_figure(curves: pl.DataFrame, thresholds: dict | None = None, max_panels: int = 36) -> Figure:
    """One panel per binary column: F1 and positive rate vs threshold, each method's threshold as a vertical line.

    `thresholds` (the thresholds JSON) adds the chosen method (thick line) and F1 at 0.5 -> tuned to the titles.
    """
    columns = sorted(set(curves["column"].to_list()), key=_natural_key)
    shown = columns[:max_panels]
    ncols = min(4, len(shown))
    nrows = math.ceil(len(shown) / ncols)
    fig = Figure(figsize=(3.4 * ncols + 0.4, 2.7 * nrows + 0.9), layout="constrained")
    fig.get_layout_engine().set(wspace=0.06, hspace=0.04)  # room between panels' tick labels
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True)
    classes = (thresholds or {}).get("classes", {})
    chosen_method = (thresholds or {}).get("method")
    for ax, column in zip(axes.flat, shown):
        rows = curves.filter(pl.col("column") == column)
        curve = rows.filter(pl.col("kind") == "curve").sort("threshold")
        ax.plot(curve["threshold"].to_numpy(), curve["f1"].to_numpy(), color="black", linewidth=1.5,
                gid=f"f1:{column}")
        ax.plot(curve["threshold"].to_numpy(), curve["positive_rate"].to_numpy(), color="tab:purple",
                linewidth=1.0, alpha=0.6, gid=f"rate:{column}")
        for method, (colour, style, _) in METHOD_STYLE.items():
            mark = rows.filter(pl.col("kind") == method)
            if mark.height == 0:
                continue
            threshold, f1 = float(mark["threshold"][0]), float(mark["f1"][0])
            bold = method == chosen_method
            ax.axvline(threshold, color=colour, linestyle=style, linewidth=2.4 if bold else 1.3,
                       gid=f"mark:{column}:{method}")
            ax.plot([threshold], [f1], marker="o", color=colour, markersize=6 if bold else 4)
        title = column if len(column) <= 28 else column[:27] + "…"
        info = classes.get(column)
        if info and _number(info.get("f1_before")) is not None and _number(info.get("f1_after")) is not None:
            title += f"\nF1 {info['f1_before']:.3f} at 0.5 → {info['f1_after']:.3f}"
        ax.set_title(title, fontsize=10)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xticks([0.0, 0.25, 0.5, 0.75, 1.0], ["0", "0.25", "0.5", "0.75", "1"])
    for ax in axes.flat[len(shown):]:
        ax.set_visible(False)
    for column_axes in axes.T:  # the lowest shown panel of each column carries the x axis labels
        lowest = [ax for ax in column_axes if ax.get_visible()][-1]
        lowest.tick_params(labelbottom=True)
        lowest.set_xlabel("threshold")
    for ax in axes[:, 0]:
        ax.set_ylabel("F1 / positive rate")
    handles = [Line2D([], [], color="black", linewidth=1.5, label="F1 (OOF)"),
               Line2D([], [], color="tab:purple", alpha=0.6, label="predicted positive rate")]
    for method, (colour, style, label) in METHOD_STYLE.items():
        suffix = " (chosen)" if method == chosen_method else ""
        handles.append(Line2D([], [], color=colour, linestyle=style, linewidth=2.4 if suffix else 1.3,
                              label=label + suffix))
    title = "F1 vs threshold per class"
    if len(shown) < len(columns):
        title += f" (first {len(shown)} of {len(columns)} classes)"
    fig.suptitle(title, fontsize=12)
    fig.legend(handles=handles, loc="outside lower center", ncols=min(5, len(handles)), frameon=False)
    return fig


def _message_figure(title: str, lines: Sequence[str]) -> Figure:
    fig = Figure(figsize=(6.6, 3.2))
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.text(0.5, 0.62, title, ha="center", va="center", fontsize=14, transform=ax.transAxes)
    ax.text(0.5, 0.36, "\n".join(lines), ha="center", va="center", fontsize=9.5, color="0.3",
            transform=ax.transAxes)
    return fig


def cv_lb_figure(board: pl.DataFrame) -> Figure:
    """CV (x) vs public and private LB (y) per submission, and per model or ensemble lb_scores.yaml scores (a
    write-up's table rows); a message figure when no LB score exists yet."""
    submissions = board.filter(pl.col("kind").is_in(["submission", "model", "ensemble"])
                               & ((pl.col("kind") == "submission") | pl.col("lb_public").is_not_null()
                                  | pl.col("lb_private").is_not_null()))
    with_lb = submissions.filter(pl.col("lb_public").is_not_null() | pl.col("lb_private").is_not_null())
    if with_lb.height == 0:
        return _message_figure("no LB scores yet", [
            f"{submissions.height} submission(s) built, none with a leaderboard score.",
            "Add them to lb_scores.yaml, one line per submission:",
            "my_submission: {public: 0.712, private: 0.705}",
            "then rebuild the leaderboard and this plot."])
    plotted = with_lb.filter(pl.col("cv").is_not_null()).sort("name")
    no_cv = with_lb.filter(pl.col("cv").is_null())["name"].sort().to_list()
    if plotted.height == 0:
        return _message_figure("LB scores without CV", [
            "These submissions have LB scores but no CV in the leaderboard:", ", ".join(no_cv[:8]),
            "(built outside this workflow, or their manifest has no OOF score)"])
    fig = Figure(figsize=(6.6, 5.0), layout="constrained")
    ax = fig.add_subplot()
    cv = plotted["cv"].to_numpy()
    public, private = plotted["lb_public"].to_numpy(), plotted["lb_private"].to_numpy()
    for x, lo, hi in zip(cv, public, private):
        if not (np.isnan(lo) or np.isnan(hi)):
            ax.plot([x, x], [lo, hi], color="0.7", linewidth=1, zorder=1)
    for values, marker, colour, label in ((public, "o", "tab:blue", "public LB"),
                                          (private, "s", "tab:orange", "private LB")):
        rows = ~np.isnan(values)
        if rows.any():
            ax.scatter(cv[rows], values[rows], marker=marker, s=44, color=colour, label=label, zorder=3,
                       gid="lb_" + label.split()[0])
    for name, x, y_pub, y_priv in zip(plotted["name"].to_list(), cv, public, private):
        if plotted.height > 20:  # a sweep's rows: too many names to read; the sweep's own figure has them
            break
        y = y_pub if not np.isnan(y_pub) else y_priv
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    lb_values = np.concatenate([public[~np.isnan(public)], private[~np.isnan(private)]])
    # separate zoom per axis: LB often sits at an offset from CV, and the ranking is what matters
    x_lo, x_hi = _zoomed_limits(cv, floor_at_zero=False)
    y_lo, y_hi = _zoomed_limits(lb_values, floor_at_zero=False)
    x_lo, x_hi = x_lo - 0.15 * (x_hi - x_lo), x_hi + 0.35 * (x_hi - x_lo)  # room for the name labels
    if max(x_lo, y_lo) < min(x_hi, y_hi):  # the LB = CV line crosses the view
        ax.plot([x_lo, x_hi], [x_lo, x_hi], color="0.6", linestyle="--", linewidth=1, label="LB = CV", zorder=0)
    ax.set_xlim(x_lo, x_hi)
    ax.set_ylim(y_lo, y_hi)
    metric = _metric_label(plotted["metric"].to_list())
    ax.set_xlabel(f"CV ({metric}, out-of-fold)")
    ax.set_ylabel("LB score")
    scored = "submission" if set(plotted["kind"].to_list()) == {"submission"} else "scored row"
    ax.set_title(f"CV vs LB ({plotted.height} {scored}{'s' if plotted.height != 1 else ''})")
    if plotted.height >= 3 and (~np.isnan(public)).sum() >= 3:
        rows = ~np.isnan(public)
        ranks = lambda v: np.argsort(np.argsort(v, kind="stable"), kind="stable")  # noqa: E731
        rho = float(np.corrcoef(ranks(cv[rows]), ranks(public[rows]))[0, 1])
        ax.text(0.02, 0.98, f"rank correlation CV vs public LB: {rho:.2f}", transform=ax.transAxes,
                va="top", fontsize=8.5, color="0.3")
    if no_cv:
        ax.text(0.02, 0.02, "LB but no CV: " + ", ".join(no_cv[:6]), transform=ax.transAxes, fontsize=8,
                color="0.3")
    ax.legend(loc="lower right", frameon=False)
    return fig


def _sweep_panels(summary: dict) -> list[tuple[str, list[str], list[int]]]:
    """(swept key, category labels in order, each variant's category index) per panel of a sweep figure: its
    swept keys (a variant's label only when nothing else varies) and, for an ensemble sweep, each pool member
    (`out`, or `in` / its weight)."""
    rows = summary["rows"]
    keys = [c for c in summary["columns"] if c != "label"] or [c for c in summary["columns"]]
    weights = {row.get(c) for c in summary["member_columns"] for row in rows} - {None}
    equal = weights <= {1.0}  # a subset sweep: members are in or out
    panels = []
    for key in keys + list(summary["member_columns"]):
        member = key in summary["member_columns"]
        raw = [row.get(key) for row in rows]
        if member:
            labels = ["out" if value is None else ("in" if equal else f"{value:g}") for value in raw]
        else:
            labels = ["" if value is None else (f"{value:g}" if isinstance(value, float) else str(value)) for value in raw]
        numeric = {label: float(value) for label, value in zip(labels, raw)
                   if isinstance(value, (int, float)) and not isinstance(value, bool)}
        order = sorted(set(labels), key=lambda label: (label != "out", label not in numeric, numeric.get(label, 0.0),
                                                     _natural_key(label)))
        panels.append((key, order, [order.index(label) for label in labels]))
    return panels


def sweep_figure(summary: dict) -> Figure:
    """The sweep's metric against each swept key: one panel per key, a dot per variant (its CV), the best
    variant ringed, LB scores as diamonds, the nested pick's score as a dashed line; with seeds, a last panel of
    each seed's CV beside the seeds' mean."""
    rows = [row for row in summary["rows"] if row.get("cv") is not None]
    seed_rows = [row for row in summary.get("seed_rows") or [] if row.get("cv") is not None]
    if not rows:
        return _message_figure(f"sweep {summary['name']}: no scores", ["none of its variants has a CV yet"])
    summary = {**summary, "rows": rows}
    panels = _sweep_panels(summary)[:11]
    n_panels = len(panels) + bool(seed_rows)
    columns = min(3, n_panels)
    n_rows = math.ceil(n_panels / columns)
    fig = Figure(figsize=(4.2 * columns, 3.4 * n_rows + 0.6), layout="constrained")
    cv = np.array([row["cv"] for row in rows], dtype=float)
    lb = np.array([row.get("lb_public") if row.get("lb_public") is not None else np.nan for row in rows], dtype=float)
    best = [i for i, row in enumerate(rows) if row.get("selected")]
    nested = (summary.get("nested") or {}).get("score")
    limits = _zoomed_limits(np.concatenate([cv, lb[~np.isnan(lb)], [r["cv"] for r in seed_rows],
                                            [nested] if nested is not None else []]), floor_at_zero=False)
    jitter = (np.arange(len(rows)) % 7 - 3) * 0.035
    for index, (key, order, positions) in enumerate(panels):
        ax = fig.add_subplot(n_rows, columns, index + 1)
        x = np.asarray(positions, dtype=float) + jitter
        ax.scatter(x, cv, s=26, color="tab:blue", alpha=0.8, label="CV", zorder=3, gid=f"cv:{key}")
        if (~np.isnan(lb)).any():
            ax.scatter(x[~np.isnan(lb)], lb[~np.isnan(lb)], marker="D", s=22, color="tab:orange", label="public LB",
                       zorder=3)
        for i in best:
            ax.scatter([x[i]], [cv[i]], s=120, facecolors="none", edgecolors="tab:red", linewidths=1.5,
                       label=f"best of {summary['variants']} (optimistic)", zorder=4, gid=f"best:{key}")
        if nested is not None:
            ax.axhline(nested, color="tab:red", linestyle="--", linewidth=1, label="nested pick")
        _tick_labels(ax, order)
        ax.set_xlim(-0.6, len(order) - 0.4)
        ax.set_ylim(*limits)
        ax.set_title(f"member {key}" if key in summary["member_columns"] else key)
        if index % columns == 0:
            ax.set_ylabel(summary["metric"])
        if index == 0:
            ax.legend(loc="lower right", frameon=False, fontsize=8)
    if seed_rows:  # each seed's CV, per variant, and the variant's mean (what the ensembles use)
        ax = fig.add_subplot(n_rows, columns, len(panels) + 1)
        order = [str(seed) for seed in sorted({r["seed"] for r in seed_rows})] + ["mean"]
        variants = list(dict.fromkeys(r["variant"] for r in seed_rows))
        for number, variant in enumerate(variants):
            offset = (number - (len(variants) - 1) / 2) * 0.08
            own = [r for r in seed_rows if r["variant"] == variant]
            mean = next(row["cv"] for row in rows if row["variant"] == variant)
            ax.scatter([order.index(str(r["seed"])) + offset for r in own] + [len(order) - 1 + offset],
                       [r["cv"] for r in own] + [mean], s=26, alpha=0.8, label=variant if len(variants) > 1 else None,
                       zorder=3, gid=f"seeds:{variant}")
        _tick_labels(ax, order)
        ax.set_xlim(-0.6, len(order) - 0.4)
        ax.set_ylim(*limits)
        ax.set_title("seed")
        if len(panels) % columns == 0:
            ax.set_ylabel(summary["metric"])
        if 1 < len(variants) <= 8:
            ax.legend(loc="lower right", frameon=False, fontsize=7)
    fig.suptitle(f"sweep {summary['name']}: {summary['metric']} vs each swept key ({summary['variants']} variant"
                 f"{'s' if summary['variants'] != 1 else ''})")
    return fig


def leaderboard_html(board: pl.DataFrame) -> str:
    """The leaderboard as a self-contained HTML page (one table per kind), for the report to show inline."""
    titles = {"prior": "Prior baseline", "model": "Models", "fold": "Folds", "ensemble": "Ensembles",
              "submission": "Submissions", "retrieval": "Retrieval stages (valid fold; lift over zero-shot)"}
    parts = ["<!DOCTYPE html>", '<html><head><meta charset="utf-8"><title>Leaderboard: CV vs LB</title>',
             "<style>body{font-family:sans-serif;font-size:14px;margin:16px}table{border-collapse:collapse;"
             "margin-bottom:20px}th,td{border:1px solid #ccc;padding:3px 8px}td.num{text-align:right;"
             "font-variant-numeric:tabular-nums}th{background:#f2f2f2}</style></head><body>",
             "<h1>Leaderboard: CV vs LB</h1>"]
    if "beats_prior" in board.columns:
        flagged = board.filter(pl.col("beats_prior").cast(pl.String).str.to_lowercase() == "false")
        if flagged.height:
            parts.append("<p><b>Not better than the prior baseline</b> (learned nothing usable on the task metric): "
                         + html.escape(", ".join(f"{k} {n}" for k, n in flagged.select("kind", "name").iter_rows()))
                         + "</p>")
    if "cv_optimistic" in board.columns:
        from workflow_scripts.leaderboard import OPTIMISTIC_NOTE

        retrieval = ((pl.col("kind") == "retrieval") | pl.col("retrieval_stage").is_not_null()
                     if "retrieval_stage" in board.columns else pl.lit(False))
        optimistic = board.filter((pl.col("cv_optimistic").cast(pl.String).str.to_lowercase() == "true")
                                  & (pl.col("kind") != "fold") & ~retrieval)
        if optimistic.height:
            names = ", ".join(f"{k} {n}" for k, n in optimistic.select("kind", "name").iter_rows())
            parts.append("<p><b>Optimistic CV</b> " + html.escape(OPTIMISTIC_NOTE.removeprefix("**Optimistic CV** ") + names)
                         + "</p>")
    if "below_zero_shot" in board.columns:  # retrieval: a submission, or stages, ranking worse than zero-shot
        below = board.filter(pl.col("below_zero_shot").cast(pl.String).str.to_lowercase() == "true")
        for kind, name in below.filter(pl.col("kind") == "submission").select("kind", "name").iter_rows():
            parts.append(f"<p><b>WARNING</b>: submission {html.escape(name)} ranks with a stage below the "
                         "zero-shot embedder on the valid fold</p>")
        stages = below.filter(pl.col("kind") == "retrieval")["name"].to_list()
        if stages:
            parts.append("<p><b>Below the zero-shot embedder</b>: " + html.escape(", ".join(stages)) + "</p>")
        chosen = board.filter((pl.col("kind") == "retrieval")
                              & (pl.col("cv_optimistic").cast(pl.String).str.to_lowercase() == "true"))["name"].to_list()
        if chosen:
            parts.append("<p><b>Chosen on the valid fold</b> (optimistic): " + html.escape(", ".join(chosen)) + "</p>")
    kinds = [k for k in titles if k in set(board["kind"].to_list())]
    kinds += sorted(set(board["kind"].to_list()) - set(kinds))
    for kind in kinds:
        rows = board.filter(pl.col("kind") == kind).drop("kind", *[c for c in ("source",) if c in board.columns])
        columns = [c for c in rows.columns if c == "name" or rows[c].null_count() < rows.height]
        parts.append(f"<h2>{html.escape(titles.get(kind, kind))}</h2><table><tr>"
                     + "".join(f"<th>{html.escape(c)}</th>" for c in columns) + "</tr>")
        for record in rows.select(columns).iter_rows():
            cells = []
            for value in record:
                if isinstance(value, float) and not math.isnan(value):
                    cells.append(f'<td class="num">{value:.5f}</td>')
                else:
                    cells.append(f"<td>{'' if value is None else html.escape(str(value))}</td>")
            parts.append("<tr>" + "".join(cells) + "</tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def save_png(fig: Figure, path: str | Path) -> None:
    """Write a PNG atomically, without the matplotlib version stamp, so reruns are byte-identical."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise OoflineError(f"--out {path}: expected a .png file name")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, metadata={"Software": None})


# ---------------------------------------------------------------------------------------------- CLI

def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    cv_folds = commands.add_parser("cv-folds", help="per-fold CV per model")
    cv_folds.add_argument("--scores", nargs="+", required=True, help="results/scores/{model}.json files")
    ensembles = commands.add_parser("ensembles", help="ensemble comparison: in-sample vs out-of-sample")
    ensembles.add_argument("--scores", nargs="+", required=True, help="results/ensembles/{name}/score.json files")
    thresholds = commands.add_parser("thresholds", help="per-class F1 vs threshold with the chosen thresholds")
    thresholds.add_argument("--curves", required=True, help="results/thresholds/{ensemble}.curves.parquet")
    thresholds.add_argument("--thresholds", default=None,
                            help="results/thresholds/{ensemble}.json (optional: marks the chosen method)")
    thresholds.add_argument("--max-panels", type=int, default=36, help="plot at most this many classes")
    cv_lb = commands.add_parser("cv-lb", help="CV vs LB per submission")
    cv_lb.add_argument("--leaderboard", required=True, help="results/leaderboard.csv")
    sweep = commands.add_parser("sweep", help="a sweep's metric against each swept key")
    sweep.add_argument("--sweep", required=True, help="results/sweeps/{name}.json")
    table = commands.add_parser("leaderboard-html", help="the leaderboard as an HTML table for the report")
    table.add_argument("--leaderboard", required=True, help="results/leaderboard.csv")
    table.add_argument("--out", required=True, help="HTML file to write")
    for command in (cv_folds, ensembles, thresholds, cv_lb, sweep):
        command.add_argument("--out", required=True, help="PNG to write")
    args = parser.parse_args(argv)

    if args.command == "leaderboard-html":
        board = load_leaderboard(args.leaderboard)
        if Path(args.out).suffix.lower() not in {".html", ".htm"}:
            raise OoflineError(f"--out {args.out}: expected an .html file name")
        with atomic_path(args.out) as tmp:
            tmp.write_text(leaderboard_html(board))
        print(f"plots leaderboard-html: {board.height} rows -> {args.out}", flush=True)
        return

    with matplotlib.style.context(["default", STYLE]):
        if args.command == "cv-folds":
            fig = cv_folds_figure([load_model_scores(path) for path in args.scores])
            what = f"{len(args.scores)} model(s)"
        elif args.command == "ensembles":
            fig = ensembles_figure([load_ensemble_scores(path) for path in args.scores])
            what = f"{len(args.scores)} ensemble(s)"
        elif args.command == "thresholds":
            if args.max_panels < 1:
                raise OoflineError(f"--max-panels must be at least 1, got {args.max_panels}")
            curves = load_curves(args.curves)
            fig = thresholds_figure(curves, read_json(args.thresholds) if args.thresholds else None,
                                    args.max_panels)
            what = f"{curves['column'].n_unique()} class(es)"
        elif args.command == "sweep":
            summary = read_json(args.sweep)
            fig = sweep_figure(summary)
            what = f"{summary['variants']} variant(s)"
        else:
            board = load_leaderboard(args.leaderboard)
            fig = cv_lb_figure(board)
            n_lb = board.filter(pl.col("lb_public").is_not_null() | pl.col("lb_private").is_not_null()).height
            what = f"{n_lb} submission(s) with LB scores"
        save_png(fig, args.out)
    print(f"plots {args.command}: {what} -> {args.out}", flush=True)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
