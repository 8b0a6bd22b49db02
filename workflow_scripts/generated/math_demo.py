"""A deterministic set of arithmetic word problems with known integer answers (no math data ships on PyPI).

Output columns: `id` (`math-000`...), `problem`, `answer` (Int64), `kind`; with --test an unlabelled set
(`test-000`..., no `answer`) for a vote submission. Same seed and n -> byte-identical file.
"""
from __future__ import annotations

import argparse
from typing import Callable, Sequence

import numpy as np
import polars as pl

from workflow_scripts.errors import OoflineError, run_cli
from workflow_scripts.io import write_parquet

NAMES = ["Ana", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hugo", "Iris", "Jon"]
ITEMS = ["apples", "marbles", "stickers", "pencils", "cookies", "stamps", "books", "shells"]


def _add_small(rng) -> tuple[str, int]:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = int(rng.integers(1, 10)), int(rng.integers(1, 10))
    return f"{name} has {a} {item} and finds {b} more. How many {item} does {name} have?", a + b


def _add_sub(rng) -> tuple[str, int]:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = int(rng.integers(5, 60)), int(rng.integers(2, 40))
    c = int(rng.integers(1, a + b))
    return f"{name} has {a} {item}. {name} gets {b} more and then gives away {c}. How many {item} does {name} have now?", a + b - c


def _multiply(rng) -> tuple[str, int]:
    item = rng.choice(ITEMS)
    boxes, each = int(rng.integers(2, 13)), int(rng.integers(2, 25))
    return f"There are {boxes} boxes with {each} {item} in each box. How many {item} are there in total?", boxes * each


def _divide(rng) -> tuple[str, int]:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    friends, each = int(rng.integers(2, 10)), int(rng.integers(2, 15))
    return (f"{name} shares {friends * each} {item} equally among {friends} friends. "
            f"How many {item} does each friend get?", each)


def _two_step(rng) -> tuple[str, int]:
    name = rng.choice(NAMES)
    price, count, paid = int(rng.integers(2, 12)), int(rng.integers(2, 8)), 0
    paid = price * count + int(rng.integers(0, 30))
    return (f"{name} buys {count} notebooks that cost {price} dollars each and pays with {paid} dollars. "
            f"How much change, in dollars, does {name} get?", paid - price * count)


def _age(rng) -> tuple[str, int]:
    a, b = rng.choice(NAMES, size=2, replace=False)
    age, gap, years = int(rng.integers(4, 30)), int(rng.integers(1, 20)), int(rng.integers(1, 15))
    return f"{a} is {age} years old. {b} is {gap} years older than {a}. How old will {b} be in {years} years?", age + gap + years


KINDS: dict[str, Callable] = {"add_small": _add_small, "add_sub": _add_sub, "multiply": _multiply, "divide": _divide,
                              "two_step": _two_step, "age": _age}


def make_problems(n: int = 40, seed: int = 0, id_prefix: str = "math") -> pl.DataFrame:
    """n problems cycling through the kinds; numbers drawn from numpy's PCG64 with `seed`."""
    if n < 1:
        raise OoflineError(f"math_demo: n must be >= 1; got {n}")
    rng = np.random.default_rng(seed)
    kinds = list(KINDS)
    rows = {"id": [], "problem": [], "answer": [], "kind": []}
    for i in range(n):
        kind = kinds[i % len(kinds)]
        problem, answer = KINDS[kind](rng)
        rows["id"].append(f"{id_prefix}-{i:03d}")
        rows["problem"].append(problem)
        rows["answer"].append(answer)
        rows["kind"].append(kind)
    return pl.DataFrame(rows, schema={"id": pl.String, "problem": pl.String, "answer": pl.Int64, "kind": pl.String})


def with_solutions(problems: pl.DataFrame) -> pl.DataFrame:
    """A worked `solution` per problem that ends the way the cot_boxed prompt asks: `\\boxed{answer}`."""
    solutions = [f"Working through the numbers step by step, the answer is \\boxed{{{answer}}}."
                 for answer in problems["answer"].to_list()]
    return problems.with_columns(pl.Series("solution", solutions, dtype=pl.String))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a deterministic arithmetic word-problem set.")
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test", action="store_true",
                        help="an unlabelled test set: ids `test-NNN`, no answer column")
    parser.add_argument("--solutions", action="store_true",
                        help="fine-tuning rows: ids `sft-NNN` and a `solution` ending in \\boxed{answer}")
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    frame = make_problems(args.n, args.seed, "test" if args.test else "sft" if args.solutions else "math")
    if args.test:
        frame = frame.drop("answer")
    if args.solutions:
        frame = with_solutions(frame)
    write_parquet(frame, args.output)
    print(f"math_demo: {frame.height} problems -> {args.output}", flush=True)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
