"""Build the course site: ``python docs/build.py [OUT]`` (what ``make site`` runs; OUT defaults to build/site).

Three steps, each failing the build: lay out the sources from the committed files (docs/stage.py, into
OUT-src), run Sphinx with every warning an error (notebooks rendered from their committed outputs, never
executed), then check every internal link and image of the result (docs/check_links.py).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from sphinx.cmd.build import build_main

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the two sibling scripts, which are not an installed package

import check_links  # noqa: E402
import stage  # noqa: E402


def build(out: Path, root: Path = stage.ROOT) -> int:
    """Stage the repository at ``root``, build and check its site into ``out``; 0 when it built without a warning
    and every link resolves."""
    t0 = time.perf_counter()
    sources, doctrees = out.with_name(out.name + "-src"), out.with_name(out.name + "-doctrees")
    try:
        notebooks = stage.stage(sources, root)
    except stage.SiteError as exc:
        print(f"site: {exc}", file=sys.stderr)
        return 1
    code = build_main(["-b", "html", "-W", "--keep-going", "-q", "-E", "-j", "auto", "-c", str(HERE), "-d", str(doctrees),
                       str(sources), str(out)])
    if code:
        print("site: Sphinx reported the warnings above (they count as errors)", file=sys.stderr)
        return code
    problems = check_links.broken_links(out)
    for line in problems:
        print(f"site: broken link: {line}", file=sys.stderr)
    print(f"site: {len(notebooks)} notebook pages, {len(check_links.site_pages(out))} HTML pages in {out}, "
          f"{len(problems)} broken internal links or images, {time.perf_counter() - t0:.0f} s")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=Path("build/site"))
    parser.add_argument("--root", type=Path, default=stage.ROOT, help="the repository to build from (default: this one)")
    args = parser.parse_args(argv)
    return build(args.out, args.root)


if __name__ == "__main__":
    raise SystemExit(main())
