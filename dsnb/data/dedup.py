"""De-duplication: exact (normalised hash) and near-duplicate (MinHash with LSH, via ``datasketch``).

- ``normalize`` folds case, Unicode compatibility forms and whitespace, so texts that differ only in
  those count as the same; ``exact_duplicates`` hashes the normalised text.
- ``near_duplicates`` shingles each text into word n-grams, builds a MinHash signature per text and
  queries an LSH index for candidates above a Jaccard ``threshold``: the cost grows about linearly
  with the number of texts, not quadratically.
- ``deduplicate`` runs both and reports what it removed, which earlier row each removed row
  duplicates, and the duplicate rate before and after (the article's target: below 5%).

The duplicate rate is the share of rows that repeat (exactly or nearly) an earlier row: removing
them is what it would take to make the set duplicate-free. Taught in notebook 02.
"""

from __future__ import annotations

import hashlib
import logging
import re
import unicodedata
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from dsnb.data import missing_extra
from dsnb.data.words import words as split_words

try:
    from datasketch import MinHash, MinHashLSH
except ModuleNotFoundError as exc:  # dsnb's 'data' extra
    raise missing_extra(exc) from exc

logger = logging.getLogger(__name__)

_WS = re.compile(r"\s+")


def normalize(text: str) -> str:
    """NFKC, lower case, runs of whitespace collapsed to one space, stripped (notebook 02)."""
    return _WS.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


def text_hash(text: str) -> str:
    """SHA-1 of the normalised text: equal for texts that differ only in case or spacing."""
    return hashlib.sha1(normalize(text).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Duplicate:
    """Row ``index`` was removed because it duplicates the kept row ``of`` (``kind``: exact or near)."""

    index: int
    of: int
    kind: str
    similarity: float


@dataclass
class DedupResult:
    """Rows kept (indices into the input), rows removed with the row each duplicates, and the rates."""

    n_in: int
    kept: list[int]
    removed: list[Duplicate] = field(default_factory=list)
    rate_after: float | None = None

    @property
    def rate_before(self) -> float:
        """Share of input rows that duplicate an earlier row."""
        return len(self.removed) / self.n_in if self.n_in else 0.0

    def clusters(self) -> dict[int, list[int]]:
        """Kept row -> the rows removed as its duplicates (a removed row's chain is followed to the root)."""
        parent = {d.index: d.of for d in self.removed}
        out: dict[int, list[int]] = defaultdict(list)
        for d in self.removed:
            root = d.of
            while root in parent:
                root = parent[root]
            out[root].append(d.index)
        return dict(out)

    def removed_by_kind(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for d in self.removed:
            counts[d.kind] += 1
        return dict(counts)


def exact_duplicates(texts: list[str]) -> DedupResult:
    """Keep the first of each group of texts with the same normalised hash (notebook 02)."""
    first: dict[str, int] = {}
    kept, removed = [], []
    for i, t in enumerate(texts):
        h = text_hash(t)
        if h in first:
            removed.append(Duplicate(i, first[h], "exact", 1.0))
        else:
            first[h] = i
            kept.append(i)
    return DedupResult(len(texts), kept, removed)


def shingles(text: str, n: int = 3) -> set[str]:
    """Word n-grams of the normalised text (a text shorter than n words is one shingle)."""
    words = split_words(normalize(text), punctuation=False)
    if len(words) <= n:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: str, b: str, n: int = 3) -> float:
    """Exact Jaccard similarity of two texts' shingle sets (what MinHash estimates)."""
    sa, sb = shingles(a, n), shingles(b, n)
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0


def minhashes(texts: list[str], *, num_perm: int = 128, ngram: int = 3, seed: int = 1) -> list[MinHash]:
    """One MinHash signature per text over its word n-gram shingles (``datasketch.MinHash.bulk``)."""
    sets = [[s.encode("utf-8") for s in sorted(shingles(t, ngram))] for t in texts]
    return MinHash.bulk(sets, num_perm=num_perm, seed=seed)


def near_duplicates(
    texts: list[str],
    *,
    threshold: float = 0.8,
    num_perm: int = 128,
    ngram: int = 3,
    seed: int = 1,
    candidates: list[int] | None = None,
) -> DedupResult:
    """Keep the first of each group of texts whose shingle Jaccard similarity is >= ``threshold``.

    Candidates come from MinHash LSH; each candidate pair is confirmed with the MinHash estimate.
    ``candidates`` restricts the pass to those row indices (e.g. the survivors of exact dedup);
    indices in the result refer to ``texts``. Taught in notebook 02.
    """
    rows = list(range(len(texts))) if candidates is None else list(candidates)
    sigs = minhashes([texts[i] for i in rows], num_perm=num_perm, ngram=ngram, seed=seed)
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    kept, removed = [], []
    for pos, (row, sig) in enumerate(zip(rows, sigs, strict=True)):
        best, best_sim = None, 0.0
        for other_row, other_pos in lsh.query(sig):
            sim = sig.jaccard(sigs[other_pos])
            if sim >= threshold and (sim > best_sim or (sim == best_sim and other_row < best)):
                best, best_sim = other_row, sim
        if best is None:
            lsh.insert((row, pos), sig)
            kept.append(row)
        else:
            removed.append(Duplicate(row, best, "near", round(float(best_sim), 4)))
    return DedupResult(len(rows), kept, removed)


def deduplicate(
    texts: list[str], *, threshold: float = 0.8, num_perm: int = 128, ngram: int = 3, seed: int = 1
) -> DedupResult:
    """Exact then near-duplicate removal, with the duplicate rate before and after (notebook 02).

    ``rate_after`` is measured again from scratch on the kept rows, so it checks the result rather
    than assuming it.
    """
    exact = exact_duplicates(texts)
    near = near_duplicates(texts, threshold=threshold, num_perm=num_perm, ngram=ngram, seed=seed,
                           candidates=exact.kept)
    result = DedupResult(len(texts), near.kept, sorted(exact.removed + near.removed, key=lambda d: d.index))
    kept_texts = [texts[i] for i in result.kept]
    recheck_exact = exact_duplicates(kept_texts)
    recheck = near_duplicates(kept_texts, threshold=threshold, num_perm=num_perm, ngram=ngram, seed=seed + 1,
                              candidates=recheck_exact.kept)
    result.rate_after = (len(recheck_exact.removed) + len(recheck.removed)) / max(len(kept_texts), 1)
    logger.info("dedup: %d in, %d exact and %d near duplicates removed, rate %.2f%% -> %.2f%%",
                len(texts), len(exact.removed), len(near.removed), 100 * result.rate_before,
                100 * result.rate_after)
    return result


def duplicate_rate(texts: list[str], *, threshold: float = 0.8, near: bool = True) -> float:
    """Share of rows that repeat an earlier row, exactly or (with ``near``) nearly (notebook 02)."""
    exact = exact_duplicates(texts)
    if not near:
        return exact.rate_before
    nd = near_duplicates(texts, threshold=threshold, candidates=exact.kept)
    return (len(exact.removed) + len(nd.removed)) / max(len(texts), 1)


def cluster_sizes(result: DedupResult) -> np.ndarray:
    """Sizes (kept row + its duplicates) of every duplicate cluster, for the histogram in notebook 02."""
    return np.array(sorted((1 + len(v) for v in result.clusters().values()), reverse=True), dtype=int)
