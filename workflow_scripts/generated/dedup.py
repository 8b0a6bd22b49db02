"""Keep the generated rows that parsed and are neither exact nor near duplicates of training rows or of each other.

Method (reported in the sidecar json):
- exact: SHA-1 of the normalised text (Unicode NFKC, lower case, runs of non-alphanumerics collapsed to one space).
- near: Jaccard similarity of the sets of 5-byte shingles of the UTF-8 normalised text (character 5-grams for
  ASCII text; each shingle kept exactly as a 40-bit integer, so no hash collisions) >= `threshold` (0.8 by
  default). Candidate pairs come from MinHash LSH (128 hashes in 32 bands of 4; a pair at Jaccard 0.8 becomes a
  candidate with probability 1 - 5e-8) and every candidate is confirmed with the exact Jaccard, so no pair below the
  threshold is ever removed.
Within the generated file the earliest row is kept; rows matching a reference (training) row are removed.
"""
from __future__ import annotations

import argparse
import hashlib
import re
import unicodedata
from collections import defaultdict
from typing import Sequence

import numpy as np
import polars as pl

from workflow_scripts.errors import OoflineError, run_cli
from workflow_scripts.io import read_table, write_json, write_parquet

SHINGLE = 5
NUM_HASHES = 128
BANDS = 32
_NON_ALNUM = re.compile(r"[\W_]+", re.UNICODE)


def normalise(text: str) -> str:
    """Text as compared for duplicates: NFKC, lower case, punctuation and whitespace runs -> one space."""
    return _NON_ALNUM.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


def text_hash(text: str) -> str:
    return hashlib.sha1(normalise(text).encode("utf-8")).hexdigest()


def shingles(text: str, size: int = SHINGLE) -> frozenset[int]:
    """Set of the `size`-byte windows of the UTF-8 normalised text, each packed into one integer (whole text if shorter)."""
    data = np.frombuffer(normalise(text).encode("utf-8"), dtype=np.uint8).astype(np.uint64)
    if len(data) <= size:
        return frozenset({int.from_bytes(data.astype(np.uint8).tobytes() or b"\0", "big") | (1 << 48)})
    packed = np.zeros(len(data) - size + 1, dtype=np.uint64)
    for k in range(size):
        packed = (packed << np.uint64(8)) | data[k : len(data) - size + 1 + k]
    return frozenset(np.unique(packed).tolist())


def jaccard(a: frozenset[int], b: frozenset[int]) -> float:
    union = len(a | b)
    return len(a & b) / union if union else 1.0


