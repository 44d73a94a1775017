"""Loading and schema validation of every record type and format (dsnb.data.records)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dsnb.data.records import DataValidationError, load_records, validate_record

SAMPLES = Path(__file__).parent.parent / "data_samples"
BROKEN = SAMPLES / "broken_instruction_pairs.jsonl"


@pytest.mark.parametrize(
    "name, record_type, rows",
    [
        ("pretraining_text", "pretraining", 3),
        ("instruction_pairs.jsonl", "instruction", 3),
        ("chat_conversations.json", "chat", 2),
        ("preference_pairs.parquet", "preference", 2),
        ("image_text_pairs.jsonl", "image_text", 2),
    ],
)
def test_every_sample_loads(name, record_type, rows):
    result = load_records(SAMPLES / name, record_type)
    assert result.rows_in == result.rows_kept == rows
    assert not result.errors


def test_broken_file_gives_exact_line_numbered_errors():
    with pytest.raises(DataValidationError) as info:
        load_records(BROKEN, "instruction")
    got = [(e.line, e.problem.split(":")[0]) for e in info.value.errors]
    assert got == [
        (2, "invalid JSON"),
        (3, "missing required field 'output'"),
        (5, "field 'output' should be str, got int"),
        (6, "field 'instruction' is empty"),
        (7, "expected a JSON object, got list"),
    ]
    assert all(e.file == str(BROKEN) for e in info.value.errors)
    assert f"{BROKEN}:2: invalid JSON" in str(info.value)
    assert "skip_bad_rows=True" in str(info.value)


def test_skip_bad_rows_keeps_good_ones_and_reports_each_bad_one():
    result = load_records(BROKEN, "instruction", skip_bad_rows=True)
    assert result.rows_in == 7  # the blank line 4 is not a record
    assert result.rows_kept == 2
    assert [e.line for e in result.errors] == [2, 3, 5, 6, 7]
    assert result.dataset["output"] == ["Test whether a path is absolute.", "Return the size of a file."]


def test_json_array_line_numbers(tmp_path):
    path = tmp_path / "chat.json"
    path.write_text('[\n  {"messages": [{"role": "user", "content": "hi"},\n   {"role": "assistant", "content": "yo"}]},\n'
                    '  {"messages": [{"role": "user", "content": "only a question"}]},\n'
                    '  {"messages": [{"role": "robot", "content": "x"}]}\n]\n')
    result = load_records(path, "chat", skip_bad_rows=True)
    assert [(e.line, e.problem[:20]) for e in result.errors] == [(4, "no 'assistant' messa"), (5, "message 0 must be {'")]
    bad = tmp_path / "bad.json"
    bad.write_text('[\n {"messages": []},\n {oops}\n]')
    with pytest.raises(DataValidationError) as info:
        load_records(bad, "chat")
    assert info.value.errors[0].line == 3


def test_parquet_reports_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"prompt": ["p", "q"], "chosen": ["a", "b"], "rejected": ["a", "c"]}), tmp_path / "p.parquet")
    result = load_records(tmp_path / "p.parquet", "preference", skip_bad_rows=True)
    assert result.rows_kept == 1 and result.dataset["prompt"] == ["q"]
    assert str(result.errors[0]).endswith("row 1: 'chosen' and 'rejected' are the same text")


def test_text_folder_reports_empty_and_non_utf8(tmp_path):
    (tmp_path / "a.txt").write_text("hello world")
    (tmp_path / "b.txt").write_text("  ")
    (tmp_path / "c.txt").write_bytes(b"\xff\xfe bad")
    result = load_records(tmp_path, "pretraining", skip_bad_rows=True)
    assert result.dataset["text"] == ["hello world"]
    assert [(Path(e.file).name, e.problem.split(" ")[0]) for e in result.errors] == [("b.txt", "file"), ("c.txt", "not")]


def test_validate_record_cases(tmp_path):
    assert validate_record({"text": "x", "extra": 1}, "pretraining") == []
    assert validate_record({"instruction": "a", "output": "b", "input": 3}, "instruction") == [
        "field 'input' should be str, got int"]
    assert validate_record({"image": "nope.png", "text": "t"}, "image_text", base_dir=tmp_path) == [
        "image file 'nope.png' not found next to the data file"]
    with pytest.raises(ValueError, match="unknown record type"):
        validate_record({}, "audio")


def test_clear_errors_for_user_mistakes(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_records(tmp_path / "missing.jsonl", "pretraining")
    (tmp_path / "x.csv").write_text("a")
    with pytest.raises(ValueError, match="cannot tell the format"):
        load_records(tmp_path / "x.csv", "pretraining")


def test_missing_optional_field_is_kept_as_none(tmp_path):
    path = tmp_path / "i.jsonl"
    path.write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n"
                    + json.dumps({"instruction": "c", "input": "d", "output": "e"}) + "\n")
    assert load_records(path, "instruction").dataset["input"] == [None, "d"]
