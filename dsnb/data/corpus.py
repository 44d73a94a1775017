"""The course corpus: real code and technical prose from the Python standard library.

Every machine that runs Python has its standard library's source, so the course trains and
fine-tunes on it without downloading anything. ``build_corpus`` reads the ``.py`` files and yields

- code chunks (top-level definitions grouped into pieces of a few thousand characters),
- docstrings (technical prose), and
- instruction pairs: a public function's signature and its one-line summary.

Every file is assigned to a split by the hash of its *top-level package*, so no module (and no
sub-module of it) is in two splits. Files that are skipped are listed with the reason. The corpus
carries a fingerprint (Python version, file list, content hash, format version) that is stored with
anything built from it, so a cached model built from another corpus is rebuilt, not reused.
Taught in notebook 01; the data-preparation notebook (02) cleans and measures it.
"""

from __future__ import annotations

import ast
import hashlib
import logging
import sys
import sysconfig
import textwrap
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

logger = logging.getLogger(__name__)

CORPUS_FORMAT_VERSION = 1
SPLITS = ("train", "validation", "test")
#: Directories never read: test suites (they hold deliberately broken code), bundled wheels,
#: caches and third-party packages.
EXCLUDED_DIRS = frozenset(
    {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "_bundled", "lib2to3"}
)


class CorpusError(RuntimeError):
    """The corpus cannot be built (e.g. no Python source tree was found)."""


@dataclass(frozen=True)
class CodeChunk:
    """A piece of one source file: whole top-level statements, in file order."""

    module: str
    split: str
    path: str
    start_line: int
    text: str


@dataclass(frozen=True)
class Docstring:
    """The docstring of a module, class or function (technical prose)."""

    module: str
    split: str
    qualname: str
    text: str


#: The instruction of the summary task: a function's signature follows it (SFT in notebook 03, DPO's prompts in
#: notebook 06, the served questions of notebook 10).
SUMMARY_PROMPT = "Summarize this Python function in one line.\n"
#: The instruction of the next-line task: the code so far follows it.
NEXT_LINE_PROMPT = "Write the next line of this Python code.\n"


@dataclass(frozen=True)
class InstructionPair:
    """A public function's signature and the first line of its docstring."""

    module: str
    split: str
    qualname: str
    signature: str
    summary: str
    source: str


@dataclass
class Corpus:
    """The whole corpus, with its fingerprint and the files it skipped (and why)."""

    root: str
    python_version: str
    fingerprint: str
    files: list[str]
    code: list[CodeChunk]
    docs: list[Docstring]
    pairs: list[InstructionPair]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def texts(self, split: str, kinds: tuple[str, ...] = ("code", "docs")) -> list[str]:
        """Plain texts of one split, for pretraining: code chunks and/or docstrings."""
        _check_split(split)
        out: list[str] = []
        if "code" in kinds:
            out += [c.text for c in self.code if c.split == split]
        if "docs" in kinds:
            out += [d.text for d in self.docs if d.split == split]
        return out

    def pairs_in(self, split: str) -> list[InstructionPair]:
        """The instruction pairs of one split."""
        _check_split(split)
        return [p for p in self.pairs if p.split == split]

    def modules_in(self, split: str) -> set[str]:
        """Top-level packages assigned to one split."""
        _check_split(split)
        return {c.module.split(".")[0] for c in self.code if c.split == split}

    def summary(self) -> list[dict]:
        """One row per split: files, code chunks, docstrings, pairs and characters."""
        rows = []
        for split in SPLITS:
            code = [c for c in self.code if c.split == split]
            rows.append(
                {
                    "split": split,
                    "top-level modules": len({c.module.split(".")[0] for c in code}),
                    "code chunks": len(code),
                    "docstrings": sum(d.split == split for d in self.docs),
                    "instruction pairs": sum(p.split == split for p in self.pairs),
                    "characters": sum(len(c.text) for c in code)
                    + sum(len(d.text) for d in self.docs if d.split == split),
                }
            )
        return rows


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")


