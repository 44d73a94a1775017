"""Loading training data from files and validating every record against its type's schema.

The course reads five record types, each a flat JSON-like shape:

===============  ===========================================================================
record type      fields
===============  ===========================================================================
``pretraining``  ``text`` (str)
``instruction``  ``instruction`` (str), ``output`` (str), optional ``input`` (str)
``chat``         ``messages``: a list of ``{"role": system|user|assistant, "content": str}``
``preference``   ``prompt`` (str), ``chosen`` (str), ``rejected`` (str), chosen != rejected
``image_text``   ``image`` (a path, relative to the data file) and ``text`` (str)
===============  ===========================================================================

Extra fields are allowed (metadata such as ``source`` or ``complexity``) and kept.

``load_records`` reads JSONL, JSON (a top-level array), Parquet, or a folder of ``.txt`` files and
returns a ``datasets.Dataset``. JSON and JSONL are parsed line by line with the standard library so
that a broken line is reported with its exact line number (the ``datasets`` JSON loader only says
*that* the file is broken); Parquet and text folders go through ``datasets.load_dataset``. A bad
record raises ``DataValidationError`` naming file, line and problem; with ``skip_bad_rows=True``
the bad rows are left out and every one of them is still listed in ``LoadResult.errors`` (and
logged). Taught in notebook 02; every later notebook loads its data through it.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets

logger = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")

#: Required fields (name -> Python type) of each record type; optional fields below.
SCHEMAS: dict[str, dict[str, type]] = {
    "pretraining": {"text": str},
    "instruction": {"instruction": str, "output": str},
    "chat": {"messages": list},
    "preference": {"prompt": str, "chosen": str, "rejected": str},
    "image_text": {"image": str, "text": str},
}
OPTIONAL: dict[str, dict[str, type]] = {"instruction": {"input": str}}
RECORD_TYPES = tuple(SCHEMAS)
FORMATS = ("jsonl", "json", "parquet", "text")


class DataValidationError(ValueError):
    """One or more records are malformed; ``errors`` lists each (file, line, problem)."""

    def __init__(self, errors: list[RecordError]):
        self.errors = errors
        shown = "\n".join(f"  {e}" for e in errors[:20])
        more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
        super().__init__(
            f"{len(errors)} malformed record(s):\n{shown}{more}\n"
            "Fix these rows, or pass skip_bad_rows=True to leave them out (each is still reported)."
        )


@dataclass(frozen=True)
class RecordError:
    """A malformed record: where it is (file and 1-based line, or row for Parquet) and what is wrong."""

    file: str
    line: int
    problem: str
    unit: str = "line"

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.problem}" if self.unit == "line" else (
            f"{self.file} {self.unit} {self.line}: {self.problem}")


@dataclass
class LoadResult:
    """What ``load_records`` read: the valid rows as a ``datasets.Dataset`` and every error found."""

    dataset: datasets.Dataset
    record_type: str
    path: str
    rows_in: int
    errors: list[RecordError] = field(default_factory=list)

    @property
    def rows_kept(self) -> int:
        return len(self.dataset)


def validate_record(record: Any, record_type: str, base_dir: str | Path | None = None) -> list[str]:
    """The problems of one record against the schema of ``record_type`` (an empty list if it is valid).

    For ``image_text`` records the image path is resolved against ``base_dir`` and must exist.
    Taught in notebook 02.
    """
    if record_type not in SCHEMAS:
        raise ValueError(f"unknown record type {record_type!r}; use one of {RECORD_TYPES}")
    if not isinstance(record, dict):
        return [f"expected a JSON object, got {type(record).__name__}"]
    problems = []
    for name, typ in SCHEMAS[record_type].items():
        if name not in record or record[name] is None:
            problems.append(f"missing required field {name!r}")
        elif not isinstance(record[name], typ):
            problems.append(f"field {name!r} should be {typ.__name__}, got {type(record[name]).__name__}")
        elif typ is str and not record[name].strip():
            problems.append(f"field {name!r} is empty")
    for name, typ in OPTIONAL.get(record_type, {}).items():
        if record.get(name) is not None and not isinstance(record[name], typ):
            problems.append(f"field {name!r} should be {typ.__name__}, got {type(record[name]).__name__}")
    if problems:
        return problems
    if record_type == "chat":
        problems += _chat_problems(record["messages"])
    elif record_type == "preference" and record["chosen"].strip() == record["rejected"].strip():
        problems.append("'chosen' and 'rejected' are the same text")
    elif record_type == "image_text" and base_dir is not None and not (Path(base_dir) / record["image"]).is_file():
        problems.append(f"image file {record['image']!r} not found next to the data file")
    return problems


def _chat_problems(messages: list) -> list[str]:
    if not messages:
        return ["'messages' is empty"]
    problems = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in ROLES:
            problems.append(f"message {i} must be {{'role': one of {ROLES}, 'content': str}}, got {m!r:.80}")
    if not problems and not any(m["role"] == "assistant" for m in messages):
        problems.append("no 'assistant' message: nothing to train on")
    return problems


def samples_dir() -> Path:
    """The repository's ``data_samples`` folder: one small file per record type and a broken file.

    Found next to the package in a source checkout (``pip install -e .``), as the course installs it.
    """
    path = Path(__file__).resolve().parents[2] / "data_samples"
    if not path.is_dir():
        raise FileNotFoundError(f"{path} not found: data_samples/ ships with the course repository; run from a "
                                "checkout installed with `pip install -e .`")
    return path


def detect_format(path: str | Path) -> str:
    """The file format of ``path`` from its suffix (a directory is a folder of ``.txt`` files)."""
    path = Path(path)
    if path.is_dir():
        return "text"
    suffix = path.suffix.lower()
    fmt = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".txt": "text"}.get(suffix)
    if fmt is None:
        raise ValueError(f"cannot tell the format of {path} from its suffix; pass fmt= one of {FORMATS}")
    return fmt


def _not_utf8(exc: UnicodeDecodeError, where: str) -> str:
    return (f"not UTF-8 text ({exc.reason}: byte 0x{exc.object[exc.start]:02x} at {where}); re-save the file "
            "as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)")


class NotUTF8(ValueError):
    """A whole file that is not UTF-8: ``line`` and ``column`` (1-based) of the first bad byte, and what to do."""

    def __init__(self, exc: UnicodeDecodeError) -> None:
        raw = exc.object
        self.line = raw.count(b"\n", 0, exc.start) + 1
        self.column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        super().__init__(_not_utf8(exc, f"line {self.line}, column {self.column}"))
        self.column_message = _not_utf8(exc, f"column {self.column}")


def read_utf8(path: Path) -> str:
    """The text of ``path`` (a BOM dropped); ``NotUTF8`` with the line and column of the first byte that is not UTF-8."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise NotUTF8(exc) from None


