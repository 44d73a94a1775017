"""Code preparation: parse with ``ast``, chunk by function/class with context, measure complexity.

A code chunk is one function, one method, or one class without methods, and it carries the
context a model needs to read it: the module's imports and, for a method, its class header
(``class Name(Base):``). Source that does not parse is rejected with the parser's reason; chunks
longer than ``max_chars`` are rejected as too long. Every chunk gets its cyclomatic complexity from
``radon`` (1 + the number of decision points: ``if``/``elif``, loops, ``except``, boolean operators,
comprehension conditions ...). The article asks for code of "complexity > 3"; ``complex_subset``
keeps those chunks. The pretraining corpus (``dsnb.data.corpus``) chunks source differently, by
whole top-level statements with nothing dropped; both take a statement's lines from
``corpus.statement_span``. Taught in notebook 02.
"""

from __future__ import annotations

import ast
import logging
import textwrap
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from dsnb.data import missing_extra
from dsnb.data.corpus import statement_span

try:
    from radon.complexity import cc_rank
    from radon.visitors import ComplexityVisitor
except ModuleNotFoundError as exc:  # dsnb's 'data' extra
    raise missing_extra(exc) from exc

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CodeUnit:
    """One chunk: where it comes from, its context (imports, class header) and its complexity."""

    path: str
    qualname: str
    kind: str  # "function", "method" or "class"
    start_line: int
    end_line: int
    context: str
    code: str
    complexity: int

    @property
    def text(self) -> str:
        """Context and code as one piece of text, the way a model would see it."""
        return f"{self.context}\n\n{self.code}" if self.context else self.code

    @property
    def rank(self) -> str:
        """radon's letter grade: A (1-5), B (6-10), C (11-20), D (21-30), E (31-40), F (41+)."""
        return cc_rank(self.complexity)


@dataclass(frozen=True)
class Reject:
    """Something left out, with the reason."""

    path: str
    reason: str


@dataclass
class ChunkResult:
    """Chunks kept and everything rejected (with reasons)."""

    files_in: int = 0
    chunks: list[CodeUnit] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)

    def reject_reasons(self) -> dict[str, int]:
        """Rejections counted by the kind of reason (the text before the first colon)."""
        return dict(Counter(r.reason.split(":")[0] for r in self.rejects))


def _imports(tree: ast.Module, lines: list[str]) -> str:
    out = [
        "".join(lines[n.lineno - 1 : n.end_lineno]).rstrip()
        for n in tree.body
        if isinstance(n, ast.Import | ast.ImportFrom)
    ]
    return "\n".join(out)


def _class_header(node: ast.ClassDef, lines: list[str]) -> str:
    start = statement_span(node)[0]
    end = statement_span(node.body[0])[0] - 1  # up to the first statement: no docstring, no body
    header = "".join(lines[start - 1 : max(end, node.lineno)]).rstrip()
    return header + "\n    ..."


def _complexities(source: str) -> dict[tuple[str | None, str, int], int]:
    """radon's cyclomatic complexity for every function, method and class, by (class, name, line)."""
    visitor = ComplexityVisitor.from_code(source)
    out: dict[tuple[str | None, str, int], int] = {}
    for f in visitor.functions:
        out[(None, f.name, f.lineno)] = f.complexity
    for c in visitor.classes:
        out[(None, c.name, c.lineno)] = c.real_complexity
        for m in c.methods:
            out[(c.name, m.name, m.lineno)] = m.complexity
    return out


def chunk_source(source: str, path: str = "<string>", *, max_chars: int = 6000) -> ChunkResult:
    """Chunk one file's source by top-level function, method and method-less class (notebook 02).

    Returns a ``ChunkResult`` whose ``rejects`` hold a parse failure (with the line and the parser's
    message) or chunks longer than ``max_chars``.
    """
    result = ChunkResult(files_in=1)
    try:
        tree = ast.parse(source, filename=path)
    except (SyntaxError, ValueError) as exc:
        where = f"line {exc.lineno}: " if getattr(exc, "lineno", None) else ""
        result.rejects.append(Reject(path, f"does not parse: {where}{type(exc).__name__}: {getattr(exc, 'msg', exc)}"))
        return result
    lines = source.splitlines(keepends=True)
    imports = _imports(tree, lines)
    cc = _complexities(source)
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            _add(result, path, node.name, "function", node, lines, imports, cc.get((None, node.name, node.lineno), 1),
                 max_chars)
        elif isinstance(node, ast.ClassDef):
            methods = [n for n in node.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
            if not methods:
                _add(result, path, node.name, "class", node, lines, imports,
                     cc.get((None, node.name, node.lineno), 1), max_chars)
                continue
            ctx = "\n\n".join(p for p in (imports, _class_header(node, lines)) if p)
            for m in methods:
                _add(result, path, f"{node.name}.{m.name}", "method", m, lines, ctx,
                     cc.get((node.name, m.name, m.lineno), 1), max_chars)
    return result


def _add(result, path, qualname, kind, node, lines, context, complexity, max_chars) -> None:
    start, end = statement_span(node)
    code = textwrap.dedent("".join(lines[start - 1 : end])).rstrip() + "\n"
    if kind == "method":
        code = textwrap.indent(code, "    ")
    if len(code) + len(context) > max_chars:
        result.rejects.append(Reject(f"{path}:{start}", f"too long: {qualname} has {len(code) + len(context)} "
                                                         f"characters with context (max_chars={max_chars})"))
        return
    result.chunks.append(CodeUnit(path, qualname, kind, start, end, context, code, int(complexity)))


def chunk_files(paths: list[str | Path], root: str | Path | None = None, *, max_chars: int = 6000) -> ChunkResult:
    """Chunk many files; unreadable or unparsable files are rejected with the reason (notebook 02)."""
    total = ChunkResult()
    for p in paths:
        p = Path(p)
        full = Path(root) / p if root is not None else p
        total.files_in += 1
        try:
            source = full.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            total.rejects.append(Reject(str(p), f"cannot read: {type(exc).__name__}: {exc}"))
            continue
        r = chunk_source(source, str(p), max_chars=max_chars)
        total.chunks += r.chunks
        total.rejects += r.rejects
    logger.info("code: %d files, %d chunks, %d rejected", total.files_in, len(total.chunks), len(total.rejects))
    return total


def complexity(code: str) -> int:
    """Cyclomatic complexity of a single function or class given as source (radon; notebook 02)."""
    blocks = ComplexityVisitor.from_code(textwrap.dedent(code))
    items = blocks.functions + blocks.classes
    if len(items) != 1:
        raise ValueError(f"expected one function or class, found {len(items)}")
    item = items[0]
    return item.real_complexity if hasattr(item, "real_complexity") else item.complexity


def complex_subset(chunks: list[CodeUnit], above: int = 3) -> list[CodeUnit]:
    """The chunks whose cyclomatic complexity is greater than ``above`` (the article: > 3)."""
    return [c for c in chunks if c.complexity > above]
