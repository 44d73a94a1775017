"""Lexical analysis of technical text: tokens, type/token ratio, lengths and technical entities.

- ``tokenize`` splits text into words, dotted names, numbers and punctuation with nltk's
  ``RegexpTokenizer`` (no downloaded data needed). Dotted names (``os.path.join``) and versions
  (``3.11.2``) stay one token, which is what a reader of technical prose sees as one word.
- ``type_token_ratio`` (distinct tokens / tokens) and its length-robust moving average ``mattr``.
- ``length_stats``: characters and tokens per text, with percentiles.
- ``find_entities``: technical entities, found by patterns tried in priority order so that no two
  overlap: URLs, versions, file paths, exception names, module paths, identifiers (snake_case,
  CamelCase, dunder, calls), and numbers (ints, floats, hex).

Taught in notebook 02.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import numpy as np

from dsnb.data import missing_extra

try:
    from nltk.tokenize import RegexpTokenizer
except ModuleNotFoundError as exc:  # dsnb's 'data' extra
    raise missing_extra(exc) from exc

TOKEN_PATTERN = r"[A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)*|\d+(?:\.\d+)*|\S"
_TOKENIZER = RegexpTokenizer(TOKEN_PATTERN)

#: (kind, pattern) in priority order: an earlier kind wins where two would overlap.
ENTITY_PATTERNS: list[tuple[str, re.Pattern]] = [
    ("url", re.compile(r"\b(?:https?|ftp)://[^\s<>\"')\]]+[^\s<>\"')\].,;:]")),
    ("version", re.compile(r"(?<![\w.])(?:v|version\s+|python\s*)?\d+\.\d+(?:\.\d+)+(?:[ab]|rc\d+)?(?![\w.])"
                           r"|(?i:\b(?:version|python|py)\s*)\d+\.\d+\b", re.I)),
    ("file_path", re.compile(r"(?<![\w/])(?:\.{0,2}/)?(?:[\w.-]+/)+[\w.-]+\.\w+\b|\b[\w-]+\.(?:py|txt|cfg|ini|json"
                             r"|toml|c|h|so|pyc|csv|xml|html)\b")),
    ("exception", re.compile(r"\b[A-Z]\w*(?:Error|Exception|Warning|Exit|Interrupt)\b")),
    ("module_path", re.compile(r"\b[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+(?:\(\))?")),
    ("identifier", re.compile(r"\b__\w+__\b|\b[a-z]\w*_\w+\b|\b[a-z]+[A-Z]\w*\b|\b[A-Z][a-z0-9]+[A-Z]\w*\b"
                              r"|\b[A-Za-z_]\w*\(\)")),
    ("number", re.compile(r"(?<![\w.])-?(?:0[xX][0-9a-fA-F]+|\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)(?![\w.])")),
]
ENTITY_KINDS = tuple(k for k, _ in ENTITY_PATTERNS)


def tokenize(text: str) -> list[str]:
    """Words, dotted names, numbers/versions and single punctuation marks (notebook 02)."""
    return _TOKENIZER.tokenize(text)


def type_token_ratio(tokens: list[str]) -> float:
    """Distinct tokens divided by tokens (1.0 when every token is new; falls as text grows)."""
    return len(set(tokens)) / len(tokens) if tokens else 0.0


def mattr(tokens: list[str], window: int = 500) -> float:
    """Moving-average type/token ratio: the mean TTR of every ``window``-token window.

    Plain TTR falls as a text gets longer, so two corpora of different size cannot be compared
    with it; MATTR can. For fewer tokens than ``window`` it is the plain TTR.
    """
    if len(tokens) <= window:
        return type_token_ratio(tokens)
    counts: Counter = Counter(tokens[:window])
    total = len(counts)
    for i in range(window, len(tokens)):
        out, new = tokens[i - window], tokens[i]
        counts[out] -= 1
        if counts[out] == 0:
            del counts[out]
        counts[new] += 1
        total += len(counts)
    return total / (len(tokens) - window + 1) / window


def length_stats(texts: list[str]) -> dict[str, float]:
    """Characters and tokens per text: mean, median, p5, p95 and max (notebook 02)."""
    if not texts:
        raise ValueError("length_stats needs at least one text")
    chars = np.array([len(t) for t in texts])
    toks = np.array([len(tokenize(t)) for t in texts])
    out = {}
    for name, arr in (("chars", chars), ("tokens", toks)):
        out |= {f"{name}_mean": float(arr.mean()), f"{name}_median": float(np.median(arr)),
                f"{name}_p5": float(np.percentile(arr, 5)), f"{name}_p95": float(np.percentile(arr, 95)),
                f"{name}_max": float(arr.max())}
    return out


@dataclass(frozen=True)
class Entity:
    """A technical entity: its kind, text and character span in the source text."""

    kind: str
    text: str
    start: int
    end: int


def find_entities(text: str, kinds: tuple[str, ...] = ENTITY_KINDS) -> list[Entity]:
    """Technical entities in ``text``, non-overlapping, in text order (notebook 02)."""
    taken = np.zeros(len(text) + 1, dtype=bool)
    found = []
    for kind, pattern in ENTITY_PATTERNS:
        if kind not in kinds:
            continue
        for m in pattern.finditer(text):
            s, e = m.span()
            if e > s and not taken[s:e].any():
                taken[s:e] = True
                found.append(Entity(kind, m.group(), s, e))
    return sorted(found, key=lambda x: x.start)


def entity_counts(texts: list[str]) -> dict[str, int]:
    """How many entities of each kind occur in ``texts`` (every kind listed, zeros included)."""
    counts = Counter(e.kind for t in texts for e in find_entities(t))
    return {k: counts.get(k, 0) for k in ENTITY_KINDS}


def lexical_profile(texts: list[str]) -> dict[str, float]:
    """Tokens, types, TTR, MATTR and length statistics of a collection (notebook 02)."""
    tokens = [tok for t in texts for tok in tokenize(t)]
    return {"texts": len(texts), "tokens": len(tokens), "types": len(set(tokens)),
            "ttr": type_token_ratio(tokens), "mattr_500": mattr(tokens, 500)} | length_stats(texts)