_SURROGATE = re.compile("[\ud800-\udfff]")


class _Undecodable:
    """A JSON value the standard decoder refused although it is well formed (too deep, a huge integer)."""

    def __init__(self, problem: str) -> None:
        self.problem = problem


def _decode_problem(exc: Exception) -> str:
    """What is wrong with a JSON value that ``json`` could not turn into Python (not a syntax error)."""
    if isinstance(exc, RecursionError):
        return (f"nested more than about {sys.getrecursionlimit()} levels deep (lists or objects inside each other); "
                "flatten the record")
    if "digits" in str(exc):
        return (f"a number with more than {sys.get_int_max_str_digits()} digits ({exc}); store such a value as a "
                "string")
    return f"invalid JSON value: {exc}"


def _surrogate_problem(record: Any) -> str | None:
    """The first field of a decoded record holding a lone UTF-16 surrogate (JSON's ``"\\ud800"`` escape alone),
    which is not Unicode text: writing it as UTF-8 (Arrow, a tokenizer) fails. None if there is none."""
    stack: list[tuple[str, Any]] = [("", record)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, str):
            bad = _SURROGATE.search(value)
            if bad:
                return (f"field {where or 'the record'!r} holds a lone UTF-16 surrogate \\u{ord(bad.group()):04x} "
                        "(half of an escaped pair): not valid text; fix or remove that \\u escape")
        elif isinstance(value, dict):
            for key, item in reversed(value.items()):
                name = f"{where}.{key}" if where else str(key)
                if _SURROGATE.search(str(key)):
                    return f"the key {name!r} holds a lone UTF-16 surrogate: not valid text; fix that \\u escape"
                stack.append((name, item))
        elif isinstance(value, list):
            stack.extend((f"{where}[{i}]", item) for i, item in reversed(list(enumerate(value))))
    return None


def _jsonl_rows(path: Path) -> tuple[list[tuple[int, Any]], list[RecordError]]:
    """Records of a JSONL file, decoded line by line so that a bad byte is reported with its line."""
    rows, errors = [], []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                errors.append(RecordError(str(path), lineno, _not_utf8(exc, f"column {exc.start + 1}")))
                continue
            if not line.strip():
                continue  # blank lines are not records
            try:
                value = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as exc:
                errors.append(RecordError(str(path), lineno, f"invalid JSON: {exc.msg} (column {exc.colno})"))
                continue
            except (RecursionError, ValueError) as exc:
                errors.append(RecordError(str(path), lineno, _decode_problem(exc)))
                continue
            problem = _surrogate_problem(value) if "\\u" in line else None
            if problem:
                errors.append(RecordError(str(path), lineno, problem))
            else:
                rows.append((lineno, value))
    return rows, errors


