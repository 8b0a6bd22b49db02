"""`kind: tfidf_linear`: TF-IDF n-grams + logistic regression per fold, on the CPU, saved without pickles.

Word and/or character n-grams (`word_ngrams`, `char_ngrams`, each [min, max] or null), `min_df`,
`max_features` (per analyzer), `sublinear_tf`; each analyzer's rows are L2-normalised and the blocks
stacked, as sklearn's FeatureUnion of two TfidfVectorizers does. The heads are linear_heads' logistic
regressions (multiclass, one-vs-rest multilabel, one per head). A fold's folder holds the vocabulary
(JSON), the idf weights and the coefficients (safetensors); its predictions are made from that folder
after it is written, so the files a user reads are what the saved model predicts.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from workflow_scripts.errors import OoflineError, run_cli
from workflow_scripts.io import read_table, write_inference_speed, write_parquet
from workflow_scripts.labels import LabelSpec
from workflow_scripts.linear_heads import fit_heads, fold_rows, load_heads, predict_heads, prediction_frame, save_heads
from workflow_scripts.metrics import aligned_targets

TFIDF_DEFAULTS = {"word_ngrams": [1, 2], "char_ngrams": None, "min_df": 1, "max_features": None,
                  "sublinear_tf": True, "C": 4.0, "max_iter": 1000, "seed": 42}
ANALYZERS = (("word", "word_ngrams"), ("char_wb", "char_ngrams"))
VOCABULARY_FILE = "vocabulary.json"
IDF_FILE = "idf.safetensors"


def tfidf_settings(model_config: dict[str, Any]) -> dict[str, Any]:
    """The model's TF-IDF / head settings with defaults filled; at least one analyzer must be on."""
    settings = {key: model_config.get(key, default) for key, default in TFIDF_DEFAULTS.items()}
    if not settings["word_ngrams"] and not settings["char_ngrams"]:
        raise OoflineError("models: a tfidf_linear model needs word_ngrams or char_ngrams (both are off)")
    for _, key in ANALYZERS:
        value = settings[key]
        if value is not None and (len(value) != 2 or not 1 <= value[0] <= value[1]):
            raise OoflineError(f"models: {key}: {value!r} must be [min, max] with 1 <= min <= max")
    return settings


def build_vectorizers(settings: dict[str, Any]) -> list[tuple[str, Any]]:
    """(analyzer, unfitted TfidfVectorizer) for each analyzer the settings turn on."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizers = []
    for analyzer, key in ANALYZERS:
        if settings[key]:
            vectorizers.append((analyzer, TfidfVectorizer(
                analyzer=analyzer, ngram_range=tuple(settings[key]), min_df=settings["min_df"],
                max_features=settings["max_features"], sublinear_tf=bool(settings["sublinear_tf"]),
                dtype=np.float32)))
    return vectorizers


def transform(vectorizers: list[tuple[str, Any]], texts: list[str]):
    """The stacked, per-analyzer L2-normalised TF-IDF matrix (n_rows, n_features), sparse CSR float32."""
    from scipy.sparse import hstack

    return hstack([vectorizer.transform(texts) for _, vectorizer in vectorizers]).tocsr()


def save_vectorizers(vectorizers: list[tuple[str, Any]], folder: Path) -> None:
    """Vocabulary (terms in column order, JSON) and idf weights (safetensors) per analyzer."""
    from safetensors.numpy import save_file

    vocabularies = {}
    for analyzer, vectorizer in vectorizers:
        terms = [""] * len(vectorizer.vocabulary_)
        for term, index in vectorizer.vocabulary_.items():
            terms[index] = term
        vocabularies[analyzer] = {"terms": terms, "ngram_range": list(vectorizer.ngram_range),
                                  "sublinear_tf": vectorizer.sublinear_tf}
    (folder / VOCABULARY_FILE).write_text(json.dumps(vocabularies, ensure_ascii=False) + "\n")
    save_file({analyzer: vectorizer.idf_.astype(np.float32) for analyzer, vectorizer in vectorizers},
              str(folder / IDF_FILE))


def load_vectorizers(folder: str | Path) -> list[tuple[str, Any]]:
    """Fitted TfidfVectorizers rebuilt from a fold folder's vocabulary and idf weights."""
    from safetensors.numpy import load_file
    from sklearn.feature_extraction.text import TfidfVectorizer

    folder = Path(folder)
    for name in (VOCABULARY_FILE, IDF_FILE):
        if not (folder / name).exists():
            raise OoflineError(f"{folder}: {name} is missing (expected a tfidf_linear fold folder)")
    vocabularies = json.loads((folder / VOCABULARY_FILE).read_text())
    idf = load_file(str(folder / IDF_FILE))
    vectorizers = []
    for analyzer, saved in vocabularies.items():
        vectorizer = TfidfVectorizer(analyzer=analyzer, ngram_range=tuple(saved["ngram_range"]),
                                     sublinear_tf=saved["sublinear_tf"], dtype=np.float32,
                                     vocabulary={term: index for index, term in enumerate(saved["terms"])})
        vectorizer.idf_ = idf[analyzer].astype(np.float64)
        vectorizers.append((analyzer, vectorizer))
    return vectorizers


