"""The one word tokenizer behind the data tools' word-level measures, and token-F1 on top of it.

``words`` splits text into lower-cased runs of letters, digits and underscores (``\\w+``), and, unless
``punctuation=False``, single punctuation marks. Notebook 02's intent classifier and distinct-n, the
MinHash shingles of near-duplicate detection, and the token-F1 judge of notebooks 02 and 06 all use
it, so one sentence counts the same words everywhere.

Two other splitters in ``dsnb.data`` do different jobs and stay separate: ``lexical.tokenize`` keeps
dotted names, versions and paths whole (notebook 02 measures *those* as entities), and
``augment`` splits around code spans so augmentation never edits them.
"""

from __future__ import annotations

import re
from collections import Counter

_WORD = re.compile(r"\w+|[^\w\s]")


def words(text: str, punctuation: bool = True) -> list[str]:
    """Lower-cased words (``\\w+``) and single punctuation marks, or words only with ``punctuation=False``."""
    found = _WORD.findall(text.lower())
    return found if punctuation else [w for w in found if w[0].isalnum() or w[0] == "_"]


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style F1 of the two texts' word multisets (punctuation left out), in [0, 1].

    A fixed, deterministic judge: no model, no sampling. Two texts without words score 1, one of them 0.
    """
    p, r = words(prediction, punctuation=False), words(reference, punctuation=False)
    if not p or not r:
        return float(not p and not r)
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)
