"""Lay out the course site's Sphinx sources from the committed files (run by docs/build.py, not by hand).

Writes into one folder, rebuilt from scratch each time:

- ``index.md``: README's title, introduction, "Start here" and course map; every notebook in the sidebar;
- ``notebooks/NN_name.ipynb``: each committed notebook as it is, outputs included (nothing is executed), plus
  a box under its title (download link, the command that runs it, the ``dsnb`` pages it uses), its checking
  cells folded (:func:`fold_prompt`) and its ledger outputs reduced to the table they show (the rows' JSON
  under ``dsnb.ledger.MIME`` is for README's ledger);
- ``ipynb/NN_name.ipynb``: the untouched notebook, for the download link;
- ``ledger.md``: README's claims ledger, each "notebook NN" linked to its page;
- ``api/``: one page per ``dsnb`` sub-package (plus one for the top-level modules), from the docstrings.

The page lists come from the files (``dsnb.course.notebooks_in``, the package's folders), never from a list here.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from dsnb.course import notebooks_in
from dsnb.ledger import MIME as LEDGER_MIME

ROOT = Path(__file__).resolve().parent.parent
#: The README sections the site shows, by heading.
HOME_SECTIONS = ("Start here", "Course map")
LEDGER_SECTION = "Claims ledger"
#: The folded prompt of a cell that mostly checks code on the page against dsnb or a library, and of a ledger cell.
CHECK_PROMPT = ("Show the check", "Hide the check")
LEDGER_PROMPT = ("Show how this notebook's ledger rows are built", "Hide the ledger code")


class SiteError(ValueError):
    """A source the site is built from is missing or not in the shape the site expects."""


@dataclass
class ApiPage:
    """One reference page: a ``dsnb`` sub-package (or the top-level modules) and the modules it documents."""

    name: str
    modules: list[str]
    used_by: list[str] = field(default_factory=list)

    @property
    def doc(self) -> str:
        return f"api/{self.name}"


def readme_section(text: str, heading: str) -> str:
    """The body of README's ``## heading`` section, up to the next ``## `` heading."""
    match = re.search(rf"^## {re.escape(heading)}[ \t]*\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    if not match:
        raise SiteError(f"README.md has no '## {heading}' section; the site shows it (docs/stage.py names the sections)")
    return match.group(1).strip() + "\n"


def readme_intro(text: str) -> tuple[str, str]:
    """README's ``# title`` and the paragraphs before its first ``## `` heading."""
    match = re.match(r"# (.+?)\n(.*?)(?=^## )", text, re.S | re.M)
    if not match:
        raise SiteError("README.md should start with a '# title' line followed by an introduction")
    return match.group(1).strip(), match.group(2).strip() + "\n"


def api_pages(package: Path) -> list[ApiPage]:
    """One page per sub-package of ``package`` (all its modules, nested ones too), then one for its own modules."""
    pages = []
    for sub in sorted(p for p in package.iterdir() if (p / "__init__.py").exists()):
        modules = [_module(package, f) for f in sorted(sub.rglob("*.py")) if f.name != "__main__.py"]
        pages.append(ApiPage(f"{package.name}.{sub.name}", sorted(modules)))
    top = [_module(package, f) for f in sorted(package.glob("*.py")) if f.name != "__main__.py"]
    pages.append(ApiPage(package.name, sorted(top)))
    return pages


def _module(package: Path, path: Path) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _code(cell: dict) -> ast.Module | None:
    """The cell's source as Python, or None when it is not plain Python (an IPython magic, say)."""
    try:
        return ast.parse("".join(cell["source"]))
    except SyntaxError:
        return None


def imported_modules(nb: dict) -> set[str]:
    """The ``dsnb`` modules and packages the notebook's code cells import (``from dsnb.x import y`` counts ``dsnb.x.y``)."""
    found = set()
    for cell in nb["cells"]:
        tree = _code(cell) if cell["cell_type"] == "code" else None
        for node in ast.walk(tree) if tree else ():
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "dsnb":
                found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.split(".")[0] == "dsnb"}
    return found


def pages_used(nb: dict, pages: list[ApiPage]) -> list[ApiPage]:
    """The reference pages documenting a module the notebook imports, in page order."""
    used = imported_modules(nb)
    return [page for page in pages if used & set(page.modules)]


def _is_print(node: ast.stmt) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) and getattr(node.value.func, "id", "") == "print"


