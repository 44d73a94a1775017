"""The claims ledger: each notebook states its rows as data, and README's ledger table is rendered from them.

A notebook's ledger cell builds :class:`LedgerRow` objects whose figures are f-strings of the notebook's
live variables and calls :func:`ledger`, which shows them as a table and stores them in the cell's output
under the :data:`MIME` type. ``python -m dsnb.course --ledger`` reads those outputs from the committed
notebooks and rewrites the table between README's ``<!-- ledger:start -->`` / ``<!-- ledger:end -->``
markers; ``--ledger --check`` only compares and fails when README has drifted.

A claim has exactly one full row (the article's wording and a verdict) and may have supplements
(:func:`supplement`: method and figures only) from other notebooks, merged into its README row.

Beyond the article. Notebooks that go past what the article covers (notebook 12's GRPO) state rows about
claims made elsewhere (a paper, a library, common practice), with ids ``B01``, ``B02``… (:data:`BEYOND_IDS`;
the ``claim`` column then says whose claim it is). They are rendered, by the same rules, into a second
table between README's ``<!-- beyond:start -->`` / ``<!-- beyond:end -->`` markers, never into the article's.
While any notebook states such a row, README must hold those markers: ``--ledger`` and ``--ledger --check``
fail, saying what to add, instead of leaving the rows out of README. Beyond rows are not claims of the
article, so they never count toward :data:`CLAIMS` being complete.
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
#: The markers of README's beyond-the-article table.
BEYOND_START, BEYOND_END = "<!-- beyond:start -->", "<!-- beyond:end -->"
#: Ids of the beyond-the-article rows.
BEYOND_IDS: tuple[str, ...] = tuple(f"B{i:02d}" for i in range(1, 100))
HEADER = ("id", "claim", "how we checked", "what we measured", "verdict")
_EVIDENCE = re.compile(r"notebook \d\d|(tests|benchmarks)/[\w./-]+")


class LedgerError(ValueError):
    """A ledger row, a notebook's ledger output or README's ledger section is missing or malformed."""


#: An f-string placeholder with a subscript, attribute or format spec (``{kept['x']:.2f}``) left in the text: a
#: piece of the string without its ``f`` prefix. A bare ``{name}`` is allowed (a label set reads like one).
_UNFORMATTED = re.compile(r"\{[A-Za-z_]\w*((?:\[[^\]{}]*\]|\.\w+)*(?:![rsa])?(?::[^{}]*)?)\}")


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
        if self.claim not in CLAIMS and self.claim not in BEYOND_IDS:
            raise LedgerError(f"{self.claim!r} is not a claim id (C01 … C33, or B01 … B99 beyond the article)")
        if not sources or any(not _EVIDENCE.fullmatch(s) for s in sources):
            raise LedgerError(f"{self.claim}: evidence {sources!r} must name 'notebook NN', 'tests/…' or 'benchmarks/…'")
        for name in ("article", "method", "measured", "verdict"):
            text = getattr(self, name)
            if not isinstance(text, str) or "\n" in text:
                raise LedgerError(f"{self.claim}: {name} must be one line of text")
        if not self.method.strip() or not self.measured.strip():
            raise LedgerError(f"{self.claim}: method and measured must not be empty")
        for name in ("article", "method", "measured", "verdict"):
            left = next((m.group() for m in _UNFORMATTED.finditer(getattr(self, name)) if m.group(1)), None)
            if left:
                raise LedgerError(f"{self.claim}: {name} holds {left!r}, a placeholder left unformatted: "
                                  "add the f prefix to that piece of the string")
        if bool(self.article.strip()) != bool(self.verdict.strip()):
            raise LedgerError(f"{self.claim}: give both the article's wording and a verdict, or neither (a supplement)")

    @property
    def is_beyond(self) -> bool:
        """True for a row about a claim beyond the article (``B01`` …): README's second table."""
        return self.claim in BEYOND_IDS

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


def article_rows(rows: Iterable[LedgerRow]) -> list[LedgerRow]:
    """The rows about the article's claims (``C01`` …)."""
    return [r for r in rows if not r.is_beyond]


def beyond_rows(rows: Iterable[LedgerRow]) -> list[LedgerRow]:
    """The rows about claims beyond the article (``B01`` …)."""
    return [r for r in rows if r.is_beyond]


def render_table(rows: Iterable[LedgerRow], *, require_all: bool = False, beyond: bool = False) -> str:
    """The ledger as a markdown table; ``require_all``: every claim of :data:`CLAIMS` not in :data:`ABSENT`.

    The article's claims only, or with ``beyond=True`` only the beyond-the-article rows.
    """
    cells = table_rows(beyond_rows(rows) if beyond else article_rows(rows))
    if require_all:
        missing = [c for c in CLAIMS if c not in ABSENT and c not in {r[0] for r in cells}]
        if missing:
            raise LedgerError(f"no notebook states a ledger row for {', '.join(missing)}")
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in cells]
    if not beyond:
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


