"""Exercise checks and worked solutions for notebook 02 (data preparation).

Expected values are computed by dsnb. Exercise 1 uses rows the notebook does not deduplicate on the
page (``EXERCISE_TEXTS``, not the sample file the notebook shows).
"""

from __future__ import annotations

import json

from dsnb.data.codeprep import complexity
from dsnb.data.dedup import deduplicate, duplicate_rate, jaccard, normalize
from dsnb.data.dialogue import distinct_n, diversity_words
from dsnb.data.records import samples_dir
from dsnb.exercises import Solutions, check_number

SOLUTIONS = Solutions("02")
solution = SOLUTIONS.show

#: The rows of data_samples/duplicates.jsonl, which the notebook deduplicates on the page.
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

#: Exercise 1: the share of these rows that repeat an earlier row (exactly or nearly, Jaccard >= 0.8).
EXERCISE_TEXTS = [
    "Open a file and return a stream; raise OSError upon failure.",
    "Read and return at most size bytes from the stream.",
    "open a file and return a stream;  raise OSError upon failure.",
    "Return the canonical path of the specified filename, eliminating any symbolic links encountered in the path.",
    "Read and return at most size characters from the stream.",
    "Return the canonical path of the specified filename, eliminating any symbolic links encountered in the path "
    "string.",
    "Write the given bytes to the underlying raw stream and return the number of bytes written.",
    "Flush the write buffers of the stream if applicable.",
    "Read and return at most size bytes from the stream.",
    "Close the stream; further operations on it raise ValueError.",
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
    """Exercise 1: the share of EXERCISE_TEXTS that repeat an earlier text (exactly or nearly)."""
    return check_number("02.1 duplicate rate", answer, duplicate_rate(EXERCISE_TEXTS), rel_tol=0.01,
                        hint="count rows equal to an earlier one after normalising case and spaces, plus near "
                             "copies whose word-3-gram Jaccard similarity is at least 0.8 (one changed word in "
                             "a short sentence is far below that); divide by the number of rows.")


@SOLUTIONS.register(1)
def _solution_1() -> str:
    result = deduplicate(EXERCISE_TEXTS, threshold=0.8)
    lines = [f"  row {d.index} repeats row {d.of} ({d.kind}, Jaccard {jaccard(EXERCISE_TEXTS[d.index], EXERCISE_TEXTS[d.of]):.2f})"
             for d in result.removed]
    close = jaccard(EXERCISE_TEXTS[1], EXERCISE_TEXTS[4])
    return f"""
Normalise (case, Unicode, runs of spaces): rows whose normal form equals an earlier one are exact copies,
e.g. normalize(row 2) == normalize(row 0): {normalize(EXERCISE_TEXTS[2]) == normalize(EXERCISE_TEXTS[0])}.
Near copies: Jaccard similarity of the sets of word 3-grams >= 0.8.
""" + "\n".join(lines) + f"""
Row 4 changes one word of row 1 ("bytes" -> "characters"): in a 10-word sentence that breaks 3 of the
8 3-grams, Jaccard {close:.2f}, so it is kept (and it says something different).
  duplicate rate = {len(result.removed)} / {len(EXERCISE_TEXTS)} = {duplicate_rate(EXERCISE_TEXTS):.2f}
  (dsnb.data.dedup.duplicate_rate(nb02.EXERCISE_TEXTS))
"""


def check_distinct_2(answer: float | None) -> bool:
    """Exercise 2: distinct-2 of QUERIES (punctuation not counted)."""
    return check_number("02.2 distinct-2", answer, distinct_n(QUERIES, 2), rel_tol=0.01,
                        hint="list every pair of neighbouring lower-cased words in every query; "
                             "distinct ones / all of them.")


@SOLUTIONS.register(2)
def _solution_2() -> str:
    grams = [tuple(w[i : i + 2]) for q in QUERIES for w in [diversity_words(q)] for i in range(len(w) - 1)]
    return """
Words: lower-cased, punctuation dropped, so "shutil.copy" is two words:
""" + "\n".join(f"  {q!r} -> {diversity_words(q)}" for q in QUERIES) + f"""
Word pairs: {len(grams)} in all; distinct ones: {len(set(grams))} ("how do", "do i" and "a file" repeat).
  distinct-2 = {len(set(grams))} / {len(grams)} = {distinct_n(QUERIES, 2):.4f}   (dsnb.data.dialogue.distinct_n(QUERIES, 2))
"""


def check_complexity(answer: int | None) -> bool:
    """Exercise 3: radon's cyclomatic complexity of FUNCTION."""
    return check_number("02.3 complexity", answer, complexity(FUNCTION), rel_tol=0.0,
                        hint="1 + one per if, for, while, boolean operator and conditional expression.")


@SOLUTIONS.register(3)
def _solution_3() -> str:
    return f"""
Cyclomatic complexity = 1 + one per decision point:
  if n < 0 and strict      -> +1 (if) +1 (the boolean operator 'and')
  for d in (2, 3, 5)       -> +1
  if n % d == 0            -> +1
  while n > 100            -> +1
  n if n else None         -> +1 (conditional expression)
  1 + 6 = {complexity(FUNCTION)}   (dsnb.data.codeprep.complexity, which asks radon) -> in the "> 3" subset.
"""


def duplicate_sample_texts() -> list[str]:
    """The texts of data_samples/duplicates.jsonl (the same as DUPLICATE_TEXTS)."""
    return [json.loads(line)["text"] for line in (samples_dir() / "duplicates.jsonl").read_text().splitlines()]