def split_of(module: str, fractions: tuple[float, float] = (0.8, 0.1)) -> str:
    """Deterministic split of a module by the hash of its top-level package.

    ``fractions`` are the train and validation shares; the rest is test.
    """
    top = module.split(".")[0]
    bucket = int(hashlib.sha256(top.encode()).hexdigest(), 16) % 1000 / 1000
    if bucket < fractions[0]:
        return "train"
    if bucket < fractions[0] + fractions[1]:
        return "validation"
    return "test"


def stdlib_root() -> Path:
    """The directory of the running interpreter's standard library source.

    Raises ``CorpusError`` with what to do when it cannot be found (e.g. an embeddable Python
    whose library is a zip file).
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    if not (root / "os.py").is_file():
        raise CorpusError(
            f"The Python standard library source was not found at {root} (no os.py there). "
            "The course corpus is built from it. Use a Python that ships its library as .py files "
            "(python.org installers, conda, pyenv, Debian's python3 all do), or pass "
            "root=<a directory of .py files> to build_corpus()."
        )
    return root


def _module_name(rel: Path) -> str:
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1] or ["__init__"]
    return ".".join(parts)


def list_source_files(root: Path, max_file_bytes: int) -> tuple[list[Path], list[tuple[str, str]]]:
    """The ``.py`` files under ``root`` that the corpus reads, and those it skips with a reason."""
    files, skipped = [], []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(part in EXCLUDED_DIRS for part in rel.parts[:-1]):
            continue  # whole excluded directories are not "skipped files": they are out of scope
        size = path.stat().st_size
        if size > max_file_bytes:
            skipped.append((str(rel), f"larger than max_file_bytes ({size} > {max_file_bytes})"))
            continue
        files.append(path)
    return files, skipped


def statement_span(node: ast.AST) -> tuple[int, int]:
    """First and last source line (1-based) of a statement, its decorators included."""
    start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    return start, node.end_lineno or node.lineno


def _chunk_source(source: str, tree: ast.Module, max_chars: int) -> list[tuple[int, str]]:
    """Group whole top-level statements into chunks of at most about ``max_chars`` characters.

    The pretraining text of notebook 01: every statement is kept, in order, so the chunks add up to the
    file. (``dsnb.data.codeprep.chunk_source`` does a different job: one unit per function or method, with
    its imports and class header as context and a complexity score, for notebook 02's code dimension.)
    """
    lines = source.splitlines(keepends=True)
    spans = [statement_span(node) for node in tree.body]
    chunks: list[tuple[int, str]] = []
    cur_start, cur_text = None, ""
    for start, end in spans:
        text = "".join(lines[start - 1 : end])
        if cur_text and len(cur_text) + len(text) > max_chars:
            chunks.append((cur_start, cur_text))
            cur_start, cur_text = None, ""
        if cur_start is None:
            cur_start = start
        cur_text += text if not cur_text else "\n" + text
    if cur_text.strip():
        chunks.append((cur_start or 1, cur_text))
    return chunks


def _signature(node: ast.FunctionDef | ast.AsyncFunctionDef, qualname: str) -> str:
    prefix = "async def" if isinstance(node, ast.AsyncFunctionDef) else "def"
    ret = f" -> {ast.unparse(node.returns)}" if node.returns is not None else ""
    return f"{prefix} {qualname}({ast.unparse(node.args)}){ret}:"


def _summary_line(doc: str) -> str | None:
    """The first docstring line if it reads as a one-line summary, else None."""
    first = doc.strip().splitlines()[0].strip() if doc.strip() else ""
    if not 12 <= len(first) <= 120 or not first[0].isalpha():
        return None
    if "(" in first.split(" ")[0] or first.endswith(":") or first.endswith(","):
        return None  # C-style "name(args) -> result" lines and unfinished sentences
    return first


def _segment(lines: list[str], node: ast.AST) -> str:
    """The source lines of ``node`` (decorators included), dedented as a whole."""
    start, end = statement_span(node)
    return textwrap.dedent("".join(lines[start - 1 : end]))


def _walk_defs(tree: ast.Module):
    """Yield (qualname, node) for every function, class and method, skipping nested functions."""
    stack: list[tuple[str, ast.AST]] = [("", tree)]
    while stack:
        prefix, parent = stack.pop()
        for node in getattr(parent, "body", []):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                qual = f"{prefix}{node.name}"
                yield qual, node
                if isinstance(node, ast.ClassDef):
                    stack.append((qual + ".", node))


def build_corpus(
    root: str | Path | None = None,
    *,
    max_file_bytes: int = 200_000,
    chunk_chars: int = 3000,
    min_doc_chars: int = 40,
) -> Corpus:
    """Build the corpus from the standard library (or from ``root``, any directory of ``.py`` files).

    Deterministic: the same files give the same corpus and fingerprint. Files that cannot be read
    or parsed are listed in ``Corpus.skipped`` with the reason, never dropped silently.
    """
    root = Path(root) if root is not None else stdlib_root()
    if not root.is_dir():
        raise CorpusError(f"Corpus root {root} is not a directory. Pass a directory of .py files.")
    files, skipped = list_source_files(root, max_file_bytes)
    if not files:
        raise CorpusError(f"No .py files found under {root}. Pass a directory of Python source files.")
    digest = hashlib.sha256(
        f"dsnb-corpus-v{CORPUS_FORMAT_VERSION}|{sys.version_info[:3]}|{max_file_bytes}|{chunk_chars}|"
        f"{min_doc_chars}".encode()
    )
    code, docs, pairs, used = [], [], [], []
    for path in files:
        rel = path.relative_to(root)
        raw = path.read_bytes()
        try:
            source = raw.decode("utf-8")
            tree = ast.parse(source, filename=str(rel))
        except (UnicodeDecodeError, SyntaxError, ValueError) as exc:
            skipped.append((str(rel), f"does not parse: {type(exc).__name__}: {exc}"))
            continue
        digest.update(str(rel).encode() + b"\0" + hashlib.sha256(raw).digest())
        used.append(str(rel))
        module = _module_name(rel)
        split = split_of(module)
        lines = source.splitlines(keepends=True)
        for start, text in _chunk_source(source, tree, chunk_chars):
            code.append(CodeChunk(module, split, str(rel), start, text))
        mod_doc = ast.get_docstring(tree)
        if mod_doc and len(mod_doc) >= min_doc_chars:
            docs.append(Docstring(module, split, module, mod_doc))
        for qual, node in _walk_defs(tree):
            doc = ast.get_docstring(node)
            if not doc:
                continue
            if len(doc) >= min_doc_chars:
                docs.append(Docstring(module, split, f"{module}.{qual}", doc))
            if isinstance(node, ast.ClassDef) or any(p.startswith("_") for p in qual.split(".")):
                continue
            summary = _summary_line(doc)
            if summary:
                pairs.append(
                    InstructionPair(
                        module, split, f"{module}.{qual}", _signature(node, qual), summary,
                        _segment(lines, node),
                    )
                )
    logger.info("corpus: %d files, %d code chunks, %d docstrings, %d pairs, %d skipped",
                len(used), len(code), len(docs), len(pairs), len(skipped))
    return Corpus(
        root=str(root),
        python_version=".".join(map(str, sys.version_info[:3])),
        fingerprint=digest.hexdigest()[:16],
        files=used,
        code=code,
        docs=docs,
        pairs=pairs,
        skipped=skipped,
    )


@lru_cache(maxsize=2)
def course_corpus() -> Corpus:
    """The standard-library corpus of this interpreter, built once per process."""
    return build_corpus()


def unigram_entropy(token_ids: list[int] | list[list[int]]) -> float:
    """Entropy in nats of the empirical unigram distribution of ``token_ids``.

    This is the loss (per token) of the best model that ignores context: a language model has
    learned something real only if its held-out loss is clearly below it.
    """
    flat = [t for seq in token_ids for t in seq] if token_ids and isinstance(token_ids[0], list) else token_ids
    if not flat:
        raise ValueError("unigram_entropy needs at least one token")
    counts = Counter(flat)
    total = len(flat)
    import math

    return -sum(c / total * math.log(c / total) for c in counts.values())
