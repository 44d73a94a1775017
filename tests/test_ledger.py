"""The claims ledger: README's tables (the article's claims, and the rows beyond the article) are what the committed
notebooks' ledger cells say, and the renderer round-trips."""

from __future__ import annotations

import ast
import json
from dataclasses import replace
from pathlib import Path

import nbformat
import pytest

from dsnb import ledger as L
from dsnb.course import main

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
README = ROOT / "README.md"


def _row(claim: str = "C01", **changes) -> L.LedgerRow:
    fields = dict(article="the article says", method="how we checked", measured="1.5× faster", verdict="**True**",
                  evidence="notebook 01")
    return L.LedgerRow(claim, **{**fields, **changes})


def _notebook(path: Path, *rows: L.LedgerRow, run: bool = True) -> Path:
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("ledger(rows)")
    if run:
        cell.outputs = [nbformat.v4.new_output("display_data", data={L.MIME: L.payload(list(rows)), "text/plain": "x"})]
    nb.cells = [cell]
    nbformat.write(nb, path)
    return path


# --- the committed course -------------------------------------------------------------------------------------


def test_readme_ledger_is_what_the_notebooks_say():
    """Fails when README's ledger table differs from the rows the committed notebooks' ledger cells output:
    re-render it with `python -m dsnb.course --ledger` (after re-running the notebooks whose figures changed)."""
    diff = L.differences(README.read_text(encoding="utf-8"), L.course_rows(ROOT / "notebooks"))
    assert not diff, "README's ledger is out of step with the notebooks:\n" + "\n".join(diff)


def test_every_claim_appears_exactly_once():
    rows = L.course_rows(ROOT / "notebooks")
    claims = [cells[0] for cells in L.table_rows(L.article_rows(rows))]  # raises on a claim with two full rows
    assert claims == [c for c in L.CLAIMS if c not in L.ABSENT], f"missing: {sorted(set(L.CLAIMS) - set(claims))}"
    section = README.read_text(encoding="utf-8").split(L.START)[1].split(L.END)[0]
    in_readme = [line.split("|")[1].strip() for line in section.splitlines() if line.startswith("| C")]
    assert sorted(in_readme) == sorted(set(in_readme)) == list(L.CLAIMS), "README lists a claim twice or misses one"


def test_every_notebook_has_a_ledger_output():
    for path in NOTEBOOKS:
        assert L.notebook_rows(path), path.name


def _ledger_calls(path: Path) -> list[ast.Call]:
    nb = nbformat.read(path, as_version=4)
    sources = [c.source for c in nb.cells if c.cell_type == "code" and "ledger" in c.metadata.get("tags", [])]
    calls = [n for s in sources for n in ast.walk(ast.parse(s)) if isinstance(n, ast.Call)]
    return [c for c in calls if getattr(c.func, "id", None) in ("LedgerRow", "supplement")]


def _measured_arg(call: ast.Call) -> ast.expr:
    index = 3 if call.func.id == "LedgerRow" else 2
    keyword = next((k.value for k in call.keywords if k.arg == "measured"), None)
    return keyword if keyword is not None else call.args[index]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_ledger_figures_come_from_live_values(path):
    """A ledger row's figures are expressions of the notebook's variables, never a typed-in string."""
    calls = _ledger_calls(path)
    assert calls, f"{path.name} has no ledger cell (a code cell tagged 'ledger' building LedgerRow)"
    for call in calls:
        arg = _measured_arg(call)
        assert not isinstance(arg, ast.Constant), f"{path.name}: a ledger row's figures are a typed string: {arg.value!r}"
        if isinstance(arg, ast.JoinedStr):
            assert any(isinstance(v, ast.FormattedValue) for v in arg.values), f"{path.name}: an f-string without values"


# --- the API and the renderer ------------------------------------------------------------------------------------


