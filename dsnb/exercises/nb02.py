"""Exercise checks and worked solutions for notebook 02 (data preparation).

Expected values are computed by dsnb. Each exercise applies a tool of the page to a setting the page does
not show: a near-duplicate threshold set for another corpus's pairs, the per-batch diversity figure of another
run's log at its batch size, and the complexity rule on a module the page does not chunk.
"""

from __future__ import annotations

import json
import random

from dsnb.data.codeprep import chunk_source
from dsnb.data.dedup import jaccard
from dsnb.data.dialogue import batch_distinct_n
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

#: Exercise 1: pairs a reviewer marked as the same text (reformatted, a word inflected or added) ...
DROP_PAIRS = [
    ("Return the number of items in the container.", "Return the number of items in the container object."),
    ("Raise KeyError if the key is not found in the mapping.", "Raises KeyError if the key is not found in the mapping."),
    ("Close the file and raise ValueError if the file is already closed.",
     "Close the file and raises ValueError if the file is already closed."),
]
#: ... and pairs that say different things.
KEEP_PAIRS = [
    ("Return the number of items in the container.", "Return the number of bytes in the buffer."),
    ("Read and return at most size bytes from the stream.", "Read and return at most size characters from the stream."),
    ("Return True if the path is an existing regular file.", "Return True if the path is an existing directory."),
]


def highest_removing_threshold(pairs: list[tuple[str, str]] = DROP_PAIRS) -> float:
    """The highest near-duplicate threshold (word 3-gram Jaccard ≥ it) at which every pair counts as a duplicate."""
    return min(jaccard(a, b) for a, b in pairs)


def check_threshold(answer: float | None) -> bool:
    """Exercise 1: the highest NEAR_DUP_THRESHOLD at which dsnb's near-duplicate rule removes every DROP pair."""
    return check_number("02.1 near-duplicate threshold", answer, highest_removing_threshold(), rel_tol=0.01,
                        hint="a pair is a near duplicate when its word 3-gram Jaccard similarity (dsnb.data.dedup.jaccard) "
                             "is at least the threshold: the threshold can be no higher than the least similar pair.")


@SOLUTIONS.register(1)
def _solution_1() -> str:
    drop = [jaccard(a, b) for a, b in DROP_PAIRS]
    keep = [jaccard(a, b) for a, b in KEEP_PAIRS]
    t = highest_removing_threshold()
    caught = [f"{b!r} ({j:.3f})" for (_, b), j in zip(KEEP_PAIRS, keep, strict=True) if j >= t]
    return f"""
Near duplicates are pairs whose word 3-gram Jaccard similarity is at least the threshold (dedup.jaccard):
  DROP pairs: {", ".join(f"{j:.3f}" for j in drop)}  -> every one is removed only for a threshold <= {t:.4f}
  KEEP pairs: {", ".join(f"{j:.3f}" for j in keep)}
One inflected word ("raise" -> "raises") in the middle of a 12-word sentence changes 3 of its 10 3-grams, so that
pair sits at {t:.3f}, far below the page's 0.8. At {t:.3f} the rule would also remove the KEEP pair(s)
{"; ".join(caught) or "none"}: no threshold separates these two lists, because 3-gram Jaccard sees how many
words changed, not what they mean. Set the band from pairs like these drawn from your own corpus; to catch
inflections, normalise (lemmatise) before shingling rather than lowering the threshold.
"""


#: Exercise 2: a query log of another run, 5 templates over 8 functions, in the order the sampler gives it.
_TEMPLATES = ("How do I use {f}?", "What does {f} return?", "Show me an example of {f}.",
              "Why does {f} raise an error?", "Is {f} thread-safe?")
_FUNCTIONS = ("os.path.join", "shutil.copy", "json.loads", "re.sub", "itertools.chain", "functools.reduce",
              "pathlib.Path.glob", "subprocess.run")
QUERY_LOG = random.Random(3).sample([t.format(f=f) for t in _TEMPLATES for f in _FUNCTIONS],
                                    len(_TEMPLATES) * len(_FUNCTIONS))
#: Exercise 2: that run's batch of queries per device.
EX2_BATCH = 8


