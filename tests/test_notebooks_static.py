"""Static gates over every course notebook: format, parameters cell, executed outputs, conventions."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat
import pytest

import dsnb

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))
REQUIRED_HEADINGS = ("What we measured", "Scale it up", "Exercise")
MAX_CELL_LINES = 15
MAX_NOTEBOOK_BYTES = 2_000_000


def _code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def _python_source(cell) -> str:
    """Cell source with IPython magics and shell escapes commented out, so ast can parse it."""
    return "\n".join("# " + ln if ln.lstrip().startswith(("%", "!")) else ln for ln in cell.source.splitlines())


def test_there_are_notebooks():
    assert NOTEBOOKS, "no numbered notebooks found"


@pytest.fixture(params=NOTEBOOKS, ids=lambda p: p.name)
def nb(request):
    return nbformat.read(request.param, as_version=4)


def test_valid_nbformat(nb):
    nbformat.validate(nb)


def test_every_code_cell_parses(nb):
    for i, cell in enumerate(_code_cells(nb)):
        try:
            ast.parse(_python_source(cell))
        except SyntaxError as exc:  # pragma: no cover - the message is the point
            pytest.fail(f"code cell {i} does not parse: {exc}")


def test_first_code_cell_is_parameters(nb):
    first = _code_cells(nb)[0]
    assert "parameters" in first.metadata.get("tags", []), "the first code cell must be tagged 'parameters'"


def test_no_sys_path_edits(nb):
    for cell in _code_cells(nb):
        assert not re.search(r"sys\.path\.(insert|append)|PYTHONPATH", cell.source), cell.source


def test_cells_are_short(nb):
    for cell in _code_cells(nb):
        n = len([ln for ln in cell.source.splitlines() if ln.strip()])
        assert n <= MAX_CELL_LINES, f"a code cell has {n} lines; move the logic into dsnb:\n{cell.source}"


def test_no_redefinition_of_dsnb_functions(nb):
    public = set()
    import importlib
    import pkgutil

    for mod in pkgutil.walk_packages(dsnb.__path__, "dsnb."):
        if mod.name.endswith("__main__"):
            continue
        public |= {n for n in dir(importlib.import_module(mod.name)) if not n.startswith("_")}
    for cell in _code_cells(nb):
        for node in ast.walk(ast.parse(_python_source(cell))):
            if isinstance(node, ast.FunctionDef | ast.ClassDef):
                assert node.name not in public, f"notebook redefines dsnb's {node.name}; import it instead"


def test_executed_in_order(nb):
    counts = [c.execution_count for c in _code_cells(nb)]
    assert counts == list(range(1, len(counts) + 1)), f"execution counts {counts}: re-run top to bottom"


def test_no_errors_in_outputs(nb):
    for cell in _code_cells(nb):
        for out in cell.get("outputs", []):
            assert out.output_type != "error", f"committed output has an error: {out.get('ename')}"


def test_required_sections(nb):
    md = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    for heading in REQUIRED_HEADINGS:
        assert heading in md, f"missing a section containing {heading!r}"
    assert re.search(r"learning goals", md, re.I), "missing the learning goals"


def test_notebook_size():
    for path in NOTEBOOKS:
        assert path.stat().st_size < MAX_NOTEBOOK_BYTES, f"{path.name} is large: keep outputs small"
