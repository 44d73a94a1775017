"""Check every internal link and image of a built site: each relative ``href``/``src`` names a file that exists,
and each ``#fragment`` an id on the page it points at.

Sphinx warns about the links it resolves itself; this also covers what it passes through untouched (raw HTML in
notebook outputs and markdown, theme templates). External URLs are left alone: the build has no network.
Usage: ``python docs/check_links.py build/site``; exits 1 and lists each broken link.
"""

from __future__ import annotations

import argparse
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

#: (tag, attribute) pairs that point at another file.
LINK_ATTRIBUTES = {("a", "href"), ("link", "href"), ("img", "src"), ("script", "src"), ("iframe", "src"),
                   ("source", "src")}


class _Page(HTMLParser):
    """The ids of one page and the (tag, url) of its links."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.links: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value is None:
                continue
            if name == "id" or (tag == "a" and name == "name"):
                self.ids.add(value)
            if (tag, name) in LINK_ATTRIBUTES:
                self.links.append((tag, value))


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def site_pages(site: Path) -> list[Path]:
    """The site's HTML pages; not the theme's template fragments that Sphinx copies into ``_static``."""
    return sorted(p for p in site.rglob("*.html") if "_static" not in p.relative_to(site).parts)


def broken_links(site: Path) -> list[str]:
    """One line per internal link or image of the site's HTML pages whose file or fragment is missing."""
    pages = {p.resolve(): _parse(p) for p in site_pages(site)}
    if not pages:
        return [f"{site}: no HTML pages (was the site built?)"]
    problems = []
    for path, page in pages.items():
        for tag, url in page.links:
            parts = urlsplit(url)
            if parts.scheme or url.startswith("//"):
                continue  # external, data: or mailto:
            target = (path.parent / unquote(parts.path)).resolve() if parts.path else path
            if target.is_dir():
                target = target / "index.html"
            where = f"{path.relative_to(site.resolve())}: <{tag}> {url}"
            if not target.is_relative_to(site.resolve()):
                problems.append(f"{where}: outside the site")
            elif not target.is_file():
                problems.append(f"{where}: no such file")
            elif target.stat().st_size == 0:
                problems.append(f"{where}: the file is empty")
            elif parts.fragment and target.suffix == ".html" and unquote(parts.fragment) not in pages[target].ids:
                problems.append(f"{where}: no id {parts.fragment!r} on that page")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("site", type=Path, help="the built site's folder")
    args = parser.parse_args(argv)
    problems = broken_links(args.site)
    for line in problems:
        print(line, file=sys.stderr)
    pages = len(site_pages(args.site))
    print(f"links: {len(problems)} broken internal links or images in {pages} pages")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
