"""Static gates over every course notebook: format, parameters cell, executed outputs, conventions."""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import pkgutil
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


@functools.cache
def _dsnb_public() -> dict[str, object]:
    """Every public name defined in a dsnb module, mapped to the object (for its source)."""
    public: dict[str, object] = {}
    for mod in pkgutil.walk_packages(dsnb.__path__, "dsnb."):
        if mod.name.endswith("__main__"):
            continue
        module = importlib.import_module(mod.name)
        for n in dir(module):
            if not n.startswith("_"):
                public.setdefault(n, getattr(module, n))
    return public


def _asserts_mentioning(name: str, cell) -> bool:
    """Does ``cell`` hold an ``assert`` that uses ``name``?"""
    for node in ast.walk(ast.parse(_python_source(cell))):
        if isinstance(node, ast.Assert) and any(
                isinstance(n, ast.Name) and n.id == name or isinstance(n, ast.Attribute) and n.attr == name
                for n in ast.walk(node)):
            return True
    return False


def test_redefinitions_are_checked_against_dsnb(nb):
    """A notebook may write a dsnb function from scratch (that is teaching) only if the next code cell
    asserts that the hand-written one equals the package's or the library's result."""
    public = _dsnb_public()
    cells = _code_cells(nb)
    for i, cell in enumerate(cells):
        for node in ast.walk(ast.parse(_python_source(cell))):
            if isinstance(node, ast.FunctionDef | ast.ClassDef) and node.name in public:
                following = cells[i + 1] if i + 1 < len(cells) else None
                assert following is not None and _asserts_mentioning(node.name, following), (
                    f"the notebook re-implements dsnb's {node.name}: the next code cell must assert it equals "
                    "the package's (or the library's) result, or import it instead")


def test_no_widget_state(nb):
    assert "widgets" not in nb.metadata, "notebook metadata carries widget state: strip it (progress as text lines)"
    for cell in _code_cells(nb):
        for out in cell.get("outputs", []):
            assert "application/vnd.jupyter.widget-view+json" not in out.get("data", {}), (
                f"a progress widget in the outputs of:\n{cell.source}\nturn progress bars off "
                "(transformers.utils.logging.disable_progress_bar) and print text lines")


_LABELS = {"title": r"title\s*=|set_title\(|\.title\(|suptitle\(",
           "x label": r"xlabel\s*=|set_xlabel\(|\.xlabel\(", "y label": r"ylabel\s*=|set_ylabel\(|\.ylabel\("}


def _called_dsnb_sources(cell) -> str:
    """Source of every dsnb function the cell calls (a plotting helper may set the labels itself), and the
    module of every dsnb class it instantiates (a callback such as a live dashboard draws from there)."""
    public, out = _dsnb_public(), []
    for node in ast.walk(ast.parse(_python_source(cell))):
        if isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            obj = public.get(name)
            if inspect.isfunction(obj) and obj.__module__.startswith("dsnb"):
                out.append(inspect.getsource(obj))
            elif inspect.isclass(obj) and obj.__module__.startswith("dsnb"):
                out.append(inspect.getsource(inspect.getmodule(obj)))
    return "\n".join(out)


def test_every_figure_has_a_title_and_axis_labels(nb):
    """A cell whose output is a figure sets a title and both axis labels (itself or in the dsnb helper it
    calls); a picture shown with its axes off (an image, not a chart) needs only a title."""
    for cell in _code_cells(nb):
        if not any("image/png" in out.get("data", {}) for out in cell.get("outputs", [])):
            continue
        text = cell.source + "\n" + _called_dsnb_sources(cell)
        needed = ["title"] if re.search(r"axis\(\s*[\"']off", cell.source) else list(_LABELS)
        missing = [k for k in needed if not re.search(_LABELS[k], text)]
        assert not missing, f"a figure without its {', '.join(missing)} (with units):\n{cell.source}"


_BARS = re.compile(r"\.(?:bar|barh)\(|kind\s*=\s*[\"']barh?[\"']")
_AXIS_LIMIT = re.compile(r"\b(?:set_)?([xy])lim\s*(?:=|\()\s*\(?\s*([^,()\]]+)")
_FROM_ZERO = re.compile(r"0(?:\.0*)?|None|(?:bottom|left)\s*=\s*0(?:\.0*)?|(?:top|right)\s*=.*")
_LOG_SCALE = re.compile(r"\b(?:set_)?([xy])scale\s*(?:=|\()\s*[\"']log")


def test_bar_axes_start_at_zero(nb):
    """A bar's length is its value: a bar chart's value axis is not cut above zero, and a log value axis
    says so in its label (bars on a log axis compare ratios, not lengths)."""
    for cell in _code_cells(nb):
        if not _BARS.search(cell.source):
            continue
        for axis, low in _AXIS_LIMIT.findall(cell.source):
            assert _FROM_ZERO.fullmatch(low.strip()), (
                f"a bar chart's {axis} axis starts at {low.strip()!r}, not 0: a cut axis makes small "
                f"differences look large\n{cell.source}")
        for axis in _LOG_SCALE.findall(cell.source):
            assert re.search(rf"{axis}label\s*=\s*[\"'][^\"']*log", cell.source), (
                f"a bar chart on a log {axis} axis without '(log...)' in its {axis} label\n{cell.source}")


