"""Check functions and worked solutions for the notebooks' exercises (``dsnb.exercises.nb01`` ...).

An exercise cell in a notebook reads ``answer = None`` until the learner fills it in; the check
then prints a hint instead of failing, so the notebook still runs top to bottom. A filled-in
answer is compared with a value *computed* by dsnb (never a typed-in number). Each module also has
``solution(n)``, which prints the reasoning and the computation for exercise ``n``: a learner or a
workshop lead calls it on demand; no notebook calls it by default.

``accepted_answers(module)`` lists what each of a module's ``check_*`` functions accepts (the
computed value, its tolerance or normalisation), so a test can look for those answers on the pages.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import ModuleType
from typing import Any


@dataclass(frozen=True)
class Accepted:
    """What one exercise check accepts: ``expected`` within ``rel_tol`` (numbers) or after ``normalize``."""

    module: str
    check: str
    expected: Any
    rel_tol: float | None = None
    normalize: Callable[[Any], Any] | None = None


_recording: list[Accepted] | None = None  # a list while accepted_answers() runs the checks


def _record(expected: Any, rel_tol: float | None = None, normalize: Callable[[Any], Any] | None = None) -> None:
    if _recording is not None:
        _recording.append(Accepted("", "", expected, rel_tol, normalize))


def accepted_answers(module: ModuleType) -> list[Accepted]:
    """Each public ``check_*`` function of an exercise module, run unanswered, with the answer it accepts.

    Every check's first parameter is the learner's answer; run with ``None`` it prints its hint
    (swallowed here) after computing the expected value, which is recorded. A check with other
    parameters that have no default gets them from the module's ``CHECK_INPUTS[name]()`` (keyword
    arguments, e.g. the model the notebook built).
    """
    global _recording
    found = []
    for name, fn in sorted(vars(module).items()):
        if not (name.startswith("check_") and inspect.isfunction(fn) and fn.__module__ == module.__name__):
            continue
        params = list(inspect.signature(fn).parameters.values())[1:]
        needed = [p.name for p in params if p.default is inspect.Parameter.empty]
        inputs = getattr(module, "CHECK_INPUTS", {}).get(name, dict)() if needed else {}
        if set(needed) - set(inputs):
            raise TypeError(f"{module.__name__}.{name} needs {needed} besides the answer: give them defaults, or "
                            f"add CHECK_INPUTS = {{{name!r}: <function returning them as keywords>}} to the module")
        _recording = seen = []
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                fn(None, **inputs)
        finally:
            _recording = None
        if len(seen) != 1:
            raise RuntimeError(f"{module.__name__}.{name}(None) made {len(seen)} checks, expected one")
        a = seen[0]
        found.append(Accepted(module.__name__, name, a.expected, a.rel_tol, a.normalize))
    return found


def check_number(name: str, answer: float | None, expected: float, *, rel_tol: float = 0.02, hint: str = "") -> bool:
    """Compare a numeric answer with the computed ``expected`` value (relative tolerance)."""
    _record(expected, rel_tol=rel_tol)
    if answer is None:
        print(f"Exercise {name}: not answered yet. Hint: {hint}")
        return False
    try:
        value = float(answer)
    except (TypeError, ValueError):
        print(f"Exercise {name}: expected a number, got {answer!r}. {hint}")
        return False
    ok = math.isclose(value, float(expected), rel_tol=rel_tol)
    if ok:
        print(f"Exercise {name}: correct ({expected:,.6g}).")
    else:
        print(f"Exercise {name}: not quite: {value:,.6g} is not within {rel_tol:.0%} of the answer. {hint}")
    return ok


def check_choice(name: str, answer: Any, expected: Any, *, hint: str = "",
                 normalize: Callable[[Any], Any] | None = None) -> bool:
    """Compare an exact answer (a name, a set, a boolean) with the computed ``expected`` value.

    ``normalize`` maps both sides to a canonical form first, so that aliases (case, spacing, order,
    a spelled-out or abbreviated name) count as the same answer.
    """
    _record(expected, normalize=normalize)
    if answer is None:
        print(f"Exercise {name}: not answered yet. Hint: {hint}")
        return False
    norm = normalize or (lambda x: x)
    ok = norm(answer) == norm(expected)
    print(f"Exercise {name}: correct." if ok else f"Exercise {name}: not quite. {hint}")
    return ok


def words(text: Any) -> str:
    """Lower-case words of ``text`` joined by single spaces (punctuation other than ``=+.`` dropped)."""
    return " ".join(re.findall(r"[a-z0-9=+.]+", str(text).lower()))


def names(items: Iterable[str] | str) -> frozenset[str]:
    """A list of names as a set (order and case ignored); a comma- or space-separated string works too."""
    if isinstance(items, str):
        items = re.split(r"[,\s]+", items)
    return frozenset(str(x).strip().lower() for x in items if str(x).strip())


class Solutions:
    """Worked solutions of one notebook's exercises, printed only when asked for.

    ``register(n)`` decorates a function returning the solution's text (computed at call time);
    ``show(n)`` prints it. Each ``dsnb.exercises.nbNN`` module exposes ``solution = SOLUTIONS.show``.
    """

    def __init__(self, notebook: str) -> None:
        self.notebook = notebook
        self._texts: dict[int, Callable[[], str]] = {}

    def register(self, number: int) -> Callable[[Callable[[], str]], Callable[[], str]]:
        def deco(fn: Callable[[], str]) -> Callable[[], str]:
            self._texts[number] = fn
            return fn
        return deco

    def text(self, number: int) -> str:
        """The worked solution of exercise ``number`` as text."""
        if number not in self._texts:
            raise ValueError(f"notebook {self.notebook} has exercises {sorted(self._texts)}, not {number}")
        return f"Notebook {self.notebook}, exercise {number}: worked solution\n" + self._texts[number]().strip()

    def show(self, number: int) -> None:
        """Print the worked solution of exercise ``number`` (reasoning and computation)."""
        print(self.text(number))
