"""Near-duplicate removal: MinHash LSH + exact confirmation (dedup.py) vs the brute-force all-pairs loop.

Prints the speed ratio (brute force time / dedup time) measured in this process, and checks both agree.
Usage: .venv/bin/python bench/dedup.py [n_reference n_generated]
"""
import random
import sys
import time

from workflow_scripts.generated.dedup import brute_force_reasons, deduplicate

# a 3,000-word vocabulary with a Zipf-like draw, so unrelated texts share few 5-shingles (as real narratives do)
_rng = random.Random(1)
WORDS = ["".join(_rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(_rng.randint(2, 9))) for _ in range(3000)]
_WEIGHTS = [1 / (i + 1) for i in range(len(WORDS))]


def sentence(rng, n=60):
    return " ".join(rng.choices(WORDS, weights=_WEIGHTS, k=n))


def edit(rng, text, k):
    words = text.split()
    for _ in range(k):
        words[rng.randrange(len(words))] = rng.choices(WORDS, weights=_WEIGHTS)[0]
    return " ".join(words)


def main():
    n_ref, n_gen = (int(sys.argv[1]), int(sys.argv[2])) if len(sys.argv) > 2 else (800, 800)
    rng = random.Random(0)
    reference = [sentence(rng) for _ in range(n_ref)]
    generated = []
    for _ in range(n_gen):
        r = rng.random()
        if r < 0.15:
            generated.append(edit(rng, rng.choice(reference), rng.choice([0, 2, 10])))
        elif r < 0.3 and generated:
            generated.append(edit(rng, rng.choice(generated), rng.choice([0, 2, 10])))
        else:
            generated.append(sentence(rng))
    start = time.perf_counter()
    fast, counts = deduplicate(generated, reference, 0.8)
    fast_s = time.perf_counter() - start
    start = time.perf_counter()
    slow = brute_force_reasons(generated, reference, 0.8)
    slow_s = time.perf_counter() - start
    agree = sum(a == b for a, b in zip(fast, slow))
    print(f"reference {n_ref}, generated {n_gen}: dedup {fast_s:.2f}s, brute force {slow_s:.2f}s, "
          f"speed-up x{slow_s / fast_s:.1f}; decisions agree on {agree}/{n_gen}; counts {counts}")


if __name__ == "__main__":
    main()