def _json_array_rows(path: Path) -> tuple[list[tuple[int, Any]], list[RecordError]]:
    """Elements of a top-level JSON array, each with the line it starts on (one pass: linear time)."""
    try:
        text = read_utf8(path)
    except NotUTF8 as exc:
        return [], [RecordError(str(path), exc.line, exc.column_message)]
    rows = _array_elements(text)
    if rows is not None:
        escapes = "\\u" in text
        good, errors = [], []
        for line, value in rows:
            problem = value.problem if isinstance(value, _Undecodable) else (
                _surrogate_problem(value) if escapes else None)
            if problem:
                errors.append(RecordError(str(path), line, problem))
            else:
                good.append((line, value))
        return good, errors
    try:  # not a well-formed array: let the standard parser say what is wrong, and where
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return [], [RecordError(str(path), exc.lineno, f"invalid JSON: {exc.msg} (column {exc.colno})")]
    except (RecursionError, ValueError) as exc:
        return [], [RecordError(str(path), 1, _decode_problem(exc))]
    if not isinstance(data, list):
        return [], [RecordError(str(path), 1, f"expected a top-level JSON array, got {type(data).__name__}")]
    return [(1, value) for value in data], []


_SPACE = re.compile(r"[ \t\r\n]*")
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_PLAIN = re.compile(r'[^"\[\]{}]+')
_SCALAR = re.compile(r"[^,\]}\s]+")


def _value_end(text: str, pos: int) -> int | None:
    """Where the JSON value starting at ``pos`` ends, found by counting brackets outside strings (no recursion:
    for values the decoder refuses, so that the next element can still be read). None if it does not end."""
    if text[pos] not in "[{":
        scalar = _STRING.match(text, pos) if text[pos] == '"' else _SCALAR.match(text, pos)
        return scalar.end() if scalar else None
    depth = 0
    while pos < len(text):
        ch = text[pos]
        if ch == '"':
            string = _STRING.match(text, pos)
            if string is None:
                return None
            pos = string.end()
            continue
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
            if depth == 0:
                return pos + 1
        else:
            pos = _PLAIN.match(text, pos).end()
            continue
        pos += 1
    return None


def _array_elements(text: str) -> list[tuple[int, Any]] | None:
    """Each element of the JSON array ``text`` with the line it starts on, in one pass (None if malformed).

    Newlines are counted from where the previous element started, so the whole file is scanned once.
    A well-formed element the decoder refuses (nested too deeply, a huge integer) is an ``_Undecodable``.
    """
    decoder, rows = json.JSONDecoder(), []
    pos = _SPACE.match(text).end()
    if not text.startswith("[", pos):
        return None
    pos = _SPACE.match(text, pos + 1).end()
    line, counted = 1, 0
    while not text.startswith("]", pos) or rows:
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return None
        except (RecursionError, ValueError) as exc:
            found = _value_end(text, pos)
            if found is None:
                return None
            value, end = _Undecodable(_decode_problem(exc)), found
        line += text.count("\n", counted, pos)
        counted = pos
        rows.append((line, value))
        pos = _SPACE.match(text, end).end()
        if text.startswith(",", pos):
            pos = _SPACE.match(text, pos + 1).end()
        elif text.startswith("]", pos):
            break
        else:
            return None
    return rows if _SPACE.match(text, pos + 1).end() == len(text) else None


def _check_rows(rows, path: Path, record_type: str, unit: str = "line"):
    good, errors = [], []
    for lineno, record in rows:
        problems = validate_record(record, record_type, base_dir=path.parent)
        if problems:
            errors.append(RecordError(str(path), lineno, "; ".join(problems), unit))
        else:
            good.append((lineno, record))
    return good, errors


def _kind(value: Any) -> str:
    for typ, name in ((bool, "true/false"), (int | float, "number"), (str, "string"), (list, "list"),
                      (dict, "object")):
        if isinstance(value, typ):
            return name
    return type(value).__name__


def _lines(numbers: list[int]) -> str:
    shown = ", ".join(map(str, numbers[:5]))
    return f"line{'s' if len(numbers) > 1 else ''} {shown}" + (f" and {len(numbers) - 5} more" if len(numbers) > 5 else "")


def _type_conflicts(rows: list[tuple[int, dict]], path: Path) -> list[RecordError]:
    """Rows whose field has another JSON type than in most rows (a column needs one type).

    Each such row is an error naming the field, the majority type and where it is found; ``None``
    (a missing value) fits every type.
    """
    seen: dict[str, dict[str, list[int]]] = {}
    for lineno, record in rows:
        for name, value in record.items():
            if value is not None:
                seen.setdefault(name, {}).setdefault(_kind(value), []).append(lineno)
    errors = []
    for name, kinds in seen.items():
        if len(kinds) < 2:
            continue
        main = max(kinds, key=lambda k: len(kinds[k]))
        for kind, lines in kinds.items():
            if kind != main:
                errors += [RecordError(str(path), n, f"field {name!r} is a {kind} here but a {main} on "
                                                     f"{_lines(kinds[main])}; one field needs one type") for n in lines]
    return errors


