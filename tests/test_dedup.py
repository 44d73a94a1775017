"""Exact and near-duplicate removal with known duplicate rates (dsnb.data.dedup)."""

from __future__ import annotations

import json
from pathlib import Path

from dsnb.data import dedup

SAMPLES = Path(__file__).parent.parent / "data_samples"


def _dup_sample() -> list[str]:
    return [json.loads(line)["text"] for line in (SAMPLES / "duplicates.jsonl").read_text().splitlines()]


def test_normalize_folds_case_width_and_space():
    assert dedup.normalize("  Hello\t\nＷorld ") == "hello world"
    assert dedup.text_hash("A  b") == dedup.text_hash("a b")


def test_exact_duplicates_known_rate():
    texts = ["a b c", "A  B C", "d e f", "a b c", "g"]
    r = dedup.exact_duplicates(texts)
    assert r.kept == [0, 2, 4]
    assert [(d.index, d.of) for d in r.removed] == [(1, 0), (3, 0)]
    assert r.rate_before == 0.4


def test_sample_file_has_known_duplicate_rate():
    texts = _dup_sample()
    r = dedup.deduplicate(texts)
    # rows 2 and 5 repeat row 1 after normalisation; row 6 is row 3 plus one word (Jaccard 12/13)
    assert [(d.index, d.of, d.kind) for d in r.removed] == [(1, 0, "exact"), (4, 0, "exact"), (5, 2, "near")]
    assert r.rate_before == 3 / 8
    assert r.rate_after == 0.0
    assert r.clusters() == {0: [1, 4], 2: [5]}
    assert list(dedup.cluster_sizes(r)) == [3, 2]
    assert dedup.duplicate_rate(texts) == 3 / 8
    assert dedup.duplicate_rate(texts, near=False) == 2 / 8


def test_minhash_estimates_jaccard():
    a = " ".join(f"w{i}" for i in range(200))
    b = " ".join(f"w{i}" for i in range(20, 220))
    exact = dedup.jaccard(a, b)
    est = dedup.minhashes([a, b], num_perm=256)
    assert abs(est[0].jaccard(est[1]) - exact) < 0.08


def test_threshold_separates_near_from_different():
    base = "the quick brown fox jumps over the lazy dog near the river bank today"
    texts = [base, base + " again", "completely unrelated sentence about parsing json files quickly"]
    r = dedup.near_duplicates(texts, threshold=0.8)
    assert r.kept == [0, 2] and r.removed[0].of == 0
    assert dedup.near_duplicates(texts, threshold=0.95).kept == [0, 1, 2]


def test_deterministic():
    texts = _dup_sample() * 3
    assert dedup.deduplicate(texts).kept == dedup.deduplicate(texts).kept
