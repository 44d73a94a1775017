"""Check functions for the notebooks' exercises, one module per notebook (``dsnb.exercises.nb01`` ...).

An exercise cell in a notebook reads ``answer = None`` until the learner fills it in; the check
then prints a hint instead of failing, so the notebook still runs top to bottom. A filled-in
answer is compared with a value *computed* by dsnb (never a typed-in number).
"""

from __future__ import annotations

import math
from typing import Any


def check_number(name: str, answer: float | None, expected: float, *, rel_tol: float = 0.02, hint: str = "") -> bool:
    """Compare a numeric answer with the computed ``expected`` value (relative tolerance)."""
    if answer is None:
        print(f"Exercise {name}: not answered yet. Hint: {hint}")
        return False
    ok = math.isclose(float(answer), float(expected), rel_tol=rel_tol)
    if ok:
        print(f"Exercise {name}: correct ({expected:,.6g}).")
    else:
        print(f"Exercise {name}: not quite: {float(answer):,.6g} is not within {rel_tol:.0%} of the answer. {hint}")
    return ok


def check_choice(name: str, answer: Any, expected: Any, *, hint: str = "") -> bool:
    """Compare an exact answer (a name, a set, a boolean) with the computed ``expected`` value."""
    if answer is None:
        print(f"Exercise {name}: not answered yet. Hint: {hint}")
        return False
    ok = answer == expected
    print(f"Exercise {name}: correct." if ok else f"Exercise {name}: not quite. {hint}")
    return ok
