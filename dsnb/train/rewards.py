"""Verifiable rewards for notebook 12: a held-out function's head as the prompt, its body as the completion.

The task. ``function_prompts`` takes public functions of the course corpus (``dsnb.data.corpus``): the
prompt is the function's ``def`` line and its docstring, cut right after the docstring's closing quotes,
exactly as the text appears in the standard library the base model was pretrained on; the model writes
the body. Train prompts come from the corpus's train split, held-out prompts from its test split (modules
the model never saw).

What a program can check about a body (``split_body`` finds it: the completion's lines up to the first line
that starts at column 0, which is where the function *closes*):

- ``statement_share`` (the training reward): the share of the body's non-blank lines that are Python
  statements doing something, each checked on its own with ``ast`` (a block opener such as ``if x:`` is
  completed with ``pass``; ``else:`` / ``except:`` get their opener). Comments, ``pass``, ``...`` and bare
  names or constants count as lines that do nothing. Dense (a value in [0, 1] for every completion), so
  a group of a few completions usually differs, which GRPO needs.
- ``line_share`` (the loophole, notebook 12's reward-hacking section): the same share, but counting every
  line that is valid on its own, comments included. A model learns to write only comments.
- ``function_parses`` (the strict check): head + body parse as one function, the function closes within
  the budget, and the body holds at least one statement that does something. 0 or 1.
- ``function_runs`` (executes the code): the strict check, then the function is defined and called with
  ``None`` for every parameter in ``dsnb.train.sandbox`` (a separate process with limits, no network, a
  throwaway directory); it passes unless the call hits an error that means broken code rather than bad
  arguments (``NameError``, ``UnboundLocalError``, ``ImportError``, ``SyntaxError``, ``RecursionError``), runs
  out of time or memory, or is refused an operation. About 40 ms per completion (a process each) against
  tens of microseconds for the static checks: notebook 12 shows it and trains on ``statement_share``.

Every reward has TRL's signature (``prompts``, ``completions``, keyword arguments) and returns one float per
completion; none raises on what a model can write (empty, huge, lone surrogates, NUL bytes, code that never
ends: ``tests/test_rewards.py``). ``REWARDS`` names them for recipes (``rewards: [statements]``).
"""

from __future__ import annotations

import ast
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from dsnb.train.sandbox import SandboxLimits, run_sandboxed

#: Completions longer than this are not scored (0): no body within any completion budget the course uses is.
MAX_COMPLETION_CHARS = 20_000
#: Lines longer than this count as invalid without being parsed (a pathological line could take the parser long).
MAX_LINE_CHARS = 400
#: Only this many body lines are looked at.
MAX_LINES = 200
#: What a call of the generated function may raise and still pass ``function_runs``: only errors that say the
#: code is broken fail it (bad arguments, here None for everything, are the caller's fault).
BROKEN_CODE_ERRORS = ("NameError", "UnboundLocalError", "ImportError", "ModuleNotFoundError", "SyntaxError",
                      "IndentationError", "RecursionError")
_PARSE_ERRORS = (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError)
# A block line on its own: what goes before it (the block it continues) and after it (what the block needs).
_BLOCKS = {"else": ("if 1:\n    pass\n", " pass"), "elif": ("if 1:\n    pass\n", " pass"),
           "except": ("try:\n    pass\n", " pass"), "finally": ("try:\n    pass\n", " pass"),
           "try": ("", " pass\nexcept Exception:\n    pass"), "match": ("", "\n    case _:\n        pass"),
           "case": ("match x:\n    ", " pass")}


@dataclass(frozen=True)
class FunctionPrompt:
    """One task: the prompt (``def`` line + docstring) of a corpus function and what the checks need about it."""

    prompt: str
    name: str
    qualname: str
    module: str
    split: str
    parameters: tuple[str, ...]
    reference_body: str


def _head_of(source: str) -> tuple[str, ast.FunctionDef | ast.AsyncFunctionDef, str] | None:
    """(prompt, node, reference body) for a function source whose docstring is followed by code, else None."""
    try:
        tree = ast.parse(source)
    except _PARSE_ERRORS:
        return None
    if not tree.body or not isinstance(tree.body[0], ast.FunctionDef | ast.AsyncFunctionDef):
        return None
    fn = tree.body[0]
    doc = fn.body[0] if fn.body else None
    if not (isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant) and isinstance(doc.value.value, str)
            and len(fn.body) > 1):
        return None
    lines = source.splitlines(keepends=True)
    head = "".join(lines[fn.lineno - 1: doc.end_lineno - 1]) + lines[doc.end_lineno - 1][:doc.end_col_offset]
    body = "".join(lines[doc.end_lineno:])
    return head, fn, body


