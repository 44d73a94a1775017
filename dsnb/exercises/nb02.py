"""Exercise checks for notebook 02 (data preparation). Expected values are computed by dsnb."""

from __future__ import annotations

import json

from dsnb.data.codeprep import complexity
from dsnb.data.dedup import duplicate_rate
from dsnb.data.dialogue import distinct_n
from dsnb.data.records import samples_dir
from dsnb.exercises import check_number

#: Exercise 1 works on these texts (also in data_samples/duplicates.jsonl).
DUPLICATE_TEXTS = [
    "Return the size of a file, reported by os.stat().",
    "return the  size of a file, reported by   os.stat().",
    "Return True if the path exists and is a regular file; symbolic links are followed.",
    "Test whether a path is absolute.",
    "Return the size of a file, reported by os.stat().",
    "Return True if the path exists and is a regular file; symbolic links are followed too.",
    "Serialize obj to a JSON formatted str using the given indent level and separators.",
    "Split a pathname into a pair (head, tail) where tail is everything after the final slash.",
]

#: Exercise 2: distinct-2 of these queries.
QUERIES = [
    "How do I copy a file?",
    "How do I move a file?",
    "What does shutil.copy do?",
    "Explain shutil.move.",
]

#: Exercise 3: the cyclomatic complexity of this function.
FUNCTION = '''def classify(n, strict=False):
    if n < 0 and strict:
        raise ValueError("negative")
    for d in (2, 3, 5):
        if n % d == 0:
            return d
    while n > 100:
        n //= 2
    return n if n else None
'''


def check_duplicate_rate(answer: float | None) -> bool:
    """Exercise 1: the share of DUPLICATE_TEXTS that repeat an earlier text (exactly or nearly)."""
    return check_number("02.1 duplicate rate", answer, duplicate_rate(DUPLICATE_TEXTS), rel_tol=0.01,
                        hint="count rows equal to an earlier one after normalising case and spaces, plus "
                             "near copies (one word added); divide by the number of rows.")


def check_distinct_2(answer: float | None) -> bool:
    """Exercise 2: distinct-2 of QUERIES (punctuation not counted)."""
    return check_number("02.2 distinct-2", answer, distinct_n(QUERIES, 2), rel_tol=0.01,
                        hint="list every pair of neighbouring lower-cased words in every query; "
                             "distinct ones / all of them.")


def check_complexity(answer: int | None) -> bool:
    """Exercise 3: radon's cyclomatic complexity of FUNCTION."""
    return check_number("02.3 complexity", answer, complexity(FUNCTION), rel_tol=0.0,
                        hint="1 + one per if, for, while, boolean operator and conditional expression.")


def duplicate_sample_texts() -> list[str]:
    """The texts of data_samples/duplicates.jsonl (the same as DUPLICATE_TEXTS)."""
    return [json.loads(line)["text"] for line in (samples_dir() / "duplicates.jsonl").read_text().splitlines()]