def check_distinct_1(answer: float | None) -> bool:
    """Exercise 2: distinct-1 per batch of EX2_BATCH of QUERY_LOG, in its order."""
    return check_number("02.2 distinct-1 per batch", answer, batch_distinct_n(QUERY_LOG, 1, batch=EX2_BATCH),
                        rel_tol=0.01, hint="the page's per-batch rule (dsnb.data.dialogue.batch_distinct_n) with "
                        "batch=8: distinct words / all words in each consecutive batch of 8 queries, averaged.")


@SOLUTIONS.register(2)
def _solution_2() -> str:
    per = {b: batch_distinct_n(QUERY_LOG, 1, batch=b) for b in (8, 16, len(QUERY_LOG))}
    return f"""
Per batch of {EX2_BATCH} queries (consecutive, in the log's order), distinct-1 = distinct words / all words, then
the mean over the {len(QUERY_LOG) // EX2_BATCH} batches:
  dsnb.data.dialogue.batch_distinct_n(nb02.QUERY_LOG, 1, batch={EX2_BATCH}) = {per[8]:.4f}
The same log per batch of 16 gives {per[16]:.4f}, and over all {len(QUERY_LOG)} queries {per[len(QUERY_LOG)]:.4f}:
the figure falls as the batch grows, so "distinct > 0.7" must name its batch. At 8 this log
{"passes" if per[8] > 0.7 else "fails"} 0.7; five templates repeat their words in every batch.
"""


#: Exercise 3: a small module to chunk (functions, and a class whose methods become chunks of their own).
MODULE_SOURCE = '''import os


def ext(path):
    return os.path.splitext(path)[1]


def kind(path):
    if os.path.islink(path):
        return "link"
    return "dir" if os.path.isdir(path) else "file"


def newest(paths):
    best = None
    for p in paths:
        if best is None or os.path.getmtime(p) > os.path.getmtime(best):
            best = p
    return best


def human(size):
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024:
            return f"{size:.0f} {unit}"
        size /= 1024
    return f"{size:.0f} TB" if size < 1024 else "huge"


class Tree:
    def __init__(self, top):
        self.top = top

    def files(self, suffix=None, hidden=False):
        for root, dirs, names in os.walk(self.top):
            for name in names:
                if name.startswith(".") and not hidden:
                    continue
                if suffix and not name.endswith(suffix):
                    continue
                yield os.path.join(root, name)

    def size(self):
        return sum(os.path.getsize(f) for f in self.files())
'''


def kept_share(source: str = MODULE_SOURCE, above: int = 3) -> float:
    """Share of ``source``'s chunks (dsnb.data.codeprep.chunk_source) whose complexity is above ``above``."""
    chunks = chunk_source(source, "tree.py").chunks
    return sum(c.complexity > above for c in chunks) / len(chunks)


def check_kept_share(answer: float | None) -> bool:
    """Exercise 3: the share of MODULE_SOURCE's chunks that the article's "complexity > 3" rule keeps."""
    return check_number("02.3 share kept by complexity > 3", answer, kept_share(), rel_tol=0.01,
                        hint="chunk it as the page does (codeprep.chunk_source): each function and each method is a "
                             "chunk; keep those whose complexity is above 3 (not 3 itself).")


@SOLUTIONS.register(3)
def _solution_3() -> str:
    chunks = chunk_source(MODULE_SOURCE, "tree.py").chunks
    rows = "\n".join(f"  {c.qualname:15s} complexity {c.complexity}{'  kept' if c.complexity > 3 else ''}" for c in chunks)
    return f"""
codeprep.chunk_source cuts the module into its functions and the class's methods (a method chunk carries the
class header and the imports); radon scores each:
{rows}
Kept: {sum(c.complexity > 3 for c in chunks)} of {len(chunks)} = {kept_share():.4f}. `kind` sits at exactly 3 (one if, one conditional
expression) and is dropped: "> 3" is strict. The class as a whole would score the sum of its methods, but the
rule sees methods, so `Tree.files` is kept and the two trivial methods beside it are not.
"""


def duplicate_sample_texts() -> list[str]:
    """The texts of data_samples/duplicates.jsonl (the same as DUPLICATE_TEXTS)."""
    return [json.loads(line)["text"] for line in (samples_dir() / "duplicates.jsonl").read_text().splitlines()]
