"""UNLP 2025 manipulation techniques: the competition's list-of-techniques column -> one 0/1 column per technique
(data.prepare).

train.parquet holds `id`, `content`, `lang`, `manipulative` and `techniques`: a list of the technique names a
post uses (null or empty when it uses none). The task (recipes/unlp.yaml) is multilabel over ten columns, one per
technique; the test file has no techniques and passes through unchanged.
"""
from __future__ import annotations

import polars as pl

TECHNIQUES = ("straw_man", "appeal_to_fear", "fud", "bandwagon", "whataboutism", "loaded_language",
              "glittering_generalities", "euphoria", "cherry_picking", "cliche")


def techniques_to_columns(frame: pl.DataFrame, split: str) -> pl.DataFrame:
    if split != "train":
        return frame
    techniques = frame["techniques"]
    if techniques.dtype == pl.String:  # a csv copy writes the list as text: "['fud', 'euphoria']"
        techniques = techniques.str.extract_all(r"[a-z_]+")
    techniques = techniques.fill_null([])
    unknown = sorted(set(techniques.explode().drop_nulls().to_list()) - set(TECHNIQUES))
    if unknown:
        raise ValueError(f"unknown techniques {unknown[:5]} (expected {list(TECHNIQUES)})")
    return frame.drop("techniques").with_columns(
        techniques.list.contains(name).cast(pl.Int64).alias(name) for name in TECHNIQUES)
