"""Typed values from text: one parser for ``dsnb.course -p``, ``dsnb.train --set`` and YAML recipes."""

from __future__ import annotations

import re
from typing import Any

import yaml

_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def parse_value(text: str) -> Any:
    """A command-line value as the type it spells: ``"4096"`` -> 4096, ``"1e-5"`` -> 1e-05, ``"false"`` -> False.

    Read as YAML (numbers, booleans, null, lists), as papermill's own ``-y`` does, with two fixes:
    Python spellings ``True``/``False``/``None`` work, and exponents without a dot (``1e-5``, a string
    in YAML 1.1) are numbers. Anything else stays a string (``deepseek-ai/deepseek-coder-1.3b-base``).
    """
    text = {"True": "true", "False": "false", "None": "null"}.get(text, text)
    parsed = yaml.safe_load(text)
    if isinstance(parsed, str) and _NUMBER.fullmatch(parsed):
        return float(parsed)
    return parsed
