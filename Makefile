# The two commands of the course: `make course` and `make test` (plus `make lab`).
# Each one creates .venv if needed and installs everything it needs first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.dsnb-installed

.PHONY: setup course test lint lab clean-cache

$(STAMP): pyproject.toml scripts/install_torch.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	scripts/install_torch.sh $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

setup: $(STAMP)
	scripts/install_apt.sh

course: setup
	$(BIN)/python -m dsnb.course notebooks

lint: setup
	$(BIN)/ruff check dsnb tests benchmarks notebooks

test: lint
	$(BIN)/python -m pytest tests notebooks --nbmake --nbmake-timeout=900

lab: setup
	$(BIN)/jupyter lab notebooks

clean-cache:
	rm -rf $${DSNB_CACHE:-$$HOME/.cache/dsnb}
