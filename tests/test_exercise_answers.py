"""No exercise's accepted answer is printed on a page: not in a committed notebook's outputs or markdown, not in README.

Each ``dsnb.exercises.nbNN`` module (every one that exists, so a new notebook's module is picked up)
is asked what its checks accept (``dsnb.exercises.accepted_answers``). A number is found when a number
printed on a page is within the check's own tolerance of it (a percentage counts as its fraction too);
a word answer when its words appear as whole words, or a line of a page normalises to the same answer
the way the check normalises the learner's. Whole integers below ``SMALL_INTEGER`` are not searched:
they occur on every page (step counts, batch sizes, layer numbers), and such an exercise must be kept
from being answered on the page by its design, not by this test. A number followed by a unit of time
(ms, s, seconds, req/s, tokens/s) is a timing of the run that printed it, different on every run, and
is not searched either: exercise answers are computed, so no exercise asks for a duration measured here.
"""

from __future__ import annotations

import importlib
import json
import math
import pkgutil
import re
import subprocess
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest

import dsnb.exercises
from dsnb.exercises import Accepted, accepted_answers, words

ROOT = Path(__file__).resolve().parents[1]
SMALL_INTEGER = 100
#: A number on a page: digits with optional thousands commas, decimals, exponent and a percent sign,
#: not glued to a word or identifier before it (fp32, C12, nb04) or after it (3b in "6.7b").
NUMBER = re.compile(r"(?<![\w.])[-+−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?%?(?![A-Za-z_])")
#: A timing: a number and a unit of time (or a rate per second) right after it.
TIMING = re.compile(r"\s*(?:ms|µs|us|s|sec|seconds?)\b|\s*(?:req|requests|tokens|it)/s\b")


URL = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+", re.I)


def exercise_modules() -> list[str]:
    """Every ``dsnb.exercises.nbNN`` module, found on disk."""
    return sorted(m.name for m in pkgutil.iter_modules(dsnb.exercises.__path__) if re.fullmatch(r"nb\d\d", m.name))


def notebook_text(nb: dict) -> Iterator[str]:
    """The text a learner reads in a notebook: markdown cells and every output (plain text or HTML).

    The exercises' own questions (markdown from the "Exercises" heading on) are left out: their
    inputs may equal an answer by design (the factor that equals the sequence length it gives).
    """
    questions = False
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            source = "".join(cell["source"])
            heading = re.search(r"^#+ Exercises\b", source, re.M)
            if not questions:
                yield source[: heading.start()] if heading else source
            questions = questions or heading is not None
        for out in cell.get("outputs", []):
            if "text" in out:
                yield "".join(out["text"])
            data = out.get("data", {})
            for kind in ("text/plain", "text/markdown", "text/html"):
                if kind in data:
                    text = "".join(data[kind])
                    yield re.sub(r"<[^>]+>", " ", text) if kind == "text/html" else text


