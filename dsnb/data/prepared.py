"""Notebook 02's cleaned splits on disk, read back through ``dsnb.data.records`` without running the pipeline.

``dsnb.data.pipeline.prepare_data`` writes each cleaned split as validated JSONL under
``cache_dir("data")/<key>/<kind>/<split>.jsonl`` with a ``report.json`` that names the corpus
fingerprint. Training (``dsnb.train.chat.load_split``'s ``dialogue`` task) and notebooks 03-06 read
those files here: no OCR, MinHash or dialogue generation runs inside training, and this module needs
none of the ``data`` extra's packages. If nothing was prepared yet, ``PreparedDataMissing`` says how
to prepare it.
"""

from __future__ import annotations

import json
from pathlib import Path

from dsnb.cache import cache_dir

#: The cleaned splits prepare_data writes, and the record type each is validated as.
PREPARED_KINDS = {"text": "pretraining", "chat": "chat", "code": "pretraining"}


class PreparedDataMissing(FileNotFoundError):
    """No cleaned data has been prepared for this corpus yet."""


def find_prepared(fingerprint: str | None = None) -> Path | None:
    """The most recently written complete prepared directory (for the corpus ``fingerprint``, if given)."""
    found = []
    for report in cache_dir("data").glob("*/report.json"):
        try:
            written = json.loads(report.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # a directory being written or a damaged one: not a usable result
        if fingerprint is None or written.get("fingerprint") == fingerprint:
            found.append((report.stat().st_mtime_ns, report.parent))
    return max(found)[1] if found else None


def load_prepared(kind: str, split: str = "train", directory: str | Path | None = None,
                  fingerprint: str | None = None):
    """A cleaned split (``kind``: text, chat or code) as a validated ``datasets.Dataset``.

    ``directory``: what ``prepare_data`` returned; by default the newest one prepared for ``fingerprint``
    (the course corpus's when called from training).
    """
    from dsnb.data.records import load_records

    if kind not in PREPARED_KINDS:
        raise ValueError(f"unknown kind {kind!r}; use one of {tuple(PREPARED_KINDS)}")
    if directory is None:
        directory = find_prepared(fingerprint)
        if directory is None:
            raise PreparedDataMissing(
                f"no cleaned {kind!r} data prepared under {cache_dir('data')} for corpus {fingerprint or '(any)'}: "
                "run notebook 02, or `python -m dsnb.data.pipeline` (about a minute), then try again")
    return load_records(Path(directory) / kind / f"{split}.jsonl", PREPARED_KINDS[kind]).dataset
