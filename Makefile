# The two commands of the course: `make course` and `make test` (plus `make lab` and `make site`).
# Each one creates .venv if needed and installs everything it needs first.
# The first Python 3.11 or 3.12 found (transformers 5.24 needs 3.11+); override with PYTHON=...
PYTHON ?= $(shell for p in python3.11 python3.12 python3; do \
	  $$p -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 12))' 2>/dev/null && echo $$p && break; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.dsnb-installed

.PHONY: setup base-model course test test-second-build lint lab site serve-site clean-cache

$(STAMP): pyproject.toml constraints.txt scripts/install_torch.sh
	@test -n "$(PYTHON)" || { echo 'Need Python 3.11 or 3.12 (python3.11 / python3.12 on PATH, or PYTHON=/path/to/python).'; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	scripts/install_torch.sh $(BIN)/python
	@# the tested versions (constraints.txt; scripts/update_constraints.sh rewrites it) of everything, extras included
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

setup: $(STAMP)
	scripts/install_apt.sh

# The course's base model (built once, about 4.5 CPU-minutes: 3-4 minutes on 2 idle cores, then cached): built here so
# its progress shows in the terminal rather than inside a test or a notebook.
base-model: setup
	scripts/build_base_model.sh $(BIN)/python

course: base-model
	$(BIN)/python -m dsnb.course notebooks

lint: setup
	$(BIN)/ruff check dsnb tests benchmarks notebooks docs

test: lint base-model
	$(BIN)/python -m pytest tests notebooks --nbmake --nbmake-timeout=900

# The same tests and notebooks on a second build of the base model (DSNB_BASE_SEED=1, its own cache): what a
# learner's CPU, which builds a slightly different model from the same recipe, would meet. Not in CI (it doubles
# the run); run it before resolving anything that touches notebooks, tests or benchmarks/results.
SECOND_CACHE ?= $(HOME)/.cache/dsnb-seed1
test-second-build: lint setup
	DSNB_CACHE=$(SECOND_CACHE) DSNB_BASE_SEED=1 scripts/build_base_model.sh $(BIN)/python
	DSNB_CACHE=$(SECOND_CACHE) DSNB_BASE_SEED=1 $(BIN)/python -m pytest tests notebooks --nbmake --nbmake-timeout=900

lab: setup
	$(BIN)/jupyter lab notebooks

# The course as a static website in build/site (entry page build/site/index.html), built from the committed
# notebooks and their outputs (nothing is executed, so no base model is needed): Sphinx with every warning an
# error, then every internal link and image checked (docs/build.py). `make test` builds it again in
# tests/test_site_browser.py and opens every notebook page in headless Chromium.
SITE ?= build/site
site: setup
	$(BIN)/python docs/build.py $(SITE)

# Serve the built site on http://127.0.0.1:8000 (Ctrl-C stops it).
serve-site:
	@test -f $(SITE)/index.html || { echo 'No site in $(SITE): run make site first.'; exit 1; }
	$(BIN)/python -m http.server --directory $(SITE) --bind 127.0.0.1 8000

clean-cache:
	rm -rf $${DSNB_CACHE:-$$HOME/.cache/dsnb}
