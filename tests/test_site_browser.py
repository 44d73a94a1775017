"""The course site, built as ``make site`` builds it and opened in Debian's headless Chromium.

The build (docs/build.py: warnings are errors, every internal link and image checked) runs once for the module;
a second, small build shows that a broken link fails it.
The browser opens the home page and every notebook page over HTTP, checks that each figure the notebook's
outputs hold is rendered (natural width > 0) and that nothing was logged as a console error, searches for "GPTQ"
and expects notebook 09's page among the results, and saves screenshots of two pages in build/site-screenshots/.
Chromium and its driver come from apt-packages.txt; without them the browser tests skip, except under CI.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from test_site_stage import stage  # docs/stage.py, loaded from its file (docs/ is not a package)

from dsnb.course import notebooks_in
from dsnb.ledger import ABSENT, CLAIMS, MIME

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = notebooks_in(ROOT / "notebooks")
SCREENSHOTS = ROOT / "build" / "site-screenshots"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")




@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site") / "site"
    done = subprocess.run([sys.executable, "docs/build.py", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=1200)
    assert done.returncode == 0, f"the site did not build:\n{done.stdout[-4000:]}\n{done.stderr[-8000:]}"
    return out


def test_a_broken_link_or_image_fails_the_build(tmp_path):
    """A notebook linking a page or an image that does not exist: Sphinx warns, and the warning fails the build."""
    root = tmp_path / "repo"
    (root / "notebooks").mkdir(parents=True)
    shutil.copy(ROOT / "README.md", root)
    (root / "dsnb").mkdir()  # a reference of two light modules that the real package also has (autodoc imports those)
    for module in ("__init__.py", "cache.py"):
        shutil.copy(ROOT / "dsnb" / module, root / "dsnb")
    nb = json.loads(NOTEBOOKS[0].read_text(encoding="utf-8"))
    nb["cells"].insert(1, {"cell_type": "markdown", "id": "broken", "metadata": {},
                           "source": "See [the next one](07_gone.ipynb) and ![a plot](missing_plot.png)."})
    (root / "notebooks" / NOTEBOOKS[0].name).write_text(json.dumps(nb), encoding="utf-8")
    done = subprocess.run([sys.executable, "docs/build.py", str(tmp_path / "site"), "--root", str(root)], cwd=ROOT,
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode != 0
    assert "07_gone" in done.stderr and "missing_plot.png" in done.stderr, done.stderr[-4000:]


def _figures(path: Path) -> int:
    """How many outputs of the notebook are images (a figure may carry several formats: one image on the page)."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    return sum(any(m.startswith("image/") for m in o.get("data", {})) for c in nb["cells"] for o in c.get("outputs", []))


def test_every_notebook_has_a_page_with_its_download_and_run_command(site):
    for path in NOTEBOOKS:
        html = (site / "notebooks" / f"{path.stem}.html").read_text(encoding="utf-8")
        downloads = re.findall(r'href="(\.\./_downloads/[^"]+/' + re.escape(path.name) + ')"', html)
        assert downloads, f"{path.name}: no download link"
        assert (site / "notebooks" / downloads[0]).read_bytes() == path.read_bytes(), f"{path.name}: the download is not the committed file"
        assert f"--output-dir build/run notebooks/{path.name}" in re.sub(r"<[^>]+>", "", html)  # code: highlighted
        assert html.count("<img") >= _figures(path) and MIME not in html


def test_the_home_page_leads_to_every_notebook_and_the_reference(site):
    html = (site / "index.html").read_text(encoding="utf-8")
    for path in NOTEBOOKS:
        assert f'href="notebooks/{path.stem}.html"' in html, f"no link to {path.name} on the home page"
    assert 'href="ledger.html"' in html and 'href="api/index.html"' in html


def test_the_ledger_page_has_every_claim_and_links_its_notebooks(site):
    html = (site / "ledger.html").read_text(encoding="utf-8")
    assert all(f"<td><p>{claim}</p></td>" in html for claim in CLAIMS if claim not in ABSENT)
    assert 'href="notebooks/09_compression.html"' in html