def _from_rows(rows: list[dict], path: Path | None = None) -> datasets.Dataset:
    """A Dataset with the union of the rows' fields (a field missing from a row becomes None)."""
    import pyarrow as pa

    keys: dict[str, None] = {}
    for r in rows:
        keys.update(dict.fromkeys(r))
    try:
        return datasets.Dataset.from_list([{k: r.get(k) for k in keys} for r in rows])
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:  # nested values whose types differ between rows
        bad = []
        for k in keys:
            try:
                datasets.Dataset.from_list([{k: r.get(k)} for r in rows])
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                bad.append(k)
        raise ValueError(f"{path}: the values inside field(s) {bad} have different types in different rows "
                         f"({exc}); give each field one shape in every row") from None


def _finish(path, record_type, rows_in, errors, skip_bad_rows, make_dataset) -> LoadResult:
    if rows_in == 0:
        logger.warning("%s holds no records: check that this is the file you meant", path)
    if errors and not skip_bad_rows:
        raise DataValidationError(errors)
    for e in errors:
        logger.warning("skipped malformed record %s", e)
    result = LoadResult(make_dataset(), record_type, str(path), rows_in, errors)
    logger.info("%s: %d rows in, %d kept, %d skipped as malformed", path, rows_in, result.rows_kept, len(errors))
    return result


def load_records(
    path: str | Path, record_type: str, *, fmt: str | None = None, skip_bad_rows: bool = False
) -> LoadResult:
    """Load and validate a data file (JSONL, JSON array, Parquet) or a folder of ``.txt`` files.

    Raises ``DataValidationError`` listing every malformed record (file, line, problem) unless
    ``skip_bad_rows`` is true; then the valid rows are returned and each bad one is in
    ``LoadResult.errors``. A folder of text files gives one ``pretraining`` record per file.
    Taught in notebook 02.
    """
    path = Path(path)
    if record_type not in SCHEMAS:
        raise ValueError(f"unknown record type {record_type!r}; use one of {RECORD_TYPES}")
    if not path.exists():
        raise FileNotFoundError(f"data file {path} does not exist; check the path (relative to {Path.cwd()})")
    fmt = fmt or detect_format(path)
    if fmt in ("jsonl", "json"):
        rows, errors = (_jsonl_rows if fmt == "jsonl" else _json_array_rows)(path)
        good, bad = _check_rows(rows, path, record_type)
        conflicts = _type_conflicts(good, path)
        conflicted = {e.line for e in conflicts}
        good = [(n, r) for n, r in good if n not in conflicted]
        errors = sorted(errors + bad + conflicts, key=lambda e: e.line)
        return _finish(path, record_type, len(rows) + len(errors) - len(bad) - len(conflicts), errors,
                       skip_bad_rows, lambda: _from_rows([r for _, r in good], path))
    if fmt == "parquet":
        ds = datasets.load_dataset("parquet", data_files=str(path), split="train")
        good, errors = _check_rows(((i, r) for i, r in enumerate(ds, start=1)), path, record_type, unit="row")
        bad_rows = {e.line - 1 for e in errors}
        return _finish(path, record_type, len(ds), errors, skip_bad_rows,
                       lambda: ds.select([i for i in range(len(ds)) if i not in bad_rows]))
    if fmt == "text":
        return _load_text_folder(path, record_type, skip_bad_rows)
    raise ValueError(f"unknown format {fmt!r}; use one of {FORMATS}")


def _load_text_folder(path: Path, record_type: str, skip_bad_rows: bool) -> LoadResult:
    if record_type != "pretraining":
        raise ValueError("a folder of text files holds 'pretraining' records (one per file)")
    files = sorted(path.glob("*.txt")) if path.is_dir() else [path]
    if not files:
        raise FileNotFoundError(f"no .txt files in {path}; put one document per .txt file there")
    good, errors = [], []
    for f in files:
        try:
            text = f.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            errors.append(RecordError(str(f), 1, f"not UTF-8 text ({exc.reason} at byte {exc.start})"))
            continue
        if not text.strip():
            errors.append(RecordError(str(f), 1, "file is empty"))
            continue
        good.append(str(f))

    def make() -> datasets.Dataset:
        if not good:
            return datasets.Dataset.from_dict({"text": []})
        return datasets.load_dataset("text", data_files=good, sample_by="document", split="train")

    return _finish(path, record_type, len(files), errors, skip_bad_rows, make)