def function_prompts(corpus: Any, split: str, tokenizer: Any = None, max_prompt_tokens: int | None = None,
                     n: int | None = None, seed: int = 0) -> list[FunctionPrompt]:
    """The task's prompts from one split of the corpus: functions whose docstring is followed by code.

    With ``tokenizer`` and ``max_prompt_tokens``, longer prompts are left out. ``n`` draws that many
    (without replacement, with ``seed``); None keeps them all, in corpus order.
    """
    import random

    out = []
    for pair in corpus.pairs_in(split):
        found = _head_of(pair.source)
        if found is None:
            continue
        head, fn, body = found
        if max_prompt_tokens is not None and tokenizer is not None and len(tokenizer(head)["input_ids"]) > max_prompt_tokens:
            continue
        params = tuple(a.arg for a in fn.args.posonlyargs + fn.args.args)
        out.append(FunctionPrompt(head, fn.name, pair.qualname, pair.module, pair.split, params, body))
    if n is not None:
        out = random.Random(seed).sample(out, min(n, len(out)))
    return out


def prompt_dataset(prompts: Sequence[FunctionPrompt]) -> Any:
    """A ``datasets.Dataset`` with the ``prompt`` column GRPO reads (plain text prompts: the base model's format)."""
    from datasets import Dataset

    return Dataset.from_dict({"prompt": [p.prompt for p in prompts]})


# --- reading a completion ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FunctionBody:
    """A completion read as a function body: the rest of the docstring's line, the body lines, whether it closed."""

    tail: str
    lines: tuple[str, ...]
    closed: bool

    @property
    def code_lines(self) -> list[str]:
        """The non-blank lines (the docstring line's rest first, when it is not blank)."""
        lines = ([self.tail] if self.tail.strip() else []) + list(self.lines)
        return [ln for ln in lines if ln.strip()][:MAX_LINES]

    def text(self) -> str:
        """The body as it continues the prompt (tail + newline-joined lines)."""
        return self.tail + "".join("\n" + ln for ln in self.lines)


def as_text(completion: Any) -> str | None:
    """A completion as text: a string, or the last message's content of a conversational one; None otherwise."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        content = completion[-1].get("content")
        return content if isinstance(content, str) else None
    return None


def split_body(completion: str) -> FunctionBody:
    """The body a completion gives the function: every line up to the first that starts at column 0.

    The first element is the rest of the docstring's last line (a model may write there too). ``closed``
    says a line at column 0 came (the model ended the function and went on to the next statement).
    """
    lines = completion.split("\n")
    body: list[str] = []
    closed = False
    for line in lines[1:]:
        if line.strip() and not line[0].isspace():
            closed = True
            break
        body.append(line)
    return FunctionBody(lines[0], tuple(body), closed)


def parse_line(line: str) -> ast.stmt | bool | None:
    """One line checked on its own: its statement (``ast``), False if it does not parse, None if blank or a comment.

    A block opener (``for x in y:``) is completed with ``pass``; ``else:`` / ``elif`` / ``except`` / ``finally`` /
    ``case`` get the opener they continue, ``try:`` / ``match`` what they need after them. Lines longer than ``MAX_LINE_CHARS`` are not parsed (False).
    """
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    if len(text) > MAX_LINE_CHARS:
        return False
    source = text
    if text.endswith(":"):
        before, after = _BLOCKS.get(text.split()[0].rstrip(":"), ("", " pass"))
        source = before + text + after
    try:
        tree = ast.parse(source)
    except _PARSE_ERRORS:
        return False
    return tree.body[-1] if tree.body else False


def does_something(node: ast.stmt | bool | None) -> bool:
    """True for a statement that does something: not ``pass``, ``...``, a bare name, attribute or constant."""
    if not isinstance(node, ast.stmt) or isinstance(node, ast.Pass):
        return False
    return not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Name | ast.Constant | ast.Attribute))


def _bodies(completions: Sequence[Any]) -> list[FunctionBody | None]:
    out = []
    for c in completions:
        text = as_text(c)
        out.append(None if text is None or len(text) > MAX_COMPLETION_CHARS else split_body(text))
    return out


#: What a model can write that a reward must survive (tests/test_rewards.py; notebook 12's exercise 2 runs a
#: learner's reward on them): each is scored 0.0 or 1.0 without raising, in well under a second.
HOSTILE_COMPLETIONS: dict[str, str] = {
    "empty": "", "newlines": "\n" * 10_000, "huge": "\n    x = 1" * 500_000,
    "one huge line": "\n    " + "1+" * 100_000 + "1", "lone surrogates": "\n    x = '\ud800\udfff\ud800'\n    return x\n\ny",
    "NUL bytes": "\n    return 1\x00\n\nx", "replacement chars": "\n    \ufffd\ufffd = 1\n\n\ufffd",
    "nested parens": "\n    x = " + "(" * 5000 + "\n\ny", "control chars": "\n    \x1b[2J\x07return 1\n\nx",
}


# --- the rewards (TRL's signature) ---------------------------------------------------------------------------


def statement_share(prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
    """Share of the body's non-blank lines that are statements doing something (``parse_line``, ``does_something``)."""
    out = []
    for body in _bodies(completions):
        lines = body.code_lines if body else []
        out.append(sum(does_something(parse_line(ln)) for ln in lines) / len(lines) if lines else 0.0)
    return out


