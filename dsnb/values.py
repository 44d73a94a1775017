"""Typed values from text: one parser for ``dsnb.course -p``, ``dsnb.train --set`` and YAML recipes."""

from __future__ import annotations

import re
from typing import Any

import yaml

#: Integers and floats as YAML 1.2 spells them: no octal ``010``, no sexagesimal ``1:30``, and an
#: exponent needs no dot (``1e-5``).
_INT = re.compile(r"^(?:[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$")
_FLOAT = re.compile(r"""^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X)
_RETYPED = {"tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:timestamp"}


class CourseLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` without YAML 1.1's surprises: ``010`` and ``0777`` are not octal, ``1:30`` is
    not 90 (base 60), ``2024-01-01`` is not a date; those stay strings. ``1e-5`` is a number."""


CourseLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in _RETYPED]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
CourseLoader.add_implicit_resolver("tag:yaml.org,2002:int", _INT, list("-+0123456789"))
CourseLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def load_yaml(text: str) -> Any:
    """Parse YAML text with ``CourseLoader`` (what the recipes and ``parse_value`` use)."""
    return yaml.load(text, Loader=CourseLoader)  # noqa: S506 - CourseLoader is a SafeLoader


def parse_value(text: str) -> Any:
    """A command-line value as the type it spells: ``"4096"`` -> 4096, ``"1e-5"`` -> 1e-05, ``"false"`` -> False.

    Read as YAML (numbers, booleans, null, lists), as papermill's own ``-y`` does, with fixes:
    Python spellings ``True``/``False``/``None`` work, exponents without a dot (``1e-5``, a string
    in YAML 1.1) are numbers, and leading-zero (``010``), base-60 (``1:30``) and date-like
    (``2024-01-01``) values stay strings instead of becoming 8, 90 and a date. Anything else stays
    a string (``deepseek-ai/deepseek-coder-1.3b-base``).
    """
    text = {"True": "true", "False": "false", "None": "null"}.get(text, text)
    return load_yaml(text)
