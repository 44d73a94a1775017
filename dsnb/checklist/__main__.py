"""``python -m dsnb.checklist RECIPE.yaml``: the pre-flight checklist on a fine-tuning recipe, from a shell.

Loads the recipe's model and training data as ``python -m dsnb.train`` would, measures the data shift
against the course corpus when the model is the course's own (its pretraining text) or against
``--reference`` text files, runs the checks and prints the table. Exit status 1 if a check failed.
Taught in notebook 11.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from dsnb.train.config import ConfigError


def read_references(paths: list[str]) -> list[str]:
    """The ``--reference`` files as text; ``ConfigError`` naming one that is missing, a directory or not UTF-8."""
    from dsnb.data.records import _not_utf8

    texts = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            raise ConfigError(f"--reference {p}: is a directory; pass text files (one --reference per file)")
        if not path.is_file():
            raise ConfigError(f"--reference {p}: no such file")
        try:
            texts.append(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise ConfigError(f"--reference {p}: {_not_utf8(exc, f'byte {exc.start}')}") from None
    return texts


def _reference(texts: list[str], model: str, limit: int) -> list[str] | None:
    if texts:
        return texts
    from dsnb.model.pretrain import TINY_MODEL_NAME

    if model == TINY_MODEL_NAME:
        from dsnb.data.corpus import course_corpus

        return course_corpus().texts("train")[:limit]
    return None


def main(argv: list[str] | None = None) -> int:
    """Run the checklist on a recipe; return 0 if no check failed, 1 otherwise (2 for an unusable recipe or reference file)."""
    from dsnb.train.cli import load_config, parse_overrides

    parser = argparse.ArgumentParser(prog="python -m dsnb.checklist", description=__doc__.splitlines()[0])
    parser.add_argument("config", help="a YAML recipe, e.g. configs/sft/tiny.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config field (repeatable)")
    parser.add_argument("--processes", type=int, default=None,
                        help="check the batch against this many processes (default: this launch's)")
    parser.add_argument("--steps", type=int, default=12, help="steps of the short run")
    parser.add_argument("--examples", type=int, default=256, help="training examples to load and check")
    parser.add_argument("--reference", action="append", default=[], metavar="FILE",
                        help="a text file of the pretraining-style corpus (repeatable); the course model uses "
                             "its own pretraining corpus by default")
    parser.add_argument("--log-level", default="WARNING")
    ns = parser.parse_args(argv)
    logging.basicConfig(level=ns.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(ns.config, parse_overrides(ns.overrides))
        references = read_references(ns.reference)
    except ConfigError as exc:
        print(f"python -m dsnb.checklist: {exc}", file=sys.stderr)
        return 2
    from transformers.utils.logging import disable_progress_bar

    from dsnb.checklist.run import run_checklist
    from dsnb.model.load import ModelLoadError, load_model
    from dsnb.train.chat import load_split

    disable_progress_bar()
    try:
        model, tokenizer = load_model(cfg.model)
    except ModelLoadError as exc:
        print(f"python -m dsnb.checklist: {exc}", file=sys.stderr)
        return 2
    data = load_split(cfg, tokenizer, "train", min(ns.examples, cfg.train_examples or ns.examples))
    print(f"checklist: {ns.config}: {cfg.model}, {len(data)} training examples", flush=True)
    result = run_checklist(cfg, model, data, _reference(references, cfg.model, 2000), tokenizer=tokenizer,
                           processes=ns.processes, steps=ns.steps)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
