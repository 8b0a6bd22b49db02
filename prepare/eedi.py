"""Eedi - Mining Misconceptions in Mathematics: the competition's wide files -> retrieval rows (data.prepare).

train.csv / test.csv hold one row per question: QuestionId, ConstructName, SubjectName, CorrectAnswer (a letter),
QuestionText, AnswerAText ... AnswerDText, and in train MisconceptionAId ... MisconceptionDId. A query is one
wrong answer of a question (id `QuestionId_Letter`, the submission's QuestionId_Answer); train keeps the wrong
answers whose misconception is known (its id is the query's positive). misconception_mapping.csv
(MisconceptionId, MisconceptionName) is the corpus. oofline reads a csv with every column as text.

The query text (oofline's choice: the write-up does not show its own) names the construct, the subject, the
question, the correct answer and the wrong one.
"""
from __future__ import annotations

import polars as pl

LETTERS = ("A", "B", "C", "D")


def query_text(row: dict, letter: str) -> str:
    correct = row["Answer" + str(row["CorrectAnswer"]).strip() + "Text"]
    wrong = row["Answer" + letter + "Text"]
    return (f"Construct: {row['ConstructName']}\nSubject: {row['SubjectName']}\nQuestion: {row['QuestionText']}\n"
            f"Correct answer: {correct}\nStudent's answer: {wrong}")


def queries_from_wide(frame: pl.DataFrame, split: str) -> pl.DataFrame:
    """train/test: one row per wrong answer (id, query; positive_ids in train); corpus: id, text."""
    if split == "corpus":
        return frame.select(pl.col("MisconceptionId").cast(pl.String).str.strip_chars().alias("id"),
                            pl.col("MisconceptionName").alias("text"))
    rows = {"id": [], "query": [], "positive_ids": []}
    for row in frame.iter_rows(named=True):
        correct = str(row["CorrectAnswer"]).strip()
        for letter in LETTERS:
            if letter == correct:
                continue
            misconception = row.get(f"Misconception{letter}Id")
            known = misconception is not None and str(misconception).strip() not in ("", "nan", "NaN")
            if split == "train" and not known:
                continue  # a wrong answer with no labelled misconception teaches nothing
            rows["id"].append(f"{row['QuestionId']}_{letter}")
            rows["query"].append(query_text(row, letter))
            # misconception ids may be written as floats in the competition's csv (1672.0)
            rows["positive_ids"].append([str(int(float(misconception)))] if known else [])
    out = pl.DataFrame(rows, schema={"id": pl.String, "query": pl.String, "positive_ids": pl.List(pl.String)})
    return out if split == "train" else out.drop("positive_ids")
