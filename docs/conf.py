"""Sphinx configuration of the course site (``make site``; the sources are laid out by docs/stage.py).

Notebooks are rendered with MyST-NB from their committed outputs, never executed; the package reference comes
from ``dsnb``'s docstrings through autodoc. docs/build.py runs Sphinx with warnings as errors.
"""

from __future__ import annotations

import re

import dsnb

project = "dsnb"
author = "the dsnb course authors"
copyright = "the dsnb course authors, Apache-2.0"
release = version = dsnb.__version__

extensions = ["myst_nb", "sphinx.ext.autodoc"]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
# ipynb/ holds the untouched notebooks the download links point at: files to copy, not pages.
exclude_patterns = ["ipynb/**", "**/.ipynb_checkpoints"]

# The pages show the outputs committed with the notebooks (one top-to-bottom run of each); nothing runs here.
nb_execution_mode = "off"
nb_merge_streams = True
myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True

html_theme = "sphinx_book_theme"
html_title = "dsnb course"
html_static_path = ["_static"]
html_favicon = "_static/favicon.svg"
html_css_files = ["site.css"]
html_theme_options = {
    "show_toc_level": 2,
    "use_download_button": False,  # each notebook page has its own download box (docs/stage.py)
    "use_fullscreen_button": False,
    "home_page_in_toc": True,
}
# without it, a first visit logs "invalid theme mode" to the console (the browser test counts console errors)
html_context = {"default_mode": "auto"}
html_last_updated_fmt = None
html_show_sourcelink = False


_LITERAL = re.compile(r"(``.+?``)")


def _plain_pipes(app, what, name, obj, options, lines: list[str]) -> None:
    """Escape ``|`` outside ``literals``: dsnb's docstrings, written to be read in ``help()``, write |w| for an
    absolute value, which reStructuredText would read as a substitution reference."""
    for i, line in enumerate(lines):
        lines[i] = "".join(p if p.startswith("``") else p.replace("|", r"\|") for p in _LITERAL.split(line))


def setup(app) -> None:
    app.connect("autodoc-process-docstring", _plain_pipes)
