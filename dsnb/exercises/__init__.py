"""Check functions and worked solutions for the notebooks' exercises (``dsnb.exercises.nb01`` ...).

An exercise cell in a notebook reads ``answer = None`` until the learner fills it in; the check
then prints a hint instead of failing, so the notebook still runs top to bottom. A filled-in
answer is compared with a value *computed* by dsnb (never a typed-in number). Each module also has
``solution(n)``, which prints the reasoning and the computation for exercise ``n``: a learner or a
workshop lead calls it on demand; no notebook calls it by default.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from typing import Any


def check_number(name: str, answer: float | None, expected: float, *, rel_tol: float = 0.02, hint: str = "") -> bool:
    """Compare a numeric answer with the computed ``expected`` value (relative tolerance)."""
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