def fit_fold(spec: LabelSpec, texts: list[str], targets: np.ndarray, settings: dict[str, Any], folder: str | Path
             ) -> None:
    """Fit the vectorizers and heads on the training rows and write them to `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vectorizers = build_vectorizers(settings)
    for _, vectorizer in vectorizers:
        vectorizer.fit(texts)
    features = transform(vectorizers, texts)
    heads = fit_heads(spec, features, targets, c=float(settings["C"]), max_iter=int(settings["max_iter"]),
                      seed=int(settings["seed"]))
    save_vectorizers(vectorizers, folder)
    save_heads(heads, folder, {"kind": "tfidf_linear", "settings": settings, "n_features": int(features.shape[1]),
                               "n_training_rows": len(texts)})


def predict_saved(spec: LabelSpec, folder: str | Path, texts: list[str]) -> np.ndarray:
    """Probabilities (n_rows, n_columns) float32 from a saved fold folder."""
    heads, _ = load_heads(folder)
    return predict_heads(spec, heads, transform(load_vectorizers(folder), texts))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", required=True, help="clean training data (id, text)")
    parser.add_argument("--test", required=True, help="clean test data (id, text)")
    parser.add_argument("--folds", required=True)
    parser.add_argument("--targets", required=True)
    parser.add_argument("--labels", required=True)
    parser.add_argument("--fold", type=int, required=True)
    parser.add_argument("--model-config", required=True, help="the model's config entry as JSON")
    parser.add_argument("--model-out", required=True, help="fold folder: vocabulary, idf, coefficients")
    parser.add_argument("--valid-out", required=True)
    parser.add_argument("--test-out", required=True)
    args = parser.parse_args(argv)
    started = time.time()
    spec = LabelSpec.load(args.labels)
    settings = tfidf_settings(json.loads(args.model_config))
    train, test, folds = read_table(args.train), read_table(args.test), read_table(args.folds)
    targets = aligned_targets(train, args.targets, spec)
    training, held_out = fold_rows(folds, train["id"].to_list(), args.fold)
    texts = train["text"].to_list()
    fit_fold(spec, [t for t, keep in zip(texts, training) if keep], targets[training], settings, args.model_out)
    print(f"tfidf_linear fold {args.fold}: fitted on {int(training.sum())} rows in {time.time() - started:.1f}s",
          flush=True)
    valid_ids = [i for i, keep in zip(train["id"].to_list(), held_out) if keep]
    valid_probs = predict_saved(spec, args.model_out, [t for t, keep in zip(texts, held_out) if keep])
    write_parquet(prediction_frame(valid_ids, valid_probs, spec, args.fold), args.valid_out)
    predicting, predicting_cpu = time.time(), time.process_time()
    test_probs = predict_saved(spec, args.model_out, test["text"].to_list())
    write_parquet(prediction_frame(test["id"].to_list(), test_probs, spec, None), args.test_out)
    # loading the vocabulary and heads is part of predict_saved: the whole pass counts as prediction
    write_inference_speed(args.test_out, {"rows": test.height, "seconds": round(time.time() - predicting, 4),
                                          "cpu_seconds": round(time.process_time() - predicting_cpu, 4),
                                          "load_seconds": 0.0, "device": "cpu", "threads": 1})
    print(f"tfidf_linear fold {args.fold}: {len(valid_ids)} held-out and {test.height} test rows predicted "
          f"({time.time() - started:.1f}s in all)", flush=True)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
