"""Preference pairs (prompt, chosen, rejected) built from the course corpus, for DPO.

The prompt asks for a function's one-line summary from its signature (the SFT task of notebook 03);
``chosen`` is the function's real docstring summary. ``rejected`` is a plausible wrong answer of
one of these kinds:

- ``other_summary``: the summary of another function of the same split (fluent, but about
  something else);
- ``truncated``: the reference cut after about half of its words (right start, unfinished);
- ``sft_sample``: the SFT model's own greedy answer where it is wrong (token-F1 against the
  reference below a threshold). The samples come from the model, so ``dsnb.train.dpo`` generates
  them and passes them in here as text.

Each pair records its ``kind`` so the mix can be reported. ``to_conversational`` gives the
conversational ``prompt`` / ``chosen`` / ``rejected`` format TRL's ``DPOTrainer`` reads;
``load_preference_file`` reads (and validates, with line numbers) a ``preference`` records file.
``token_f1`` (``dsnb.data.words``) is the fixed judge used for head-to-head comparisons. Taught in notebook 06.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import datasets

from dsnb.data.corpus import SUMMARY_PROMPT, InstructionPair
from dsnb.data.records import load_records
from dsnb.data.words import token_f1

KINDS = ("other_summary", "truncated", "sft_sample")

def _stable_int(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def truncate_answer(text: str, keep: float = 0.5) -> str | None:
    """The first ``keep`` share of ``text``'s words (at least one dropped); None if under 3 words."""
    words = text.split()
    if len(words) < 3:
        return None
    n = max(1, min(len(words) - 1, round(len(words) * keep)))
    return " ".join(words[:n])


def _other_summary(pair: InstructionPair, pool: list[InstructionPair]) -> str | None:
    """A summary of another function in ``pool`` that differs from ``pair``'s (chosen by a stable hash)."""
    start = _stable_int(pair.qualname) % len(pool)
    for step in range(len(pool)):
        other = pool[(start + step) % len(pool)]
        if other.qualname != pair.qualname and token_f1(other.summary, pair.summary) < 0.5:
            return other.summary
    return None


def build_pairs(
    pairs: list[InstructionPair],
    kinds: Iterable[str] = ("other_summary", "truncated"),
    sft_samples: Mapping[str, str] | None = None,
    instruction: str = SUMMARY_PROMPT,
    wrong_below: float = 0.5,
) -> list[dict[str, str]]:
    """One preference record per pair: ``prompt``, ``chosen``, ``rejected``, ``kind``, ``qualname``.

    Kinds rotate over the pairs (by a stable hash of the function's name, so the result does not
    depend on order or on the machine); a pair that cannot make its kind (a summary too short to
    truncate, a correct SFT sample) falls back to the next kind in ``kinds``. ``sft_samples`` maps a
    function's ``qualname`` to the SFT model's greedy answer; it is used (kind ``sft_sample``) only
    when its token-F1 against the reference is below ``wrong_below``.
    """
    kinds = tuple(kinds)
    unknown = set(kinds) - set(KINDS)
    if unknown or not kinds:
        raise ValueError(f"kinds={kinds!r}: choose one or more of {KINDS}")
    if "sft_sample" in kinds and sft_samples is None:
        raise ValueError("kind 'sft_sample' needs sft_samples={qualname: the SFT model's answer} "
                         "(dsnb.train.dpo.sft_samples makes them)")
    pool = list(pairs)
    out: list[dict[str, str]] = []
    for pair in pool:
        first = _stable_int("kind:" + pair.qualname) % len(kinds)
        for k in range(len(kinds)):
            kind = kinds[(first + k) % len(kinds)]
            if kind == "other_summary":
                rejected = _other_summary(pair, pool)
            elif kind == "truncated":
                rejected = truncate_answer(pair.summary)
            else:
                sample = (sft_samples or {}).get(pair.qualname)
                rejected = sample if sample and sample.strip() and token_f1(sample, pair.summary) < wrong_below \
                    else None
            if rejected is not None and rejected.strip() != pair.summary.strip():
                out.append({"prompt": instruction + pair.signature, "chosen": pair.summary, "rejected": rejected,
                            "kind": kind, "qualname": pair.qualname})
                break
    return out


def mix(records: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """How many pairs of each rejected kind (the mix to report)."""
    return dict(sorted(Counter(r["kind"] for r in records).items()))


def to_conversational(record: Mapping[str, Any]) -> dict[str, Any]:
    """A string record as TRL's conversational preference format (user prompt, assistant answers).

    Other fields (``kind``, ``qualname``) are kept as they are.
    """
    out = dict(record)
    out["prompt"] = [{"role": "user", "content": record["prompt"]}]
    out["chosen"] = [{"role": "assistant", "content": record["chosen"]}]
    out["rejected"] = [{"role": "assistant", "content": record["rejected"]}]
    return out


def preference_dataset(records: Iterable[Mapping[str, Any]]) -> datasets.Dataset:
    """A ``datasets.Dataset`` of conversational pairs, ready for ``trl.DPOTrainer``."""
    rows = [to_conversational(r) for r in records]
    if not rows:
        raise ValueError("no preference pairs: build some with build_pairs or load a file with load_preference_file")
    return datasets.Dataset.from_list(rows)


def load_preference_file(path: str | Path, skip_bad_rows: bool = False) -> datasets.Dataset:
    """Read a ``preference`` records file (JSONL, JSON or Parquet), validated, as a conversational dataset.

    Malformed rows raise ``dsnb.data.records.DataValidationError`` naming file, line and problem
    (or are skipped and logged with ``skip_bad_rows=True``).
    """
    result = load_records(path, "preference", skip_bad_rows=skip_bad_rows)
    return preference_dataset(result.dataset.to_list())