def _markers(beyond: bool) -> tuple[str, str]:
    return (BEYOND_START, BEYOND_END) if beyond else (START, END)


def has_beyond_section(readme: str) -> bool:
    """Whether README holds the beyond-the-article markers (either of them: :func:`_split` checks the pair)."""
    return BEYOND_START in readme or BEYOND_END in readme


def _split(readme: str, beyond: bool = False) -> tuple[str, str, str]:
    start, end = _markers(beyond)
    if readme.count(start) != 1 or readme.count(end) != 1 or readme.index(start) > readme.index(end):
        what = "the beyond-the-article table" if beyond else "the ledger table"
        raise LedgerError(f"README must hold one {start} … {end} pair around {what}")
    head, rest = readme.split(start)
    body, tail = rest.split(end)
    return head, body, tail


def splice(readme: str, table: str, beyond: bool = False) -> str:
    """``readme`` with the text between the ledger markers (``beyond``: the beyond markers) replaced by ``table``."""
    head, _, tail = _split(readme, beyond)
    start, end = _markers(beyond)
    note = "<!-- rendered by `python -m dsnb.course --ledger` from the notebooks' ledger cells: edit those -->"
    return f"{head}{start}\n{note}\n\n{table}\n\n{end}{tail}"


def parse_table(readme: str, beyond: bool = False) -> dict[str, tuple[str, ...]]:
    """The ledger rows in README, by claim id: the inverse of :func:`render_table` (for diffs and tests)."""
    _, body, _ = _split(readme, beyond)
    out: dict[str, tuple[str, ...]] = {}
    for line in body.splitlines():
        if not line.startswith("| B" if beyond else "| C"):
            continue
        cells = tuple(c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1])
        out[cells[0]] = cells
    return out


def missing_beyond_section(rows: Sequence[LedgerRow]) -> str:
    """What to add to a README without the beyond markers while notebooks state ``rows`` beyond the article."""
    where = sorted({f"{r.claim} ({_sources(r)})" for r in beyond_rows(rows) if not r.is_supplement})
    return (f"the notebooks state rows beyond the article ({', '.join(where)}) but README has no section for them: "
            f"add a line {BEYOND_START} and a line {BEYOND_END} where the table should go (e.g. under "
            f"a paragraph 'Beyond the article.' after {END}, inside the claims ledger's section: a heading below the "
            "section's level breaks the site's ledger page), then run "
            "python -m dsnb.course --ledger")


def differences(readme: str, rows: Sequence[LedgerRow]) -> list[str]:
    """How README's ledger differs from ``rows``, one line per claim and column (empty: in step).

    Both tables: the article's claims between the ledger markers, the rows beyond the article between the
    beyond markers (one line saying what to add when there are such rows and README lacks the markers).
    """
    out: list[str] = []
    extra = beyond_rows(rows)
    tables = [False] + ([True] if extra or has_beyond_section(readme) else [])
    for beyond in tables:
        if beyond and not has_beyond_section(readme):
            out.append(missing_beyond_section(rows))
            continue
        want = {r[0]: r for r in table_rows(beyond_rows(rows) if beyond else article_rows(rows))}
        have = parse_table(readme, beyond)
        diff = [f"{c}: in the notebooks, not in README" for c in want if c not in have]
        diff += [f"{c}: in README, in no notebook" for c in have if c not in want and c not in ABSENT]
        for c in want.keys() & have.keys():
            diff += [f"{c}: {HEADER[i]} differs" for i in range(len(HEADER)) if want[c][i] != have[c][i]]
        if not diff and splice(readme, render_table(rows, require_all=not beyond, beyond=beyond), beyond) != readme:
            diff.append(f"the {'beyond-the-article' if beyond else 'ledger'} section's layout differs from the "
                        "rendered one")
        out += diff
    return sorted(out)


def update_readme(readme: str | Path = "README.md", directory: str | Path = "notebooks", check: bool = False) -> int:
    """Render README's ledger from the committed notebooks (``check``: only compare); 0 when in step."""
    readme = Path(readme)
    rows = course_rows(directory)
    text = readme.read_text(encoding="utf-8")
    new = splice(text, render_table(rows, require_all=True))
    if beyond_rows(rows) or has_beyond_section(text):
        if not has_beyond_section(text) and not check:
            raise LedgerError(missing_beyond_section(rows))
        if has_beyond_section(text):
            new = splice(new, render_table(rows, beyond=True), beyond=True)
    if check:
        diff = differences(text, rows)
        for line in diff:
            print(line)
        if diff:
            print(f"{readme} is out of step with the notebooks: run python -m dsnb.course --ledger")
        return 1 if diff else 0
    if new != text:
        readme.write_text(new, encoding="utf-8")
        print(f"{readme}: ledger rewritten ({len(table_rows(article_rows(rows)))} claims, "
              f"{len(table_rows(beyond_rows(rows)))} beyond the article)")
    else:
        print(f"{readme}: ledger already in step")
    return 0
