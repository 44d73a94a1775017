"""The claims ledger: each notebook states its rows as data, and README's ledger table is rendered from them.

A notebook's ledger cell builds :class:`LedgerRow` objects whose figures are f-strings of the notebook's
live variables and calls :func:`ledger`, which shows them as a table and stores them in the cell's output
under the :data:`MIME` type. ``python -m dsnb.course --ledger`` reads those outputs from the committed
notebooks and rewrites the table between README's ``<!-- ledger:start -->`` / ``<!-- ledger:end -->``
markers; ``--ledger --check`` only compares and fails when README has drifted.

A claim has exactly one full row (the article's wording and a verdict) and may have supplements
(:func:`supplement`: method and figures only) from other notebooks, merged into its README row.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: The custom mime type a ledger cell's output carries its rows under (the .ipynb stores it as JSON).
MIME = "application/vnd.dsnb.ledger+json"
#: Version of the payload under :data:`MIME`.
PAYLOAD_VERSION = 1
#: The source article's claims, in order.
CLAIMS: tuple[str, ...] = tuple(f"C{i:02d}" for i in range(1, 34))
#: Claims deliberately left out of the ledger, with the reason (none today).
ABSENT: dict[str, str] = {}
START, END = "<!-- ledger:start -->", "<!-- ledger:end -->"
HEADER = ("id", "claim", "how we checked", "what we measured", "verdict")
_EVIDENCE = re.compile(r"notebook \d\d|(tests|benchmarks)/[\w./-]+")


class LedgerError(ValueError):
    """A ledger row, a notebook's ledger output or README's ledger section is missing or malformed."""


@dataclass(frozen=True)
class LedgerRow:
    """One claim of the article as one notebook checked it.

    ``claim``: its id (``"C04"``); ``article``: what the article says; ``method``: how we tested it;
    ``measured``: the figures (f-strings of live values); ``verdict``: ours, in markdown; ``evidence``:
    where the figures come from, one or more of ``"notebook NN"``, ``"tests/…"``, ``"benchmarks/…"``.
    A supplement (see :func:`supplement`) leaves ``article`` and ``verdict`` empty.
    """

    claim: str
    article: str
    method: str
    measured: str
    verdict: str
    evidence: str | Sequence[str] = field(default=())

    def __post_init__(self) -> None:
        sources = (self.evidence,) if isinstance(self.evidence, str) else tuple(self.evidence)
        object.__setattr__(self, "evidence", sources)
        if self.claim not in CLAIMS:
            raise LedgerError(f"{self.claim!r} is not a claim id (C01 … C33)")
        if not sources or any(not _EVIDENCE.fullmatch(s) for s in sources):
            raise LedgerError(f"{self.claim}: evidence {sources!r} must name 'notebook NN', 'tests/…' or 'benchmarks/…'")
        for name in ("article", "method", "measured", "verdict"):
            text = getattr(self, name)
            if not isinstance(text, str) or "\n" in text:
                raise LedgerError(f"{self.claim}: {name} must be one line of text")
        if not self.method.strip() or not self.measured.strip():
            raise LedgerError(f"{self.claim}: method and measured must not be empty")
        if bool(self.article.strip()) != bool(self.verdict.strip()):
            raise LedgerError(f"{self.claim}: give both the article's wording and a verdict, or neither (a supplement)")

    @property
    def is_supplement(self) -> bool:
        """True for a row that adds method and figures to a claim whose verdict lives in another row."""
        return not self.verdict

    def to_dict(self) -> dict[str, Any]:
        """The row as JSON-ready data."""
        return {**asdict(self), "evidence": list(self.evidence)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LedgerRow:
        """Inverse of :meth:`to_dict`."""
        return cls(**{**data, "evidence": tuple(data["evidence"])})


def supplement(claim: str, method: str, measured: str, evidence: str | Sequence[str]) -> LedgerRow:
    """A row that adds method and figures to ``claim``, whose verdict another notebook's row gives."""
    return LedgerRow(claim, "", method, measured, "", evidence)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _sources(row: LedgerRow) -> str:
    return " + ".join(row.evidence)


def table_rows(rows: Iterable[LedgerRow]) -> list[tuple[str, ...]]:
    """The table's cells, one tuple per claim: supplements merged into their claim's full row, in claim order.

    Raises :class:`LedgerError` when a claim has no full row or two, or a supplement has none.
    """
    full: dict[str, LedgerRow] = {}
    extra: dict[str, list[LedgerRow]] = {}
    for row in rows:
        if row.is_supplement:
            extra.setdefault(row.claim, []).append(row)
        elif row.claim in full:
            raise LedgerError(f"{row.claim} has two full rows ({_sources(full[row.claim])} and {_sources(row)})")
        else:
            full[row.claim] = row
    orphans = sorted(set(extra) - set(full))
    if orphans:
        raise LedgerError(f"supplements for {', '.join(orphans)} but no full row with a verdict")
    out = []
    for claim in sorted(full):
        row, more = full[claim], extra.get(claim, [])
        method = "; ".join(f"{_sources(r)}: {r.method}" for r in [row, *more])
        measured = "; ".join([row.measured] + [f"{_sources(r)}: {r.measured}" for r in more])
        out.append((claim, row.article, method, measured, row.verdict))
    return out


def render_table(rows: Iterable[LedgerRow], *, require_all: bool = False) -> str:
    """The ledger as a markdown table; ``require_all``: every claim of :data:`CLAIMS` not in :data:`ABSENT`."""
    cells = table_rows(rows)
    if require_all:
        missing = [c for c in CLAIMS if c not in ABSENT and c not in {r[0] for r in cells}]
        if missing:
            raise LedgerError(f"no notebook states a ledger row for {', '.join(missing)}")
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in cells]
    lines += [f"| {c} | (not checked) | {_cell(why)} | | |" for c, why in sorted(ABSENT.items())]
    return "\n".join(lines)