def _is_check(node: ast.stmt) -> bool:
    """An ``assert``, an ``assert_*(...)`` call (torch.testing, numpy.testing), or a block holding only those."""
    if isinstance(node, ast.Assert):
        return True
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
        func = node.value.func
        return (getattr(func, "attr", None) or getattr(func, "id", "")).startswith("assert")
    if isinstance(node, ast.For | ast.With | ast.If):
        inner = [n for n in node.body if not _is_print(n)]
        return bool(inner) and all(_is_check(n) for n in inner)
    return False


def fold_prompt(cell: dict) -> tuple[str, str] | None:
    """The (show, hide) prompt when a code cell's source should start folded, else None.

    Folded: ledger cells (tag ``ledger``: their table is the output) and cells that mostly check, i.e. whose
    statements other than ``print`` are at least half checks (:func:`_is_check`); a cell that computes something
    by hand and checks it on its last line stays open. The output always shows.
    """
    if cell["cell_type"] != "code" or "parameters" in cell.get("metadata", {}).get("tags", []):
        return None
    if "ledger" in cell.get("metadata", {}).get("tags", []):
        return LEDGER_PROMPT
    tree = _code(cell)
    body = [n for n in tree.body if not _is_print(n)] if tree else []
    checks = sum(map(_is_check, body))
    return CHECK_PROMPT if checks and 2 * checks >= len(body) else None


def _notebook_box(path: Path, used: list[ApiPage]) -> dict:
    """The markdown cell put under the notebook's title: download, how to run it, the package pages it uses."""
    name = path.name
    lines = [
        ":::{admonition} Get this notebook and run it",
        ":class: tip",
        f"{{download}}`Download {name} <../ipynb/{name}>` (with the outputs shown on this page, which come from one "
        "top-to-bottom run on a 2-core CPU). To run it yourself, from a clone of the course:",
        "",
        "```bash",
        "make setup base-model   # .venv, the packages and the course's base model (a few minutes, once)",
        f".venv/bin/jupyter nbconvert --to notebook --execute --output-dir build/run notebooks/{name}",
        "```",
        "",
        "or work through it in JupyterLab with `make lab`. Every notebook at once: `make course`.",
    ]
    if used:
        links = ", ".join(f"{{doc}}`{p.name} <../{p.doc}>`" for p in used)
        lines += ["", f"The `dsnb` code it calls, documented: {links}."]
    lines.append(":::")
    return {"cell_type": "markdown", "id": "site-get-this-notebook", "metadata": {},
            "source": "\n".join(lines) + "\n"}


def _drop_ledger_data(output: dict, path: Path) -> None:
    """Remove a ledger output's rows (JSON for README's ledger, which a page does not show) and keep its table."""
    data = output.get("data", {})
    if LEDGER_MIME in data:
        if not {"text/markdown", "text/html"} & set(data):
            raise SiteError(f"{path}: a ledger output has no text/markdown or text/html table beside its rows "
                            "(dsnb.ledger.ledger writes both: re-run the notebook's ledger cell)")
        del data[LEDGER_MIME]


def stage_notebook(path: Path, used: list[ApiPage]) -> dict:
    """The notebook as the site shows it: the box under its title and its checking cells folded."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    cells = nb["cells"]
    if not cells or cells[0]["cell_type"] != "markdown" or not "".join(cells[0]["source"]).lstrip().startswith("# "):
        raise SiteError(f"{path}: the first cell should be markdown starting with the '# title' of the page")
    for cell in cells:
        for output in cell.get("outputs", []):
            _drop_ledger_data(output, path)
        prompt = fold_prompt(cell)
        if prompt:
            meta = cell.setdefault("metadata", {})
            meta["tags"] = [*meta.get("tags", []), "hide-input"]
            meta["mystnb"] = {"code_prompt_show": prompt[0], "code_prompt_hide": prompt[1]}
    cells.insert(1, _notebook_box(path, used))
    return nb


def link_notebooks(text: str, notebooks: list[Path], prefix: str) -> str:
    """``text`` with each "notebook NN" outside code spans linked to that notebook's page."""
    pages = {p.name[:2]: p.name for p in notebooks}

    def link(match: re.Match) -> str:
        number = match.group(1)
        return f"[notebook {number}]({prefix}{pages[number]})" if number in pages else match.group(0)

    parts = re.split(r"(`[^`]*`)", text)
    return "".join(p if p.startswith("`") else re.sub(r"\bnotebook (\d\d)\b", link, p) for p in parts)


