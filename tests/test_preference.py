"""Preference pairs from the corpus (dsnb.data.preference) and the preference record files."""

from __future__ import annotations

from pathlib import Path

import pytest

from dsnb.data.corpus import SUMMARY_PROMPT, InstructionPair
from dsnb.data.preference import (
    KINDS,
    build_pairs,
    load_preference_file,
    mix,
    preference_dataset,
    to_conversational,
    token_f1,
    truncate_answer,
)
from dsnb.data.records import DataValidationError, load_records

SAMPLES = Path(__file__).parent.parent / "data_samples"


def _fn(name: str, summary: str) -> InstructionPair:
    return InstructionPair("m", "train", f"m.{name}", f"def {name}(x):", summary, f"def {name}(x):\n    pass\n")


FNS = [_fn("isabs", "Test whether a path is absolute."), _fn("dumps", "Serialize obj to a JSON formatted str."),
       _fn("getsize", "Return the size of a file, reported by os.stat()."), _fn("ok", "Yes."),
       _fn("split", "Split a pathname into a pair (head, tail).")]


def test_token_f1_by_hand():
    assert token_f1("Return the size.", "Return the size.") == 1.0
    assert token_f1("open a file", "Return the size.") == 0.0
    # prediction "return the file" vs reference "return the size": 2 common of 3 and 3 -> F1 2/3
    assert token_f1("return the file", "Return the size") == pytest.approx(2 / 3)
    assert token_f1("", "") == 1.0 and token_f1("", "x") == 0.0


def test_truncate_answer():
    assert truncate_answer("Test whether a path is absolute.") == "Test whether a"
    assert truncate_answer("Yes.") is None and truncate_answer("Two words") is None


def test_build_pairs_is_deterministic_and_reports_its_mix():
    a = build_pairs(FNS, ("other_summary", "truncated"))
    assert a == build_pairs(list(FNS), ("other_summary", "truncated"))
    assert len(a) == len(FNS)
    assert sum(mix(a).values()) == len(a) and set(mix(a)) <= set(KINDS)
    for rec, fn in zip(a, FNS, strict=True):
        assert rec["prompt"] == SUMMARY_PROMPT + fn.signature and rec["chosen"] == fn.summary
        assert rec["rejected"] != rec["chosen"]
        if rec["kind"] == "truncated":
            assert fn.summary.startswith(rec["rejected"])
        else:
            assert rec["rejected"] in {f.summary for f in FNS if f is not fn}
    # a summary too short to truncate falls back to another kind
    assert build_pairs([FNS[3], FNS[0]], ("truncated", "other_summary"))[0]["kind"] == "other_summary"


def test_sft_samples_are_used_only_when_wrong():
    samples = {"m.isabs": "Test whether a path is absolute.", "m.dumps": "Open the file."}
    recs = {r["qualname"]: r for r in build_pairs(FNS[:2], ("sft_sample",), samples)}
    assert "m.isabs" not in recs  # the model's answer was right: not a rejected answer
    assert recs["m.dumps"]["rejected"] == "Open the file." and recs["m.dumps"]["kind"] == "sft_sample"
    with pytest.raises(ValueError, match="sft_samples"):
        build_pairs(FNS, ("sft_sample",))
    with pytest.raises(ValueError, match="kinds"):
        build_pairs(FNS, ("random",))


def test_conversational_format_is_what_trl_reads():
    from trl.data_utils import is_conversational

    rec = build_pairs(FNS[:2], ("truncated",))[0]
    conv = to_conversational(rec)
    assert conv["prompt"] == [{"role": "user", "content": rec["prompt"]}]
    assert conv["chosen"][0]["role"] == conv["rejected"][0]["role"] == "assistant"
    assert is_conversational(conv)
    ds = preference_dataset([rec])
    assert ds.column_names[:3] == ["prompt", "chosen", "rejected"] and len(ds) == 1
    with pytest.raises(ValueError, match="no preference pairs"):
        preference_dataset([])


def test_sample_file_loads_as_conversational_pairs():
    ds = load_preference_file(SAMPLES / "preference_pairs.jsonl")
    assert len(ds) >= 6 and {"other_summary", "truncated", "sft_sample"} <= set(ds["kind"])
    assert all(r["chosen"][0]["content"] != r["rejected"][0]["content"] for r in ds)


def test_broken_preference_file_gives_line_numbered_errors():
    path = SAMPLES / "broken_preference_pairs.jsonl"
    with pytest.raises(DataValidationError) as info:
        load_records(path, "preference")
    got = [(e.line, e.problem.split(":")[0]) for e in info.value.errors]
    assert got == [
        (2, "missing required field 'rejected'"),
        (3, "'chosen' and 'rejected' are the same text"),
        (4, "invalid JSON"),
        (5, "field 'rejected' should be str, got list"),
        (6, "field 'prompt' is empty"),
    ]
    kept = load_records(path, "preference", skip_bad_rows=True)
    assert kept.rows_kept == 1 and len(kept.errors) == 5