def _signatures(sets: list[frozenset[int]], seed: int = 0, chunk: int = 256) -> np.ndarray:
    """MinHash signatures, (n_sets, NUM_HASHES) uint32, from fixed-seed multiply-shift hashes (deterministic)."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2**63, NUM_HASHES, dtype=np.uint64) * np.uint64(2) + np.uint64(1)  # odd multipliers
    b = rng.integers(0, 2**63, NUM_HASHES, dtype=np.uint64)
    out = np.empty((len(sets), NUM_HASHES), dtype=np.uint32)
    for first in range(0, len(sets), chunk):
        group = sets[first : first + chunk]
        sizes = np.array([len(items) for items in group])
        values = np.fromiter((x for items in group for x in items), dtype=np.uint64, count=int(sizes.sum()))
        # h(x) = high 32 bits of (a*x + b) mod 2**64 (uint64 arithmetic wraps): a universal family, no slow modulo
        hashed = ((values[:, None] * a + b) >> np.uint64(32)).astype(np.uint32)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        out[first : first + len(group)] = np.minimum.reduceat(hashed, starts, axis=0)
    return out


def near_duplicate_pairs(sets: list[frozenset[int]], threshold: float) -> set[tuple[int, int]]:
    """All pairs (i < j) with Jaccard >= threshold, found by LSH banding and confirmed exactly."""
    signatures = _signatures(sets)
    rows_per_band = NUM_HASHES // BANDS
    candidates: set[tuple[int, int]] = set()
    for band in range(BANDS):
        buckets: dict[bytes, list[int]] = defaultdict(list)
        block = signatures[:, band * rows_per_band : (band + 1) * rows_per_band]
        for i in range(len(sets)):
            buckets[block[i].tobytes()].append(i)
        for members in buckets.values():
            for x in range(len(members)):
                for y in range(x + 1, len(members)):
                    candidates.add((members[x], members[y]))
    return {(i, j) for i, j in candidates if jaccard(sets[i], sets[j]) >= threshold}


def deduplicate(
    generated: Sequence[str], reference: Sequence[str], threshold: float = 0.8
) -> tuple[list[str], dict[str, int]]:
    """Decide for each generated text: 'keep', 'exact_reference', 'exact_self', 'near_reference' or 'near_self'.

    Returns one reason per generated text and the counts of each reason.
    """
    if not 0.0 < threshold <= 1.0:
        raise OoflineError(f"dedup: threshold must be in (0, 1]; got {threshold}")
    reasons = ["keep"] * len(generated)
    reference_hashes = {text_hash(t) for t in reference}
    seen: set[str] = set()
    for i, text in enumerate(generated):
        digest = text_hash(text)
        if digest in reference_hashes:
            reasons[i] = "exact_reference"
        elif digest in seen:
            reasons[i] = "exact_self"
        seen.add(digest)

    survivors = [i for i, r in enumerate(reasons) if r == "keep"]
    n_ref = len(reference)
    sets = [shingles(t) for t in reference] + [shingles(generated[i]) for i in survivors]
    neighbours: dict[int, list[int]] = defaultdict(list)
    for i, j in near_duplicate_pairs(sets, threshold):
        neighbours[j].append(i)  # i < j: the earlier row (reference rows come first)
    kept: set[int] = set()
    for position, row in enumerate(survivors):
        node = n_ref + position
        earlier = neighbours.get(node, [])
        if any(e < n_ref for e in earlier):
            reasons[row] = "near_reference"
        elif any(e in kept for e in earlier):
            reasons[row] = "near_self"
        else:
            kept.add(node)
    counts = {name: reasons.count(name) for name in ("keep", "exact_reference", "exact_self", "near_reference", "near_self")}
    return reasons, counts


def brute_force_reasons(generated: Sequence[str], reference: Sequence[str], threshold: float) -> list[str]:
    """What `deduplicate` decides, as the plain O(n^2) greedy loop that defines it (the reference the tests
    and bench/dedup.py compare the MinHash path with)."""
    reference_sets = [shingles(t) for t in reference]
    reference_hashes = {text_hash(t) for t in reference}
    kept_sets, seen_hashes, reasons = [], set(), []
    for text in generated:
        h, s = text_hash(text), shingles(text)
        if h in reference_hashes:
            reasons.append("exact_reference")
        elif h in seen_hashes:
            reasons.append("exact_self")
        elif any(jaccard(s, r) >= threshold for r in reference_sets):
            reasons.append("near_reference")
        elif any(jaccard(s, k) >= threshold for k in kept_sets):
            reasons.append("near_self")
        else:
            reasons.append("keep")
            kept_sets.append(s)
        seen_hashes.add(h)
    return reasons


def joined_text(frame: pl.DataFrame, columns: Sequence[str], source: str) -> list[str]:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise OoflineError(f"{source}: text column(s) {missing} missing (has {frame.columns})")
    return frame.select(pl.concat_str([pl.col(c).cast(pl.String).fill_null("") for c in columns], separator="\n")).to_series().to_list()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Drop unparsed rows and exact/near duplicates from generated data.")
    parser.add_argument("--generated", required=True, help="raw generation parquet (from generate.py; has parse_error)")
    parser.add_argument("--reference", nargs="*", default=[], help="training files (and any other files) to dedup against")
    parser.add_argument("--text-columns", nargs="+", required=True, help="columns compared (joined by newlines)")
    parser.add_argument("--threshold", type=float, default=0.8, help="near-duplicate Jaccard threshold on char 5-shingles")
    parser.add_argument("--output", required=True, help="parquet of kept rows (parse columns removed)")
    parser.add_argument("--report", required=True, help="json with counts per reason and the method")
    args = parser.parse_args(argv)

    raw = read_table(args.generated)
    parsed = raw.filter(pl.col("parse_error").is_null()) if "parse_error" in raw.columns else raw
    n_unparsed = raw.height - parsed.height
    reference: list[str] = []
    for path in args.reference:
        reference += joined_text(read_table(path), args.text_columns, str(path))
    print(f"dedup: {parsed.height} parsed rows ({n_unparsed} unparsed) against {len(reference)} reference rows", flush=True)
    reasons, counts = deduplicate(joined_text(parsed, args.text_columns, args.generated), reference, args.threshold)
    kept = parsed.filter(pl.Series([r == "keep" for r in reasons], dtype=pl.Boolean))
    kept = kept.drop([c for c in ("parse_error", "raw_text") if c in kept.columns])
    if kept.height == 0:
        raise OoflineError(f"dedup: no row of {args.generated} survives (counts: {counts}, unparsed: {n_unparsed})")
    report = {
        "input_rows": raw.height,
        "unparsed": n_unparsed,
        "removed": {k: v for k, v in counts.items() if k != "keep"},
        "kept": counts["keep"],
        "method": {
            "exact": "sha1 of NFKC-lowercased text with non-alphanumeric runs collapsed",
            "near": f"Jaccard of {SHINGLE}-byte shingle sets >= {args.threshold}; MinHash LSH "
            f"({NUM_HASHES} hashes, {BANDS} bands) candidates confirmed by exact Jaccard",
            "text_columns": list(args.text_columns),
            "reference_files": list(args.reference),
        },
    }
    write_parquet(kept, args.output)
    write_json(report, args.report)
    print(f"dedup: kept {counts['keep']} rows; removed {report['removed']}", flush=True)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
