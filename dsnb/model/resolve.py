"""Model names to what ``from_pretrained`` reads: one resolver for training, recipes and serving.

``resolve_model(name)`` returns the directory of a course model (``"dsnb-tiny"``, the base model of
notebook 01; ``"dsnb-tiny-sft"``, notebook 03's SFT run of it), the ``Path`` of a local directory, or
the string itself for a hub id such as ``"deepseek-ai/deepseek-coder-1.3b-base"``.

A course model lives in the course cache (``dsnb.cache.cache_dir``) and is built on first use by a
*builder*. This package builds the base model itself; the SFT model is trained by ``dsnb.train``, a
higher floor that this one must not import, so ``dsnb.train`` registers its builder here when it is
imported (``register_builder``). Hence, honestly:

- in a process that has imported ``dsnb.train`` (notebooks, ``python -m dsnb.train``, the tests) a
  course model is built if it is missing or was built from another recipe, then returned;
- in one that has not (``python -m dsnb.serve model``) the cached model is returned as it was last
  built, and a missing one raises ``ModelLoadError`` naming the command that builds it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from dsnb.cache import cache_dir
from dsnb.model.pretrain import TINY_MODEL_NAME, base_model_path

#: ``model: dsnb-tiny-sft`` in a recipe: notebook 03's SFT model of the course (cached).
TINY_SFT_NAME = "dsnb-tiny-sft"

#: Course models built by a higher floor: name -> (its directory in the course cache, the command that builds it).
BUILT_ABOVE: dict[str, tuple[str, str]] = {
    TINY_SFT_NAME: ("sft_model", "python -c 'from dsnb.train.dpo import sft_model_path; sft_model_path()'   "
                                 "(about 30 s on a CPU; notebook 06 builds it too)"),
}

_builders: dict[str, Callable[[], Path]] = {TINY_MODEL_NAME: base_model_path}


class ModelLoadError(RuntimeError):
    """A model or tokenizer could not be loaded; the message says what to do."""


def register_builder(name: str, build: Callable[[], Path]) -> None:
    """Let ``resolve_model(name)`` build course model ``name`` with ``build`` (which returns its directory)."""
    if name not in BUILT_ABOVE:
        raise ValueError(f"{name!r} is not a course model built above dsnb.model; choose from {sorted(BUILT_ABOVE)}")
    _builders[name] = build


def course_model_dir(name: str) -> Path:
    """Where course model ``name`` (one of ``BUILT_ABOVE``) lives in the course cache, built or not."""
    return cache_dir() / BUILT_ABOVE[name][0]


def looks_like_path(name: str) -> bool:
    """A local path (existing, or written like one) rather than a hub id such as ``org/name``."""
    if Path(name).expanduser().exists() or name.startswith((".", "/", "~")) or "\\" in name:
        return True
    return re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name) is None


def resolve_model(name_or_path: str | Path) -> Path | str:
    """A course model's directory (built first where this process can), a local ``Path``, or a hub id string.

    Raises ``ModelLoadError`` for a course model that is not built and that this process cannot build.
    """
    if isinstance(name_or_path, Path):
        return name_or_path.expanduser()
    name = str(name_or_path)
    if name in _builders:
        return _builders[name]()
    if name in BUILT_ABOVE:
        path, command = course_model_dir(name), BUILT_ABOVE[name][1]
        if (path / "config.json").is_file():  # written atomically: it exists only once it is complete
            return path
        raise ModelLoadError(
            f"{name!r} has not been built on this machine yet ({path} holds no model), and this process cannot "
            f"build it (it is trained by dsnb.train, which it has not imported). Build it once with\n    {command}\n"
            "then try again.")
    return Path(name).expanduser() if looks_like_path(name) else name
