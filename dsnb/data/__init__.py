"""Data: the course corpus, record loading and validation, and the four cleaning dimensions (notebooks 01, 02)."""

from __future__ import annotations

#: Import names whose pip distribution is called something else.
_DISTRIBUTIONS = {"PIL": "pillow"}


def missing_extra(exc: ModuleNotFoundError, extra: str = "data") -> ModuleNotFoundError:
    """The error to raise when a package of one of dsnb's extras is missing: it names the extra to install.

    ``pip install dsnb`` leaves notebook 02's cleaning libraries out (they pull SciPy and OCR
    bindings that training code never needs); ``make setup`` installs every extra.
    """
    name = (exc.name or "").split(".")[0]
    dist = _DISTRIBUTIONS.get(name, name)
    return ModuleNotFoundError(
        f"{dist} is not installed; it comes with dsnb's {extra!r} extra: pip install 'dsnb[{extra}]' "
        f"(in a clone of the course: pip install -e '.[{extra}]', or make setup, which installs every extra)",
        name=exc.name,
    )