def test_each_subpackage_has_a_reference_page_linked_from_the_notebooks_that_use_it(site):
    pages = stage.api_pages(ROOT / "dsnb")
    assert {p.name for p in pages} >= {"dsnb.data", "dsnb.model", "dsnb.train", "dsnb.compress", "dsnb.serve"}
    for page in pages:
        html = (site / f"{page.doc}.html").read_text(encoding="utf-8")
        assert all(f'id="module-{m}"' in html for m in page.modules), f"{page.name}: a module is not documented"
    gptq = (site / "api" / "dsnb.compress.html").read_text(encoding="utf-8")
    assert 'id="dsnb.compress.gptq.gptq_quantize_weight"' in gptq
    for path in NOTEBOOKS:
        html = (site / "notebooks" / f"{path.stem}.html").read_text(encoding="utf-8")
        for page in stage.pages_used(json.loads(path.read_text(encoding="utf-8")), pages):
            assert f'href="../{page.doc}.html"' in html, f"{path.name} does not link {page.name}"


def test_checking_cells_are_folded_and_their_outputs_shown(site):
    for path in NOTEBOOKS:
        nb = json.loads(path.read_text(encoding="utf-8"))
        folded = sum(stage.fold_prompt(c) is not None for c in nb["cells"])
        html = (site / "notebooks" / f"{path.stem}.html").read_text(encoding="utf-8")
        assert len(re.findall(r'<details class="[^"]*\bhide above-input"', html)) == folded, path.name
    assert "Show the check" in (site / "notebooks" / "03_sft.html").read_text(encoding="utf-8")


# The browser: Debian's chromium and chromium-driver (apt-packages.txt), driven by selenium over HTTP on loopback.

@pytest.fixture(scope="module")
def server(site) -> Iterator[str]:
    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(site)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        message = "chromium and chromium-driver are not installed (scripts/install_apt.sh installs apt-packages.txt)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1600"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _console_errors(driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def _images(driver) -> list[tuple[str, bool, int]]:
    """(src, whether it is a cell's output, natural width) of each image in the page's article, once all have loaded."""
    from selenium.webdriver.support.ui import WebDriverWait

    script = ("return Array.from(document.querySelectorAll('article img')).map(i => "
              "[i.currentSrc, i.closest('.cell_output') !== null, i.complete, i.naturalWidth])")
    WebDriverWait(driver, 30).until(lambda d: all(complete for *_, complete, _ in d.execute_script(script)))
    return [(src, output, width) for src, output, _, width in driver.execute_script(script)]


def _screenshot(driver, name: str) -> Path:
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, min(height, 8000))
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    assert driver.save_screenshot(str(path)) and path.stat().st_size > 10_000
    driver.set_window_size(1280, 1600)
    return path


def test_pages_render_their_figures_without_console_errors(browser, server):
    pages = ["index.html", "ledger.html", "api/index.html"] + [f"notebooks/{p.stem}.html" for p in NOTEBOOKS]
    problems = []
    for page in pages:
        browser.get(server + page)
        assert browser.execute_script("return document.readyState") == "complete"
        images = _images(browser)
        path = ROOT / "notebooks" / f"{Path(page).stem}.ipynb"
        outputs = sum(output for _, output, _ in images)
        if page.startswith("notebooks/") and outputs != _figures(path):
            problems.append(f"{page}: {outputs} output images on the page, {_figures(path)} figures in the notebook")
        problems += [f"{page}: image {src} not rendered" for src, _, width in images if width <= 0]
        problems += [f"{page}: console error {message}" for message in _console_errors(browser)]
        if page in ("index.html", "notebooks/09_compression.html"):
            print("screenshot:", _screenshot(browser, Path(page).stem))
    assert not problems, "\n".join(problems)


def test_searching_gptq_finds_notebook_09(browser, server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server + "index.html")
    next(b for b in browser.find_elements(By.CSS_SELECTOR, ".search-button__button") if b.is_displayed()).click()
    box = WebDriverWait(browser, 10).until(
        lambda d: next((i for i in d.find_elements(By.CSS_SELECTOR, "input[name=q]") if i.is_displayed()), None))
    box.send_keys("GPTQ", Keys.ENTER)
    WebDriverWait(browser, 30).until(  # Sphinx's search says so when it has listed every page it found
        lambda d: "Search finished" in "".join(p.text for p in d.find_elements(By.CSS_SELECTOR, "p.search-summary")))
    assert "search.html?q=GPTQ" in browser.current_url
    links = [a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "#search-results ul.search li a")]
    assert any("notebooks/09_compression.html" in href for href in links), links
    assert not _console_errors(browser)