def test_rows_check_their_fields():
    assert _row(evidence=("notebook 04", "tests/test_losses.py", "benchmarks/distill_grid.py")).evidence[1] == "tests/test_losses.py"
    assert _row().evidence == ("notebook 01",) and not _row().is_supplement
    assert L.supplement("C01", "how", "what", "notebook 08").is_supplement
    assert _row("B01").is_beyond and not _row("C01").is_beyond
    for bad, match in [(dict(claim="C34"), "not a claim id"), (dict(claim="B100"), "not a claim id"),
                       (dict(claim="X01"), "B01 … B99 beyond the article"), (dict(evidence="somewhere"), "evidence"),
                       (dict(evidence=()), "evidence"), (dict(measured="two\nlines"), "one line"),
                       (dict(verdict=""), "both the article's wording and a verdict"), (dict(measured=" "), "must not be empty"),
                       (dict(measured="plain {kept['F.cross_entropy alone']:.2f}×"), "unformatted"),
                       (dict(verdict="**x** at {ratio:.1f}×"), "unformatted"), (dict(method="{cfg.steps} steps"), "unformatted")]:
        with pytest.raises(L.LedgerError, match=match):
            _row(**{"claim": bad.pop("claim", "C01"), **bad})
    assert _row(measured="rejected, counted in dsnb_gateway_rejected_total{reason}; sets {0, 1}")  # not placeholders


def test_payload_survives_json():
    rows = [_row(), L.supplement("C01", "more", "2 × 3", ("notebook 08", "tests/test_sft.py"))]
    assert L.rows_from_payload(json.loads(json.dumps(L.payload(rows)))) == rows
    with pytest.raises(L.LedgerError, match="version"):
        L.rows_from_payload({"version": 99, "rows": []})


def test_ledger_displays_markdown_and_data(monkeypatch):
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj, raw=False: shown.append((obj, raw)))
    L.ledger([_row(measured="a | b")])
    (bundle, raw), = shown
    assert raw and L.rows_from_payload(bundle[L.MIME]) == [_row(measured="a | b")]
    assert "a \\| b" in bundle["text/markdown"] and bundle["text/markdown"].startswith("| id |")
    with pytest.raises(L.LedgerError):
        L.ledger([])


def test_supplements_merge_into_their_claim_and_claims_come_in_order():
    rows = [_row("C02"), L.supplement("C01", "measured on the tiny model", "17% less", "notebook 08"), _row("C01")]
    cells = L.table_rows(rows)
    assert [c[0] for c in cells] == ["C01", "C02"]
    assert cells[0][2] == "notebook 01: how we checked; notebook 08: measured on the tiny model"
    assert cells[0][3] == "1.5× faster; notebook 08: 17% less"
    with pytest.raises(L.LedgerError, match="two full rows"):
        L.table_rows([_row(), _row()])
    with pytest.raises(L.LedgerError, match="no full row"):
        L.table_rows([L.supplement("C05", "m", "x", "notebook 00")])
    with pytest.raises(L.LedgerError, match="no notebook states a ledger row for C02"):
        L.render_table([_row()], require_all=True)


def test_renderer_round_trips():
    rows = [_row(f"C{i:02d}", measured=f"{i} | {i / 3:.2f}") for i in range(1, 34)]
    readme = f"# title\n\nintro\n\n{L.START}\nstale table\n{L.END}\n\n## next\n"
    once = L.splice(readme, L.render_table(rows, require_all=True))
    assert L.splice(once, L.render_table(rows, require_all=True)) == once  # idempotent
    assert once.startswith("# title\n\nintro\n\n") and once.endswith("\n\n## next\n")
    assert list(L.parse_table(once).values()) == L.table_rows(rows)  # pipes escaped and read back
    assert L.differences(once, rows) == []
    changed = rows[:3] + [replace(rows[3], verdict="**False**")] + rows[4:]
    assert L.differences(once, changed) == ["C04: verdict differs"]
    with pytest.raises(L.LedgerError, match="ledger:start"):
        L.splice("no markers here", "table")