def line_share(prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
    """Share of the body's non-blank lines that are valid on their own, comments included: the loophole."""
    out = []
    for body in _bodies(completions):
        lines = body.code_lines if body else []
        out.append(sum(parse_line(ln) is not False for ln in lines) / len(lines) if lines else 0.0)
    return out


def comment_share(prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
    """Share of the body's non-blank lines that are comments (a measure, not a reward: what the loophole pays for)."""
    out = []
    for body in _bodies(completions):
        lines = body.code_lines if body else []
        out.append(sum(parse_line(ln) is None for ln in lines) / len(lines) if lines else 0.0)
    return out


def _parses(prompt: Any, body: FunctionBody | None) -> bool:
    if body is None or not isinstance(prompt, str) or not body.closed:
        return False
    if not any(does_something(parse_line(ln)) for ln in body.code_lines):
        return False
    source = prompt + body.text()
    if len(source) > MAX_COMPLETION_CHARS + len(prompt) or any(len(ln) > MAX_LINE_CHARS for ln in body.code_lines):
        return False
    try:
        tree = ast.parse(source)
    except _PARSE_ERRORS:
        return False
    return len(tree.body) == 1 and isinstance(tree.body[0], ast.FunctionDef | ast.AsyncFunctionDef)


def function_parses(prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
    """1.0 when prompt + body parse as one function that closes and does something, else 0.0 (the strict check)."""
    return [float(_parses(p, b)) for p, b in zip(prompts, _bodies(completions), strict=True)]


def call_script(prompt: str, body: FunctionBody) -> str:
    """The program ``function_runs`` executes: the function, then one call with None for every parameter.

    It exits with status 3 when the call raises one of ``BROKEN_CODE_ERRORS``, 4 on ``MemoryError``, and 0
    otherwise (a refusal the code catches is still seen: ``SandboxResult.refused``).
    """
    tree = ast.parse(prompt + body.text())
    fn = tree.body[0]
    n = len(fn.args.posonlyargs) + len(fn.args.args) + len(fn.args.kwonlyargs)
    keywords = ", ".join(f"{a.arg}=None" for a in fn.args.kwonlyargs)
    positional = ", ".join(["None"] * (len(fn.args.posonlyargs) + len(fn.args.args)))
    call = f"{fn.name}({', '.join(x for x in (positional, keywords) if x)})" if n else f"{fn.name}()"
    broken = ", ".join(BROKEN_CODE_ERRORS)
    return (f"{prompt}{body.text()}\n\n\ntry:\n    __result = {call}\n    if hasattr(__result, '__next__'):\n"
            f"        for __x in __result:\n            break\nexcept ({broken}):\n    raise SystemExit(3)\n"
            "except MemoryError:\n    raise SystemExit(4)\n"
            "except BaseException:\n    pass\n")


def function_runs(prompts: Sequence[Any], completions: Sequence[Any], limits: SandboxLimits | None = None,
                  workers: int | None = None, **kwargs: Any) -> list[float]:
    """1.0 when the strict check passes and the function, called with None arguments in the sandbox, hits no
    broken-code error within the limits (``call_script``, ``dsnb.train.sandbox.run_sandboxed``); else 0.0."""
    limits = limits or SandboxLimits(seconds=2.0, cpu_seconds=1, memory_mb=256)
    bodies = _bodies(completions)
    todo = [(i, call_script(p, b)) for i, (p, b) in enumerate(zip(prompts, bodies, strict=True)) if _parses(p, b)]
    out = [0.0] * len(bodies)
    if todo:
        with ThreadPoolExecutor(max_workers=workers or min(len(todo), os.cpu_count() or 1)) as pool:
            results = list(pool.map(lambda item: run_sandboxed(item[1], limits), todo))
        for (i, _), result in zip(todo, results, strict=True):
            out[i] = float(result.ok and not result.refused)
    return out


#: The rewards a recipe can name (``rewards: [statements]``), by name.
REWARDS: dict[str, Callable[..., list[float]]] = {
    "statements": statement_share, "lines": line_share, "parses": function_parses, "runs": function_runs,
}


def reward_functions(names: Sequence[str]) -> list[Callable[..., list[float]]]:
    """The reward functions named in a recipe, in order; a ``ValueError`` naming the valid names otherwise."""
    unknown = [n for n in names if n not in REWARDS]
    if unknown or not names:
        raise ValueError(f"rewards {list(names)!r}: choose one or more of {sorted(REWARDS)}")
    return [REWARDS[n] for n in names]


def body_checks(prompt: str, completion: Any) -> dict[str, Any]:
    """Every static check of one completion, for tables: lines, statements, comments, closed, the rewards."""
    body = _bodies([completion])[0]
    lines = body.code_lines if body else []
    parsed = [parse_line(ln) for ln in lines]
    return {"lines": len(lines), "statements doing something": sum(map(does_something, parsed)),
            "comments": sum(p is None for p in parsed), "invalid lines": sum(p is False for p in parsed),
            "closed": bool(body and body.closed),
            "statement_share": statement_share([prompt], [completion])[0],
            "line_share": line_share([prompt], [completion])[0],
            "function_parses": function_parses([prompt], [completion])[0]}