@cache
def pages() -> dict[str, str]:
    """Committed notebooks and README.md, by path, as the text a reader sees."""
    listed = subprocess.run(["git", "ls-files", "notebooks/*.ipynb"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.split()
    out = {p: "\n".join(notebook_text(json.loads((ROOT / p).read_text()))) for p in listed}
    out["README.md"] = (ROOT / "README.md").read_text()
    return out


def split_pages(module: str) -> Iterator[tuple[str, str, bool]]:
    """(where, text, own) for ``module``'s exercises: its own notebook, README's lines about that notebook
    (ledger rows cite "notebook NN"; the notebook table links notebooks/NN_...), and all other text."""
    nn = module[2:]
    about = re.compile(rf"\bnotebooks? {int(nn)}\b|\bnotebooks? {nn}\b|notebooks/{nn}_")
    for path, text in pages().items():
        if path == "README.md":
            lines = text.splitlines()
            yield "README.md (its rows on this notebook)", "\n".join(x for x in lines if about.search(x)), True
            yield path, "\n".join(x for x in lines if not about.search(x)), False
        else:
            yield path, text, Path(path).name.startswith(nn + "_")


def numbers(text: str) -> Iterator[tuple[str, float, float]]:
    """Each number printed in ``text``: token, value and half a unit of its last significant digit.

    A percentage also counts as its fraction; trailing zeros of a whole number are not significant
    ("120" may be any of 115-125).
    """
    text = URL.sub(" ", text)  # a URL's port or path is no quantity
    for m in NUMBER.finditer(text):
        token = m.group()
        if TIMING.match(text, m.end()):
            continue
        raw = token.replace(",", "").replace("−", "-").rstrip("%")
        mantissa, _, exponent = raw.lower().partition("e")
        if len(raw) > 40 or abs(int(exponent or 0)) > 300:  # a hash or an id, not a quantity
            continue
        value = float(raw)
        if "." in mantissa:
            unit = 10.0 ** -len(mantissa.split(".")[1])
        else:
            digits = mantissa.lstrip("+-")
            unit = 10.0 ** (len(digits) - len(digits.rstrip("0"))) if digits.strip("0") else 1.0
        half = unit / 2 * 10.0 ** int(exponent or 0)
        yield token, value, half
        if token.endswith("%"):
            yield token, value / 100, half / 100


def _is_small_integer(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and float(x).is_integer() and abs(x) < SMALL_INTEGER


def _has_phrase(phrase: str, text: str) -> bool:
    return re.search(rf"(?<![\w.]){re.escape(phrase)}(?![\w])", text) is not None


def leaks(answer: Accepted, text: str, own: bool = True) -> list[str]:
    """Where ``text`` prints what ``answer`` accepts (the matching tokens or lines); empty when nowhere.

    On the exercise's ``own`` page: a number within the check's tolerance (printed at least that
    precisely), the answer's words, a line the check's normalisation maps to the answer, or (for a
    list) one line naming all its items. On other pages, where unrelated figures abound: the
    answer's own digits (the page's number is the answer rounded, to four significant digits or
    more) or its words as a phrase.
    """
    x = answer.expected
    if isinstance(x, bool):
        raise TypeError(f"{answer.check}: a yes/no answer cannot be searched for; ask for a number or a name")
    if isinstance(x, int | float):
        x = float(x)
        if round(x) == x or math.isclose(x, round(x), rel_tol=1e-6):
            if abs(round(x)) < SMALL_INTEGER:
                return []
        tol = max(answer.rel_tol or 0.0, 1e-9)
        if own:  # within tolerance, and printed that precisely ("120" is not a print of 116.4 at 3%)
            hits = {tok for tok, v, half in numbers(text)  # a sign is not a disguise: a saving printed as "−90%"
                    if math.isclose(abs(v), abs(x), rel_tol=tol) and half <= max(tol * abs(x), 0.5)}
        elif x.is_integer():  # a whole count (a length, a batch) is searched on its own page only
            hits = set()
        else:  # the answer rounded to the page's digits, four significant ones at least
            hits = {tok for tok, v, half in numbers(text)
                    if abs(abs(v) - abs(x)) <= half * (1 + 1e-9) and half <= 0.0005 * abs(v)}
        return sorted(hits)
    found = []
    lines = [line for line in text.splitlines() if line.strip()]
    if isinstance(x, str):
        if _has_phrase(words(x), words(text)):
            found.append(words(x))
    elif isinstance(x, Iterable) and own:
        items = [words(i) for i in x]
        found += [line.strip() for line in lines if all(_has_phrase(i, words(line)) for i in items)]
    if answer.normalize is not None and own:
        want = answer.normalize(x)
        for line in lines:
            try:
                same = answer.normalize(line) == want
            except (TypeError, ValueError):
                same = False
            if same:
                found.append(line.strip())
    return found


def answers_of(module: str) -> list[Accepted]:
    return accepted_answers(importlib.import_module(f"dsnb.exercises.{module}"))


@pytest.mark.parametrize("module", exercise_modules())
def test_no_answer_on_a_page(module):
    printed: list[str] = []
    for answer in answers_of(module):
        for path, text, own in split_pages(module):
            hits = leaks(answer, text, own)
            if hits:
                printed.append(f"{answer.check} (accepts {answer.expected!r}) printed in {path}: {hits[:5]}")
    assert not printed, "exercise answers printed on a page:\n" + "\n".join(printed)


def test_every_notebook_module_is_searched():
    assert {f"nb{n:02d}" for n in range(12)} <= set(exercise_modules())
    for module in exercise_modules():
        assert answers_of(module), f"dsnb.exercises.{module} has no check_* function"


def test_catches_a_planted_number():
    answer = Accepted("m", "check_storage", 1.92, rel_tol=0.02)
    page = {"cells": [{"cell_type": "code", "source": [], "outputs": [
        {"output_type": "stream", "name": "stdout", "text": ["top-32 logits for 1e+10 tokens: 1.93 TB\n"]}]}]}
    assert leaks(answer, "\n".join(notebook_text(page))) == ["1.93"]
    assert leaks(answer, "top-32 logits for 1e+10 tokens: 1.88 TB") == []  # outside the 2% tolerance
    assert leaks(Accepted("m", "c", 0.1563, rel_tol=0.02), "active share 15.6%") == ["15.6%"]
    assert leaks(Accepted("m", "c", 6800, rel_tol=0.03), "users per arm: 6,812") == ["6,812"]
    assert leaks(Accepted("m", "c", 6800, rel_tol=0.03), "B server http://127.0.0.1:6812: 21 requests") == []
    assert leaks(Accepted("m", "c", 228.0, rel_tol=0.01), "cache misses p50 227 ms, 228.5 s, 229 tokens/s") == []
    assert leaks(Accepted("m", "c", 228.0, rel_tol=0.01), "228 tokens fit in 0.8 s") == ["228"]
    assert leaks(Accepted("m", "c", 32, rel_tol=0.0), "fp32 has 32 layers") == []  # small integers are not searched
    assert leaks(Accepted("m", "c", 116.4, rel_tol=0.03), "about 120 steps") == []  # too coarse to be the answer
    assert leaks(Accepted("m", "c", 116.4, rel_tol=0.03), "116 GiB per GPU") == ["116"]
    assert leaks(Accepted("m", "c", 0.8986, rel_tol=0.01), "activations −90%") == ["−90%"]  # a saving as a change
    assert leaks(Accepted("m", "c", 0.8986, rel_tol=0.01), "activations -89.86%", own=False) == ["-89.86%"]


def test_catches_a_planted_word():
    def fix(label):  # a check's normalisation: any label that mentions offloading is the same answer
        return "offload" if "offload" in words(label) else words(label)

    offload = Accepted("m", "check_fix", "ZeRO CPU offload of optimizer states", normalize=fix)
    assert leaks(offload, "| 6.7b | no | CPU offload | 87.9 |")  # an alias, found by the check's own normalisation
    assert leaks(offload, "the fix is ZeRO CPU offload of optimizer states.", own=False)  # the words, on any page
    assert not leaks(offload, "| 6.7b | no | CPU offload | 87.9 |", own=False)
    assert not leaks(offload, "LoRA r=16 fits")
    targets = Accepted("m", "check_targets", ["q_proj", "o_proj"])
    assert leaks(targets, "LoRA targets: o_proj, q_proj")
    assert not leaks(targets, "LoRA targets: q_a_proj, o_proj")  # q_proj only as part of another name


def test_catches_an_answer_in_a_notebook_output(tmp_path, monkeypatch):
    """End to end: a planted output in a notebook is reported against the module whose check accepts it."""
    answer = next(a for a in answers_of("nb02") if not _is_small_integer(a.expected))
    text = f"{answer.expected:.4g}" if isinstance(answer.expected, float) else str(answer.expected)
    page = {"cells": [{"cell_type": "code", "source": [], "outputs": [
        {"output_type": "execute_result", "data": {"text/plain": [f"answer: {text}"]}}]}]}
    assert leaks(answer, "\n".join(notebook_text(page)))