def home_page(readme: str, notebooks: list[Path]) -> str:
    """README's title, introduction and home sections; notebooks the course map does not link yet are listed."""
    title, intro = readme_intro(readme)
    sections = "\n".join(f"## {h}\n\n{readme_section(readme, h)}" for h in HOME_SECTIONS)
    missing = [p for p in notebooks if f"notebooks/{p.name}" not in sections]
    extra = ""
    if missing:
        extra = "Also in the course: " + ", ".join(f"[{p.stem}](notebooks/{p.name})" for p in missing) + ".\n"
    toc = ["```{toctree}", ":caption: Notebooks", ":hidden:", ":maxdepth: 1", "",
           *[f"notebooks/{p.stem}" for p in notebooks], "```", "",
           "```{toctree}", ":caption: Reference", ":hidden:", ":maxdepth: 1", "", "ledger", "api/index", "```"]
    return f"# {title}\n\n{intro}\n{sections}\n{extra}\n" + "\n".join(toc) + "\n"


def ledger_page(readme: str, notebooks: list[Path]) -> str:
    """README's claims ledger section with every "notebook NN" linked."""
    return f"# {LEDGER_SECTION}\n\n{link_notebooks(readme_section(readme, LEDGER_SECTION), notebooks, 'notebooks/')}"


def _rst_title(text: str, char: str) -> str:
    return f"{text}\n{char * len(text)}\n"


def api_page(page: ApiPage) -> str:
    """One reference page in reStructuredText: the package's docstring, then each module's members."""
    title = page.name if "." in page.name else f"{page.name} (top-level modules)"
    out = [_rst_title(title, "=")]
    if page.used_by:
        links = ", ".join(f":doc:`notebook {n[:2]} <../notebooks/{Path(n).stem}>`" for n in page.used_by)
        out.append(f"Used in {links}.\n")
    for module in page.modules:
        if module == page.name:
            out.append(f".. automodule:: {module}\n")
        else:
            out += [_rst_title(module, "-"), f".. automodule:: {module}\n   :members:\n"]
    return "\n".join(out)


def api_index(pages: list[ApiPage]) -> str:
    """The reference's front page: the package's layout and one entry per page."""
    rows = "\n".join(f"- {{doc}}`{p.name} <{p.name}>`: {len(p.modules)} modules" for p in pages)
    toc = "\n".join(p.name for p in pages)
    return ("# The dsnb package\n\nGenerated from the docstrings of the package the notebooks call: one page per "
            "sub-package, in the course's order of imports (data → model → plan → train → compress / serve → "
            f"checklist, course).\n\n{rows}\n\n```{{toctree}}\n:hidden:\n\n{toc}\n```\n")


def stage(out: Path, root: Path = ROOT) -> list[Path]:
    """Write the site's sources for the repository at ``root`` into ``out`` (emptied first); the notebooks staged."""
    notebooks = notebooks_in(root / "notebooks")
    readme = (root / "README.md").read_text(encoding="utf-8")
    pages = api_pages(root / "dsnb")
    if out.exists():
        shutil.rmtree(out)
    for folder in ("notebooks", "ipynb", "api"):
        (out / folder).mkdir(parents=True)
    for path in notebooks:
        nb = json.loads(path.read_text(encoding="utf-8"))
        used = pages_used(nb, pages)
        for page in used:
            page.used_by.append(path.name)
        staged = stage_notebook(path, used)
        (out / "notebooks" / path.name).write_text(json.dumps(staged, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        shutil.copy2(path, out / "ipynb" / path.name)
    (out / "index.md").write_text(home_page(readme, notebooks), encoding="utf-8")
    (out / "ledger.md").write_text(ledger_page(readme, notebooks), encoding="utf-8")
    (out / "api" / "index.md").write_text(api_index(pages), encoding="utf-8")
    for page in pages:
        (out / f"{page.doc}.rst").write_text(api_page(page), encoding="utf-8")
    return notebooks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the folder to write the sources into (emptied first)")
    args = parser.parse_args(argv)
    try:
        notebooks = stage(args.out)
    except SiteError as exc:
        raise SystemExit(f"site: {exc}") from None
    print(f"site sources: {len(notebooks)} notebooks staged in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