def test_no_figure_is_stored_twice(nb):
    """The same picture stored in two outputs doubles the notebook's size and the reader's scrolling."""
    seen: dict[str, int] = {}
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            png = out.get("data", {}).get("image/png")
            if png:
                assert png not in seen, f"cells {seen[png]} and {i} store the same figure: show it once"
                seen[png] = i


_PROGRESS_LINE = re.compile(r"^\S+: (?:step \d+/\d+ |done, \d+ steps|\d+ steps$)", re.M)


def test_one_output_block_per_stream(nb):
    """A cell's prints form one stdout block (progress lines included) between its figures and tables, and at
    most one stderr block (a library's warning): no walls of one-line blocks, no progress on stderr."""
    for i, cell in enumerate(nb.cells):
        outputs = cell.get("outputs", [])
        names = [o.get("name") if o.output_type == "stream" else None for o in outputs]
        blocks = [n for n in names if n]
        joined = all(a is None or a != b for a, b in zip(names, names[1:], strict=False))
        assert joined and blocks.count("stderr") <= 1, (
            f"cell {i} stores stream blocks {blocks}: progress goes to stdout (dsnb.progress) and the re-run "
            f"joins a cell's blocks (python -m dsnb.course --coalesce)")
        for out in outputs:
            if out.output_type == "stream" and out.name == "stderr":
                assert not _PROGRESS_LINE.search(out.text), f"cell {i}: progress lines on stderr"


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


def _notebook(*cells):
    nb = nbformat.v4.new_notebook()
    nb.cells = list(cells)
    return nb


def test_the_new_rules_fail_when_they_should():
    from nbformat.v4 import new_code_cell, new_output

    by_hand = new_code_cell("def distinct_n(texts, n):\n    return 0.0")
    check = new_code_cell("assert distinct_n(['a b'], 1) == dialogue.distinct_n(['a b'], 1)")
    test_redefinitions_are_checked_against_dsnb(_notebook(by_hand, check))
    with pytest.raises(AssertionError, match="re-implements dsnb's distinct_n"):
        test_redefinitions_are_checked_against_dsnb(_notebook(by_hand, new_code_cell("print(distinct_n([], 1))")))
    png = new_output("display_data", data={"image/png": "", "text/plain": "<Figure>"})
    labelled = new_code_cell("ax.plot(x)\nax.set(title='t', xlabel='step', ylabel='loss (nats)')", outputs=[png])
    test_every_figure_has_a_title_and_axis_labels(_notebook(labelled))
    with pytest.raises(AssertionError, match="y label"):
        test_every_figure_has_a_title_and_axis_labels(
            _notebook(new_code_cell("ax.plot(x)\nax.set(title='t', xlabel='step')", outputs=[png])))
    for cut in ("ax.set_ylim(0.9 * min(v), None)", "ax.set(ylim=(min(v) * 0.97, 1))", "plt.xlim(2, 9)"):
        with pytest.raises(AssertionError, match="not 0"):
            test_bar_axes_start_at_zero(_notebook(new_code_cell(f"ax.bar(x, v)\n{cut}")))
    for fine in ("ax.set_ylim(0, 1.1 * max(v))", "ax.set_ylim(bottom=0)", "ax.set(ylim=(0, 1))", "ax.set_ylim(top=2)"):
        test_bar_axes_start_at_zero(_notebook(new_code_cell(f"ax.bar(x, v)\n{fine}")))
    with pytest.raises(AssertionError, match="log y axis"):
        test_bar_axes_start_at_zero(_notebook(new_code_cell("ax.bar(x, v)\nax.set_yscale('log')\nax.set(ylabel='s')")))
    test_bar_axes_start_at_zero(_notebook(new_code_cell("ax.barh(x, v)\nax.set(xscale='log', xlabel='n (log scale)')")))
    twice = [new_output("display_data", data={"image/png": "AAAA", "text/plain": "<Figure>"}) for _ in range(2)]
    with pytest.raises(AssertionError, match="same figure"):
        test_no_figure_is_stored_twice(_notebook(new_code_cell("a", outputs=twice[:1]), new_code_cell("b", outputs=twice[1:])))
    lines = [new_output("stream", name="stdout", text=f"{k}\n") for k in range(2)]
    with pytest.raises(AssertionError, match="stream blocks"):
        test_one_output_block_per_stream(_notebook(new_code_cell("train()", outputs=lines)))
    figure = new_output("display_data", data={"image/png": "AAAA", "text/plain": "<Figure>"})
    test_one_output_block_per_stream(_notebook(new_code_cell("train()", outputs=[lines[0], figure, lines[1]])))
    progress = new_output("stream", name="stderr", text="sft: step 6/60 last logged loss 4.6 6.75 steps/s\n")
    with pytest.raises(AssertionError, match="progress lines on stderr"):
        test_one_output_block_per_stream(_notebook(new_code_cell("train()", outputs=[progress])))
    widget = new_output("display_data", data={"application/vnd.jupyter.widget-view+json": {}, "text/plain": ""})
    with pytest.raises(AssertionError, match="widget"):
        test_no_widget_state(_notebook(new_code_cell("load()", outputs=[widget])))