def payload(rows: Sequence[LedgerRow]) -> dict[str, Any]:
    """The data stored under :data:`MIME`."""
    return {"version": PAYLOAD_VERSION, "rows": [r.to_dict() for r in rows]}


def rows_from_payload(data: dict[str, Any]) -> list[LedgerRow]:
    """Inverse of :func:`payload`."""
    if data.get("version") != PAYLOAD_VERSION:
        raise LedgerError(f"ledger payload version {data.get('version')!r}, expected {PAYLOAD_VERSION}")
    return [LedgerRow.from_dict(r) for r in data["rows"]]


def ledger(rows: Sequence[LedgerRow]) -> None:
    """Show ``rows`` as a table and store them, as data, in the cell's output (mime type :data:`MIME`)."""
    from IPython.display import display

    rows = list(rows)
    if not rows or not all(isinstance(r, LedgerRow) for r in rows):
        raise LedgerError("ledger() takes a non-empty list of LedgerRow")
    table = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for r in rows:
        claim = r.claim + (" (supplement)" if r.is_supplement else "")
        table.append("| " + " | ".join(_cell(c) for c in (claim, r.article, f"{_sources(r)}: {r.method}",
                                                             r.measured, r.verdict)) + " |")
    text = "\n".join(f"{r.claim} [{_sources(r)}] {r.measured}" + (f" => {r.verdict}" if r.verdict else "")
                     for r in rows)
    display({MIME: payload(rows), "text/markdown": "\n".join(table), "text/plain": text}, raw=True)


def notebook_rows(path: str | Path) -> list[LedgerRow]:
    """The ledger rows stored in a notebook's outputs; :class:`LedgerError` naming the notebook if none."""
    path = Path(path)
    nb = json.loads(path.read_text(encoding="utf-8"))
    rows: list[LedgerRow] = []
    unrun = 0
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        found = [o["data"][MIME] for o in cell.get("outputs", []) if MIME in o.get("data", {})]
        source = "".join(cell.get("source", ""))
        if not found and re.search(r"\bledger\(", source):
            unrun += 1
        for data in found:
            try:
                rows += rows_from_payload(data)
            except (LedgerError, KeyError, TypeError) as exc:
                raise LedgerError(f"{path.name}: a ledger output is malformed: {exc}") from exc
    if unrun:
        raise LedgerError(f"{path.name}: {unrun} ledger cell(s) without a ledger output: run the notebook first")
    if not rows:
        raise LedgerError(f"{path.name}: no ledger output ({MIME}): add a ledger cell to its "
                          "'What we measured' section and run the notebook")
    return rows


def course_rows(directory: str | Path = "notebooks") -> list[LedgerRow]:
    """Every ledger row of the numbered notebooks in ``directory``, in course order."""
    from dsnb.course import notebooks_in

    return [row for nb in notebooks_in(directory) for row in notebook_rows(nb)]


def _split(readme: str) -> tuple[str, str, str]:
    if readme.count(START) != 1 or readme.count(END) != 1 or readme.index(START) > readme.index(END):
        raise LedgerError(f"README must hold one {START} … {END} pair around the ledger table")
    head, rest = readme.split(START)
    body, tail = rest.split(END)
    return head, body, tail


def splice(readme: str, table: str) -> str:
    """``readme`` with the text between the ledger markers replaced by ``table``."""
    head, _, tail = _split(readme)
    note = "<!-- rendered by `python -m dsnb.course --ledger` from the notebooks' ledger cells: edit those -->"
    return f"{head}{START}\n{note}\n\n{table}\n\n{END}{tail}"


def parse_table(readme: str) -> dict[str, tuple[str, ...]]:
    """The ledger rows in README, by claim id: the inverse of :func:`render_table` (for diffs and tests)."""
    _, body, _ = _split(readme)
    out: dict[str, tuple[str, ...]] = {}
    for line in body.splitlines():
        if not line.startswith("| C"):
            continue
        cells = tuple(c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1])
        out[cells[0]] = cells
    return out


def differences(readme: str, rows: Sequence[LedgerRow]) -> list[str]:
    """How README's ledger differs from ``rows``, one line per claim and column (empty: in step)."""
    want = {r[0]: r for r in table_rows(rows)}
    have = parse_table(readme)
    out = [f"{c}: in the notebooks, not in README" for c in want if c not in have]
    out += [f"{c}: in README, in no notebook" for c in have if c not in want and c not in ABSENT]
    for c in want.keys() & have.keys():
        out += [f"{c}: {HEADER[i]} differs" for i in range(len(HEADER)) if want[c][i] != have[c][i]]
    if not out and splice(readme, render_table(rows, require_all=True)) != readme:
        out.append("the ledger section's layout differs from the rendered one")
    return sorted(out)


def update_readme(readme: str | Path = "README.md", directory: str | Path = "notebooks", check: bool = False) -> int:
    """Render README's ledger from the committed notebooks (``check``: only compare); 0 when in step."""
    readme = Path(readme)
    rows = course_rows(directory)
    text = readme.read_text(encoding="utf-8")
    new = splice(text, render_table(rows, require_all=True))
    if check:
        diff = differences(text, rows)
        for line in diff:
            print(line)
        if diff:
            print(f"{readme} is out of step with the notebooks: run python -m dsnb.course --ledger")
        return 1 if diff else 0
    if new != text:
        readme.write_text(new, encoding="utf-8")
        print(f"{readme}: ledger rewritten ({len(table_rows(rows))} claims)")
    else:
        print(f"{readme}: ledger already in step")
    return 0
