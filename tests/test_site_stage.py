"""The site's sources (docs/stage.py) and its link check (docs/check_links.py), on small made-up repositories.

The real build and the browser are tests/test_site_browser.py; these run in a second.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from dsnb.ledger import MIME

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"site_{name}", ROOT / "docs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


stage = _load("stage")
check_links = _load("check_links")

README = """# A course

What it is.

## Start here

`make course`

## Course map

| # | notebook |
|---|---|
| 00 | [intro](notebooks/00_intro.ipynb) |

## Claims ledger

Rows from the notebooks.

<!-- ledger:start -->
| id | claim | how we checked |
|---|---|---|
| C01 | something | notebook 00 + tests/test_x.py: `notebook 00` in code stays |
<!-- ledger:end -->

## Layout
"""


def _code(source: str, tags: list[str] | None = None, outputs: list | None = None) -> dict:
    return {"cell_type": "code", "id": "c", "metadata": {"tags": tags or []}, "source": source,
            "outputs": outputs or [], "execution_count": 1}


def _notebook(title: str, *cells: dict) -> dict:
    first = {"cell_type": "markdown", "id": "t", "metadata": {}, "source": f"# {title}\n\nGoals."}
    return {"cells": [first, *cells], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


@pytest.fixture
def repo(tmp_path) -> Path:
    (tmp_path / "README.md").write_text(README)
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    (nbs / "00_intro.ipynb").write_text(json.dumps(_notebook("00 · Intro", _code("from dsnb.alpha import one"))))
    (nbs / "12_new.ipynb").write_text(json.dumps(_notebook("12 · New", _code("import dsnb.top\nimport dsnb.beta.two"))))
    (nbs / "notes.ipynb").write_text(json.dumps(_notebook("not a course notebook")))
    for path in ("dsnb/__init__.py", "dsnb/top.py", "dsnb/__main__.py", "dsnb/alpha/__init__.py", "dsnb/alpha/one.py",
                 "dsnb/beta/__init__.py", "dsnb/beta/two.py", "dsnb/beta/deep/__init__.py", "dsnb/beta/deep/three.py"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text('"""A module."""\n')
    return tmp_path


def test_pages_come_from_the_files(repo, tmp_path):
    out = tmp_path / "src"
    staged = stage.stage(out, root=repo)
    assert [p.name for p in staged] == ["00_intro.ipynb", "12_new.ipynb"]
    assert sorted(p.name for p in (out / "notebooks").iterdir()) == ["00_intro.ipynb", "12_new.ipynb"]
    assert (out / "ipynb" / "12_new.ipynb").read_bytes() == (repo / "notebooks" / "12_new.ipynb").read_bytes()
    home = (out / "index.md").read_text()
    assert "notebooks/00_intro\nnotebooks/12_new\n" in home  # the sidebar's toctree
    assert "Also in the course: [12_new](notebooks/12_new.ipynb)" in home  # README's map does not link it yet
    assert "## Course map" in home and "## Start here" in home and "## Claims ledger" not in home
    assert sorted(p.name for p in (out / "api").iterdir()) == ["dsnb.alpha.rst", "dsnb.beta.rst", "dsnb.rst", "index.md"]


def test_reference_pages_and_the_notebooks_that_use_them_link_each_other(repo, tmp_path):
    out = tmp_path / "src"
    stage.stage(out, root=repo)
    beta = (out / "api" / "dsnb.beta.rst").read_text()
    assert "Used in :doc:`notebook 12 <../notebooks/12_new>`." in beta
    assert ".. automodule:: dsnb.beta.deep.three\n   :members:" in beta and "__main__" not in beta
    top = (out / "api" / "dsnb.rst").read_text()
    assert ".. automodule:: dsnb\n" in top and ".. automodule:: dsnb.top\n" in top
    box = json.loads((out / "notebooks" / "12_new.ipynb").read_text())["cells"][1]["source"]
    assert "{doc}`dsnb.beta <../api/dsnb.beta>`" in box and "{doc}`dsnb <../api/dsnb>`" in box
    assert "dsnb.alpha" not in box and "{download}`Download 12_new.ipynb <../ipynb/12_new.ipynb>`" in box
    assert "--output-dir build/run notebooks/12_new.ipynb" in box


def test_the_ledger_page_links_notebooks_outside_code(repo, tmp_path):
    out = tmp_path / "src"
    stage.stage(out, root=repo)
    page = (out / "ledger.md").read_text()
    assert page.startswith("# Claims ledger\n\nRows from the notebooks.")
    assert "| C01 | something | [notebook 00](notebooks/00_intro.ipynb) + tests/test_x.py: `notebook 00` in code" in page
    assert "## Layout" not in page


def test_a_missing_readme_section_is_named(repo, tmp_path):
    (repo / "README.md").write_text(README.replace("## Course map", "## Map"))
    with pytest.raises(stage.SiteError, match="no '## Course map' section"):
        stage.stage(tmp_path / "src", root=repo)


@pytest.mark.parametrize(("source", "tags", "folded"), [
    ("assert by_hand == library", [], stage.CHECK_PROMPT),
    ("with torch.no_grad():\n    lib = f(x)\nassert torch.allclose(mine, lib)\nprint('same')", [], stage.CHECK_PROMPT),
    ("torch.testing.assert_close(a, b)", [], stage.CHECK_PROMPT),
    ("for a, b in pairs:\n    assert a == b", [], stage.CHECK_PROMPT),
    ("x = 2 * y\nz = x + 1\nw = z ** 2\nassert w > 0", [], None),  # computes by hand: stays open
    ("rows = [1]\nledger(rows)", ["ledger"], stage.LEDGER_PROMPT),
    ("assert MODEL", ["parameters"], None),
    ("%time x = 1", [], None),  # not plain Python: left alone
])
def test_fold_prompt(source, tags, folded):
    assert stage.fold_prompt(_code(source, tags)) == folded


def test_a_staged_notebook_keeps_its_ledger_table_and_drops_the_rows(tmp_path):
    table = {"output_type": "display_data", "metadata": {},
             "data": {MIME: {"rows": []}, "text/markdown": "| id |\n|---|\n| C01 |", "text/plain": "C01"}}
    path = tmp_path / "00_x.ipynb"
    path.write_text(json.dumps(_notebook("00 · X", _code("ledger(rows)", ["ledger"], [table]))))
    nb = stage.stage_notebook(path, [])
    cell = nb["cells"][2]
    assert set(cell["outputs"][0]["data"]) == {"text/markdown", "text/plain"}
    assert "hide-input" in cell["metadata"]["tags"] and cell["metadata"]["mystnb"]["code_prompt_show"] == stage.LEDGER_PROMPT[0]
    del table["data"]["text/markdown"]
    path.write_text(json.dumps(_notebook("00 · X", _code("ledger(rows)", ["ledger"], [table]))))
    with pytest.raises(stage.SiteError, match="no text/markdown or text/html table"):
        stage.stage_notebook(path, [])


def test_a_notebook_without_a_title_cell_is_refused(tmp_path):
    path = tmp_path / "00_x.ipynb"
    path.write_text(json.dumps({"cells": [_code("x = 1")], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    with pytest.raises(stage.SiteError, match="first cell should be markdown"):
        stage.stage_notebook(path, [])


def test_check_links_finds_missing_files_fragments_and_empty_images(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "page.html").write_text('<h1 id="top">t</h1><a href="#nowhere">x</a><img src="../fig.png">')
    (tmp_path / "fig.png").write_bytes(b"")
    (tmp_path / "_static").mkdir()
    (tmp_path / "_static" / "macros.html").write_text("<a href=\"{{ pathto('x') }}\">template</a>")
    (tmp_path / "index.html").write_text(
        '<a href="sub/page.html#top">ok</a><a href="sub/">dir</a><a href="gone.html">gone</a>'
        '<a href="https://example.org/x">external</a><a href="mailto:a@b.c">mail</a><a href="../../etc/passwd">out</a>'
        '<link href="sub/page.html#missing">')
    problems = check_links.broken_links(tmp_path)
    assert sorted(p.split(": ", 1)[1] for p in problems) == sorted([
        "<a> #nowhere: no id 'nowhere' on that page", "<img> ../fig.png: the file is empty",
        "<a> sub/: no such file", "<a> gone.html: no such file", "<a> ../../etc/passwd: outside the site",
        "<link> sub/page.html#missing: no id 'missing' on that page"])
    (tmp_path / "sub" / "index.html").write_text("<p>dir</p>")
    (tmp_path / "fig.png").write_bytes(b"\x89PNG")
    assert len(check_links.broken_links(tmp_path)) == 4