def test_notebook_without_a_ledger_output_is_named(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1")]
    nbformat.write(nb, tmp_path / "00_plain.ipynb")
    with pytest.raises(L.LedgerError, match="00_plain.ipynb: no ledger output"):
        L.notebook_rows(tmp_path / "00_plain.ipynb")
    _notebook(tmp_path / "01_unrun.ipynb", _row(), run=False)
    with pytest.raises(L.LedgerError, match="01_unrun.ipynb: 1 ledger cell"):
        L.notebook_rows(tmp_path / "01_unrun.ipynb")


def test_command_line_renders_and_checks(tmp_path, capsys):
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    _notebook(nbs / "00_a.ipynb", *[_row(f"C{i:02d}") for i in range(1, 20)])
    _notebook(nbs / "01_b.ipynb", *[_row(f"C{i:02d}") for i in range(20, 34)])
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n{L.START}\n{L.END}\n")
    args = [str(nbs), "--ledger", "--readme", str(readme)]
    assert main([*args, "--check"]) == 1 and "C01: in the notebooks, not in README" in capsys.readouterr().out
    assert main(args) == 0 and main([*args, "--check"]) == 0
    text = readme.read_text()
    readme.write_text(text.replace("1.5× faster", "2× faster", 1))
    assert main([*args, "--check"]) == 1 and "C01: what we measured differs" in capsys.readouterr().out
    (nbs / "01_b.ipynb").unlink()
    assert main([*args, "--check"]) == 2 and "no notebook states a ledger row for C20" in capsys.readouterr().err


# --- rows beyond the article (B01 …): a second README table ---------------------------------------------------------


def _readme_with(*sections: str) -> str:
    return "# x\n\n" + "\n\n".join(sections) + "\n\n## next\n"


def test_beyond_rows_render_into_their_own_table_only():
    rows = [_row(f"C{i:02d}") for i in range(1, 34)] + [_row("B02", measured="2 | 3"), _row("B01"),
                                                       L.supplement("B01", "more", "4", "notebook 12")]
    article, beyond = L.render_table(rows, require_all=True), L.render_table(rows, beyond=True)
    assert "| B0" not in article and "| C0" not in beyond
    assert [line.split("|")[1].strip() for line in beyond.splitlines()[2:]] == ["B01", "B02"]
    assert "notebook 01: how we checked; notebook 12: more" in beyond and "2 \\| 3" in beyond
    readme = _readme_with(f"{L.START}\n{L.END}", f"## Beyond the article\n\n{L.BEYOND_START}\n{L.BEYOND_END}")
    once = L.splice(L.splice(readme, article), beyond, beyond=True)
    assert L.differences(once, rows) == [] and list(L.parse_table(once, beyond=True)) == ["B01", "B02"]
    assert set(L.parse_table(once)) == {f"C{i:02d}" for i in range(1, 34)}
    changed = rows[:-3] + [replace(rows[-3], verdict="**False**"), *rows[-2:]]
    assert L.differences(once, changed) == ["B02: verdict differs"]
    assert L.differences(once, rows[:-3] + rows[-2:]) == ["B02: in README, in no notebook"]


def test_a_readme_without_the_beyond_markers_is_told_what_to_add():
    rows = [_row(f"C{i:02d}") for i in range(1, 34)] + [_row("B01", evidence="notebook 12")]
    readme = L.splice(_readme_with(f"{L.START}\n{L.END}"), L.render_table(rows, require_all=True))
    diff = L.differences(readme, rows)
    assert len(diff) == 1 and "B01 (notebook 12)" in diff[0] and L.BEYOND_START in diff[0] and L.BEYOND_END in diff[0]
    assert L.differences(readme, rows[:-1]) == []  # no beyond rows: no markers needed
    with pytest.raises(L.LedgerError, match="must hold one <!-- beyond:start -->"):
        L.splice(readme, "table", beyond=True)


def test_command_line_renders_and_checks_both_tables(tmp_path, capsys):
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    _notebook(nbs / "00_a.ipynb", *[_row(f"C{i:02d}") for i in range(1, 34)])
    _notebook(nbs / "12_b.ipynb", _row("B01", evidence="notebook 12"), _row("B02", evidence="notebook 12"))
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n{L.START}\n{L.END}\n")
    args = [str(nbs), "--ledger", "--readme", str(readme)]
    assert main([*args, "--check"]) == 1 and "add a line <!-- beyond:start -->" in capsys.readouterr().out
    assert main(args) == 2 and "README has no section for them" in capsys.readouterr().err
    assert "| C01" not in readme.read_text()  # nothing half-written
    readme.write_text(f"# x\n{L.START}\n{L.END}\n\n## Beyond the article\n\n{L.BEYOND_START}\n{L.BEYOND_END}\n")
    assert main(args) == 0 and "33 claims, 2 beyond the article" in capsys.readouterr().out
    assert main([*args, "--check"]) == 0 and main(args) == 0
    text = readme.read_text()
    assert text.index("| C33") < text.index(L.BEYOND_START) < text.index("| B01")
    readme.write_text(text.replace("| B02 | the article says", "| B02 | someone says"))
    assert main([*args, "--check"]) == 1 and "B02: claim differs" in capsys.readouterr().out
